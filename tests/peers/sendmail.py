"""Real Sendmail 8.17 in a private namespace, configured from the shipped kit.

Every sendmail (and makemap, m4, Mailman) command of the tests runs inside a
private network + mount + uts namespace (../shared/docs/test-peers.md): only
a loopback interface, host name mx.example.test, a private /etc/hosts and
/etc/resolv.conf, and a private /dev whose /dev/log is a test syslog sink.
Nothing can leave the machine and no name is ever looked up in DNS.

`Namespace` is a holder process started by ``unshare --net --mount --uts
--propagation private``; commands enter it with ``nsenter --target PID --net
--mount --uts``.  Inside, Debian's Sendmail paths (/etc/mail,
/var/spool/mqueue, /var/lib/sendmail, /run/sendmail, /var/mail) are private
directories bind-mounted from the test's own directory, and the kit's
sendmail/mailman.m4 is "installed" in a private copy of
/usr/share/sendmail/cf/mailer/.  So the kit's sendmail/mailman.mc is built
exactly as README.sendmail says (m4 mailman.mc > /etc/mail/sendmail.cf) with
only two paths substituted: the mm-handler program and its configuration
file.  Its host name, lists.example.org, is used as it is.

The kit's mailer runs as U=mm-handler:list, a user this machine may not
have: the namespace then gets a private /etc/passwd that adds it
(MAILER_UID), or, with `etc=` (a copy_etc() copy bound over /etc), the
copy's passwd does.

`SendmailHost` is the MTA: build the .cf, install maps and aliases, submit
messages (-odi / -odq), run the queue (-qf), list it (-bp), talk SMTP on
stdin (-bs), test addresses (-bv, -bt).  DSNs and postmaster copies go to a
capture mailer, the one test-only addition to the .cf (appended after the
kit's .mc), and the test mailertable routes the senders' domain and the
aliases' capture.test there: nothing is written to /var/mail.

`Mailman3Site` adds a real Mailman 3 LMTP runner inside the same namespace
(tests/peers/mailman3.py's Mailman3Runner with the namespace prefix), with
the mm-handler plug-in as Mailman's [mta] incoming.  `SyslogSink` is
/dev/log in there, drained by a thread.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.peers.syslog import SyslogSink  # noqa: F401 (used by the test files)

ROOT = Path(__file__).resolve().parent.parent.parent
KIT = ROOT / "sendmail"
SENDMAIL = "/usr/libexec/sendmail/sendmail"
MAKEMAP = "/usr/libexec/sendmail/makemap"
CF_MAILER_DIR = "/usr/share/sendmail/cf/mailer"
HOSTNAME = "mx.example.test"
LIST_DOMAIN = "lists.example.org"          # the kit's own example name, unchanged
CAPTURE_DOMAIN = "capture.test"            # aliases send local mail here
SENDER_DOMAIN = "example.org"              # DSNs to senders are captured too
SYSTEM_PYTHON = "/usr/bin/python3"
# The kit's mailer user (sendmail/mailman.m4: U=mm-handler:list): a user of
# its own, in the group of Mailman 2's wrapper.  Where this machine has no
# such user, every namespace here gets a private /etc/passwd that adds it
# (MAILER_UID), as `adduser --system --ingroup list mm-handler` would.
MAILER_USER = "mm-handler"
MAILER_GROUP = "list"


def _mailer_uid():
    import pwd
    try:
        return pwd.getpwnam(MAILER_USER).pw_uid
    except KeyError:
        used = {p.pw_uid for p in pwd.getpwall()}
        return next(uid for uid in range(150, 1000) if uid not in used)


MAILER_UID = _mailer_uid()


def mailer_passwd(directory):
    """A copy of /etc/passwd with the mailer's user added, to bind over
    /etc/passwd in a namespace; None when this machine has the user."""
    import grp
    import pwd
    try:
        pwd.getpwnam(MAILER_USER)
        return None
    except KeyError:
        pass
    path = Path(directory) / "passwd"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = Path("/etc/passwd").read_text()
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(text + "%s:x:%d:%d::/nonexistent:/usr/sbin/nologin\n" % (
        MAILER_USER, MAILER_UID, grp.getgrnam(MAILER_GROUP).gr_gid))
    path.chmod(0o644)
    return path

# The holder: set the namespace up, say "ready", then wait for stdin to close.
HOLDER = r"""
import json, os, socket, subprocess, sys
spec = json.loads(sys.argv[1])
def run(*argv):
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
run("/usr/sbin/ip", "link", "set", "lo", "up")
for address in spec["addresses"]:
    run("/usr/sbin/ip", "addr", "add", address, "dev", "lo")
socket.sethostname(spec["hostname"])
# a private /dev: a tmpfs with the few device nodes anything here needs
dev = spec["dev"]
run("/usr/bin/mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "mmh-dev", dev)
for name in ("null", "zero", "full", "random", "urandom", "tty"):
    open(os.path.join(dev, name), "w").close()
    run("/usr/bin/mount", "--bind", "/dev/" + name, os.path.join(dev, name))
for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
    os.symlink(target, os.path.join(dev, name))
os.mkdir(os.path.join(dev, "shm"))
os.chmod(os.path.join(dev, "shm"), 0o1777)
if spec["dev_log"]:
    open(os.path.join(dev, "log"), "w").close()
    run("/usr/bin/mount", "--bind", spec["dev_log"], os.path.join(dev, "log"))
run("/usr/bin/mount", "--move", dev, "/dev")
for source, target in spec["binds"]:
    run("/usr/bin/mount", "--bind", source, target)
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read()
"""


def copy_etc(target):
    """A private copy of this machine's /etc (``cp -a``, ~4 MB) for a
    Namespace(etc=...): inside, /etc is the copy, so `adduser`, /etc/mail,
    /etc/mm-handler.cfg and /etc/mailman3 change the copy only."""
    target = Path(target)
    subprocess.run(["cp", "-a", "/etc", str(target)], check=True)
    target.chmod(0o755)
    return target


class Namespace:
    """A private net + mount + uts namespace, held open by a process.

    `binds` are (source, target) pairs bind-mounted inside; `dev_log` a
    Unix datagram socket to appear as /dev/log; `addresses` extra loopback
    addresses (e.g. "127.0.0.2/8") for a "remote" SMTP client.
    """

    def __init__(self, workdir, hostname=HOSTNAME, binds=(), dev_log=None,
                 addresses=(), other_names=(SENDER_DOMAIN, CAPTURE_DOMAIN),
                 etc=None):
        self.workdir = Path(workdir)
        # a private copy of the whole /etc (see copy_etc), bound over /etc
        # before anything else: users added inside stay in the copy
        self.etc = Path(etc) if etc else None
        self.other_names = list(other_names)
        self.hostname = hostname
        self.binds = [(str(s), str(t)) for s, t in binds]
        self.dev_log = str(dev_log) if dev_log else None
        self.addresses = list(addresses)
        self.proc = None

    def start(self, timeout=20):
        self.workdir.mkdir(parents=True, exist_ok=True)
        dev = self.workdir / "dev"
        dev.mkdir(exist_ok=True)
        etc = self.etc or self.workdir / "etc"
        etc.mkdir(exist_ok=True)
        for name in ("hosts", "resolv.conf"):
            if (etc / name).is_symlink():
                (etc / name).unlink()
        (etc / "hosts").write_text(
            "127.0.0.1\t%s %s localhost localhost.localdomain\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            # a "remote" SMTP client's address, with a name
            "127.0.0.2\tclient.example.net\n"
            # other names the tests mail to: resolvable, never reached
            "127.0.0.9\t%s\n"
            % (self.hostname, self.hostname.split(".")[0],
               " ".join(self.other_names)))
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
        for name in ("hosts", "resolv.conf"):
            (etc / name).chmod(0o644)
        if self.etc:
            binds = [(self.etc, "/etc")] + self.binds
        else:
            binds = [(etc / "hosts", "/etc/hosts"),
                     (etc / "resolv.conf", "/etc/resolv.conf")] + self.binds
        spec = {"hostname": self.hostname, "dev": str(dev),
                "dev_log": self.dev_log, "addresses": self.addresses,
                "binds": [(str(s), str(t)) for s, t in binds]}
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--uts", "--propagation", "private",
             SYSTEM_PYTHON, "-I", "-S", "-c", HOLDER, json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        line = self.proc.stdout.readline()
        if line != b"ready\n":
            err = self.proc.stderr.read().decode(errors="replace")
            self.stop()
            raise RuntimeError("namespace set-up failed: %r %s" % (line, err))
        # the holder is `unshare` exec'ing python: same PID, inside
        self.pid = self.proc.pid

    @property
    def prefix(self):
        return ["nsenter", "--target", str(self.pid), "--net", "--mount", "--uts",
                "--"]

    def run(self, argv, input=None, timeout=60, check=False, **kw):
        """Run argv inside the namespace; CompletedProcess with bytes."""
        assert self.proc is not None and self.proc.poll() is None, "no namespace"
        proc = subprocess.run(self.prefix + [str(a) for a in argv], input=input,
                              capture_output=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError("%s: exit %d\n%s%s" % (
                " ".join(map(str, argv)), proc.returncode,
                proc.stdout.decode(errors="replace"),
                proc.stderr.decode(errors="replace")))
        return proc

    def popen(self, argv, **kw):
        return subprocess.Popen(self.prefix + [str(a) for a in argv], **kw)

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            stream.close()


CAPTURE_SCRIPT = r"""#!/usr/bin/python3 -IS
# A capture mailer for the tests: one JSON file per delivery.
import json, os, sys, time
data = sys.stdin.buffer.read()
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "captured")
name = "%.6f-%d" % (time.time(), os.getpid())
with open(os.path.join(out, name + ".tmp"), "w") as f:
    json.dump({"argv": sys.argv[1:], "uid": os.geteuid(),
               "data": data.decode("latin-1")}, f)
os.rename(os.path.join(out, name + ".tmp"), os.path.join(out, name + ".json"))
"""

# Test-only additions, appended to the kit's .mc: the capture mailer.
TEST_EXTRAS = """\
divert(-1)
# test-only: a mailer that records what it gets (DSNs, postmaster copies)
divert(0)dnl
MAILER_DEFINITIONS
Mcapture,	P={capture}, F=lsDFMnqru, S=EnvFromL, R=EnvToL, U=nobody:nogroup,
		T=DNS/RFC822/X-Unix, A=capture $h $u
"""

ALIASES = """\
# test aliases: every local person is a capture address
mailer-daemon: postmaster
postmaster: postmaster@{capture}
root: root@{capture}
abuse: abuse@{capture}
hostmaster: hostmaster@{capture}
webmaster: webmaster@{capture}
nobody: /dev/null
"""


class Captured:
    """One delivery to the capture mailer."""

    def __init__(self, path):
        record = json.loads(Path(path).read_text())
        self.argv = record["argv"]
        self.uid = record["uid"]
        self.data = record["data"].encode("latin-1")
        self.text = self.data.decode("utf-8", "replace")

    @property
    def recipient(self):
        return self.argv[-1]

    @property
    def host(self):
        return self.argv[-2]

    def __repr__(self):
        return "Captured(%r, %d bytes)" % (self.argv, len(self.data))


class SmtpReply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines

    @property
    def text(self):
        return "\n".join(self.lines)

    def __repr__(self):
        return "%d %s" % (self.code, " | ".join(self.lines))


class SendmailHost:
    """A Sendmail MTA in its own namespace, built from the shipped kit.

    `handler` is the installed mm-handler; `config` the path of its
    configuration file (substituted for /etc/mm-handler.cfg in the kit's
    mailman.mc); `maps_dir` the directory that appears inside as
    /etc/mail/mm-handler (where the kit's .mc reads the generated maps).
    """

    def __init__(self, workdir, handler, config, syslog=None, maps_dir=None,
                 addresses=(), etc=None):
        self.root = Path(workdir)
        self.extra_m4 = ""          # more test-only m4, after the capture mailer
        self.handler = Path(handler)
        self.config = Path(config)
        self.syslog = syslog
        self.etc_mail = self.root / "etc-mail"
        self.queue_dir = self.root / "mqueue"
        self.maps_dir = Path(maps_dir) if maps_dir else self.root / "maps"
        self.capture_dir = self.root / "captured"
        self.capture_script = self.root / "capture.py"
        dirs = {"etc-mail": "/etc/mail", "mqueue": "/var/spool/mqueue",
                "mqueue-client": "/var/spool/mqueue-client",
                "var-lib-sendmail": "/var/lib/sendmail",
                "run-sendmail": "/run/sendmail", "var-mail": "/var/mail",
                "cf-mailer": CF_MAILER_DIR}
        for name in dirs:
            path = self.root / name
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        self.queue_dir.chmod(0o700)
        # /var/mail as Debian has it (root:mail, 3777): mail.local's lock files
        import grp
        os.chown(self.root / "var-mail", 0, grp.getgrnam("mail").gr_gid)
        (self.root / "var-mail").chmod(0o3777)
        (self.root / "run-sendmail" / "mta").mkdir(exist_ok=True)
        (self.root / "var-lib-sendmail" / "host_status").mkdir(exist_ok=True)
        for path in (self.maps_dir, self.capture_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.maps_dir.chmod(0o755)
        self.capture_dir.chmod(0o777)
        (self.etc_mail / "mm-handler").mkdir(exist_ok=True)
        self.root.chmod(0o755)
        self.capture_script.write_text(CAPTURE_SCRIPT)
        self.capture_script.chmod(0o755)
        binds = [(self.root / name, target) for name, target in dirs.items()]
        binds.append((self.maps_dir, "/etc/mail/mm-handler"))
        if etc is not None:
            # a private /etc (copy_etc): the mailer's user goes into its passwd
            passwd = mailer_passwd(self.root / "etc")
            if passwd:
                shutil.copy(passwd, Path(etc) / "passwd")
        else:
            passwd = mailer_passwd(self.root / "etc")
            if passwd:
                binds.append((passwd, "/etc/passwd"))
        self.ns = Namespace(self.root / "ns", binds=binds,
                            dev_log=syslog.path if syslog else None,
                            addresses=addresses, etc=etc)

    # -- set-up --------------------------------------------------------------

    def start(self, mc_text=None, mailertable=None, virtusertable=None):
        """Start the namespace and install the kit: .cf, maps, aliases."""
        self._install_cf_kit()
        self.ns.start()
        for name, text in (("local-host-names", HOSTNAME + "\nlocalhost\n"),
                           ("service.switch", "hosts files\naliases files\n"),
                           ("aliases", ALIASES.format(capture=CAPTURE_DOMAIN))):
            (self.etc_mail / name).write_text(text)
        self.build_cf(mc_text)
        self.newaliases()
        self.install_mailertable(mailertable)
        if virtusertable is not None:
            self.install_virtusertable(virtusertable)
        return self

    def stop(self):
        self.ns.stop()

    def _install_cf_kit(self):
        """`cp sendmail/mailman.m4 /usr/share/sendmail/cf/mailer/`, privately."""
        target = self.root / "cf-mailer"
        for path in Path(CF_MAILER_DIR).iterdir():
            shutil.copy(path, target / path.name)
        shutil.copy(KIT / "mailman.m4", target / "mailman.m4")

    def kit_mc(self):
        """The kit's mailman.mc with only the site paths substituted."""
        text = (KIT / "mailman.mc").read_text()
        for old, new in (("/opt/mm-handler/bin/mm-handler", str(self.handler)),
                         ("/etc/mm-handler.cfg", str(self.config))):
            assert old in text, "the kit's mailman.mc no longer names %s" % old
            text = text.replace(old, new)
        return text

    def build_cf(self, mc_text=None):
        """m4 mailman.mc test-extras.m4 > /etc/mail/sendmail.cf (inside)."""
        (self.etc_mail / "mailman.mc").write_text(mc_text or self.kit_mc())
        (self.etc_mail / "test-extras.m4").write_text(
            TEST_EXTRAS.format(capture=self.capture_script) + self.extra_m4)
        proc = self.ns.run(["m4", "/etc/mail/mailman.mc", "/etc/mail/test-extras.m4"],
                           check=True)
        if proc.stderr.strip():
            raise RuntimeError("m4 complained:\n" + proc.stderr.decode())
        (self.etc_mail / "sendmail.cf").write_bytes(proc.stdout)
        return proc.stdout.decode()

    def newaliases(self):
        self.ns.run([SENDMAIL, "-bi"], check=True)

    def makemap(self, name, text):
        """Write /etc/mail/NAME and build /etc/mail/NAME.db (inside)."""
        (self.etc_mail / name).write_text(text)
        with open(self.etc_mail / name, "rb") as src:
            self.ns.run([MAKEMAP, "hash", "/etc/mail/" + name], stdin=src, check=True)

    def install_mailertable(self, text=None):
        """The kit's mailertable (default) plus the capture routes."""
        if text is None:
            text = (KIT / "mailertable").read_text()
        text += ("\n# test-only: DSNs and local people are captured\n"
                 "%s\tcapture:%s\n%s\tcapture:%s\n"
                 % (CAPTURE_DOMAIN, CAPTURE_DOMAIN, SENDER_DOMAIN, SENDER_DOMAIN))
        self.makemap("mailertable", text)

    def install_virtusertable(self, text):
        """Put a virtusertable where the kit's .mc reads it."""
        path = self.maps_dir / "virtusertable"
        path.write_text(text)
        with open(path, "rb") as src:
            self.ns.run([MAKEMAP, "hash", "/etc/mail/mm-handler/virtusertable"],
                        stdin=src, check=True)

    # -- mail ----------------------------------------------------------------

    def sendmail(self, *args, input=None, timeout=60):
        return self.ns.run([SENDMAIL] + [str(a) for a in args], input=input,
                           timeout=timeout)

    def submit(self, sender, recipients, message, queue_only=False, timeout=60):
        """`sendmail -odi|-odq -oi -f SENDER RCPT... < message`."""
        if isinstance(recipients, str):
            recipients = [recipients]
        mode = "-odq" if queue_only else "-odi"
        return self.sendmail(mode, "-oi", "-f", sender, *recipients,
                             input=message, timeout=timeout)

    def run_queue(self, *options, timeout=300):
        """One foreground queue run: `sendmail -qf` (plain -q would fork)."""
        return self.sendmail(*options, "-qf", timeout=timeout)

    def queue_ids(self):
        """Queue ids of the messages in /var/spool/mqueue (from the qf files)."""
        return sorted(p.name[2:] for p in self.queue_dir.iterdir()
                      if p.name.startswith("qf"))

    def mailq(self):
        """`sendmail -bp` output."""
        return self.sendmail("-bp").stdout.decode(errors="replace")

    def clear_queue(self):
        for path in self.queue_dir.iterdir():
            path.unlink()

    def verify(self, address):
        """`sendmail -bv ADDRESS` -> its output line."""
        return self.sendmail("-bv", address).stdout.decode(errors="replace")

    def test_mode(self, lines):
        """`sendmail -bt` with `lines` on stdin -> output."""
        return self.sendmail("-bt", input=("\n".join(lines) + "\n").encode()
                             ).stdout.decode(errors="replace")

    def smtp(self, sender, recipients, data=None, helo="client.example.org",
             options=("-odi",), timeout=60):
        """Talk SMTP to `sendmail -bs`: returns {"mail": reply, "rcpt":
        [reply per recipient], "data": reply or None}.

        -odi (default): the message is delivered before the reply to the
        final dot; -odq: it is only queued.  (Sendmail's default, background
        delivery, would race the test.)"""
        proc = self.ns.popen([SENDMAIL] + list(options) + ["-bs"],
                             stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        try:
            def reply():
                lines = []
                while True:
                    if time.monotonic() > deadline:
                        raise TimeoutError("sendmail -bs: no reply")
                    line = proc.stdout.readline().decode("utf-8", "replace")
                    if not line:
                        raise EOFError("sendmail -bs closed: %r" % lines)
                    lines.append(line[4:].rstrip("\r\n"))
                    if line[3:4] != "-":
                        return SmtpReply(int(line[:3]), lines)

            def say(text):
                proc.stdin.write(text.encode() + b"\r\n")
                proc.stdin.flush()
                return reply()

            greeting = reply()
            assert greeting.code == 220, greeting
            out = {"helo": say("EHLO " + helo)}
            out["mail"] = say("MAIL FROM:<%s>" % sender)
            out["rcpt"] = [say("RCPT TO:<%s>" % r) for r in recipients]
            out["data"] = None
            if data is not None and any(r.code == 250 for r in out["rcpt"]):
                go = say("DATA")
                assert go.code == 354, go
                body = data.replace(b"\r\n", b"\n").split(b"\n")
                if body and body[-1] == b"":
                    body.pop()
                for line in body:
                    proc.stdin.write((b"." if line.startswith(b".") else b"")
                                     + line + b"\r\n")
                out["data"] = say(".")
            else:
                say("RSET")
            say("QUIT")
            return out
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()

    # -- what came out -------------------------------------------------------

    def captured(self):
        """Deliveries to the capture mailer, oldest first."""
        return [Captured(p) for p in sorted(self.capture_dir.glob("*.json"))]

    def clear_captured(self):
        for path in self.capture_dir.iterdir():
            path.unlink()

    def log(self):
        """Syslog lines received so far (sendmail's and mm-handler's)."""
        return self.syslog.lines() if self.syslog else []

    def reset(self):
        """Empty queue and captures between tests."""
        self.clear_queue()
        self.clear_captured()
        if self.syslog:
            self.syslog.clear()


# -- fixtures --------------------------------------------------------------------

@pytest.fixture(scope="session")
def sendmail_binary():
    """Sendmail, m4 and the namespace tools are there, and we are root."""
    missing = [p for p in (SENDMAIL, MAKEMAP, CF_MAILER_DIR, "/usr/bin/m4",
                           "/usr/bin/unshare", "/usr/bin/nsenter", "/usr/sbin/ip",
                           "/usr/bin/setpriv") if not os.path.exists(p)]
    assert not missing, (
        "missing %s: apt-get install -y --no-install-recommends sendmail-bin "
        "sendmail-cf m4 iproute2 util-linux" % ", ".join(missing))
    assert os.geteuid() == 0, "the Sendmail tests need root (namespaces)"
    return SENDMAIL


# -- syslog -----------------------------------------------------------------------

# -- a list host: Sendmail from the kit + a real Mailman 3 LMTP runner, inside ---

PLUGIN = "mm_handler.mailman3_mta.Sendmail"
LMTP_PORT = 8024          # Mailman's default: the namespace has its own ports


def write_handler_config(path, sections):
    from tests.conftest import render_config
    Path(path).write_text(render_config(sections))
    Path(path).chmod(0o644)
    return Path(path)

@contextlib.contextmanager
def mailman2_host(root, handler, lists, mailman2=None):
    """Sendmail from the kit in front of the Mailman 2 wrapper stand-in.

    Yields the started SendmailHost with `.wrapper` (tests.peers.
    mailman2_wrapper.Installed) and `.config` (mm-handler's config file).
    """
    import pwd
    from tests.peers.mailman2_wrapper import Installed
    list_user = pwd.getpwnam("list")
    root = Path(root)
    root.mkdir()
    root.chmod(0o755)
    wrapper = Installed(root / "mailman", lists=list(lists), group=MAILER_GROUP)
    # the wrapper's scripts write as the mailer (U=mm-handler:list), like
    # Mailman 2's setgid ones: through the group
    for path in (wrapper.qfiles_dir, os.path.join(wrapper.qfiles_dir, "in")):
        os.makedirs(path, exist_ok=True)
        os.chown(path, list_user.pw_uid, list_user.pw_gid)
        os.chmod(path, 0o2775)
    open(wrapper.log_path, "a").close()
    os.chmod(wrapper.log_path, 0o666)
    maps_dir = root / "maps"
    maps_dir.mkdir()
    os.chown(maps_dir, list_user.pw_uid, list_user.pw_gid)
    config = write_handler_config(root / "mm-handler.cfg", {
        "mm-handler": {"backend": "mailman2"},
        "mailman2": {"wrapper": wrapper.path, "lists_dir": wrapper.lists_dir,
                     **(mailman2 or {})},
        "maps": {"output_dir": str(maps_dir), "makemap": MAKEMAP,
                 "domains": LIST_DOMAIN},
    })
    sink = SyslogSink(root / "log.sock")
    host = SendmailHost(root / "sendmail", handler, config, syslog=sink,
                        maps_dir=maps_dir)
    host.wrapper = wrapper
    host.config = config
    try:
        host.start()
        yield host
    finally:
        host.stop()
        sink.close()



class Mailman3Site:
    """Sendmail (the kit) + Mailman 3's LMTP runner in one namespace.

    mm-handler's configuration (`config`) serves the mailer and the plug-in:
    Mailman's [mta] incoming is mm_handler.mailman3_mta.Sendmail, which
    writes the maps to `maps_dir` (= /etc/mail/mm-handler inside) and runs
    makemap whenever a list is created or removed.
    """

    def __init__(self, workdir, handler, mailman_venv, lists=("test",),
                 handler_sections=None, plugin=True, etc=None):
        from tests.peers.mailman3 import Mailman3Runner
        self.root = Path(workdir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.maps_dir = self.root / "maps"
        self.sink = SyslogSink(self.root / "log.sock")
        self.config = self.root / "mm-handler.cfg"
        sections = {
            "mm-handler": {"backend": "mailman3"},
            "mailman3": {"lmtp": "127.0.0.1:%d" % LMTP_PORT, "timeout": "20"},
            "maps": {"output_dir": str(self.maps_dir), "run_makemap": "yes",
                     "makemap": MAKEMAP, "domains": LIST_DOMAIN},
        }
        for section, keys in (handler_sections or {}).items():
            sections.setdefault(section, {}).update(keys)
        write_handler_config(self.config, sections)
        self.sendmail = SendmailHost(self.root / "sendmail", handler, self.config,
                                     syslog=self.sink, maps_dir=self.maps_dir,
                                     etc=etc)
        self.lists = list(lists)
        self.plugin = plugin
        self.mailman = None
        self._runner_class = Mailman3Runner
        self.mailman_venv = mailman_venv

    def start(self, mc_text=None):
        self.sendmail.start(mc_text=mc_text)
        ns = self.sendmail.ns
        self.mailman = self._runner_class(
            self.mailman_venv, self.root / "mailman", LMTP_PORT,
            prefix=ns.prefix, netns_pid=ns.pid)
        if self.plugin:
            text = self.mailman.config_path.read_text()
            text = text.replace("incoming: mailman.mta.null.NullMTA",
                                "incoming: %s\nconfiguration: %s"
                                % (PLUGIN, self.config))
            assert PLUGIN in text
            self.mailman.config_path.write_text(text)
        if self.lists:
            self.mailman.create_lists(*("%s@%s" % (name, LIST_DOMAIN)
                                        for name in self.lists))
        self.mailman.start()
        return self

    def stop(self):
        if self.mailman is not None:
            self.mailman.stop()
        self.sendmail.stop()
        self.sink.close()

    def reset(self):
        """Between tests: runner up, queues and captures empty."""
        if not self.mailman.running:
            self.mailman.start()
        self.mailman.clear_queues()
        self.sendmail.reset()
