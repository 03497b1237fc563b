"""README.sendmail, followed to the letter on a private copy of Debian.

The commands and files of README.sendmail's sections 2 and 3 are read from
the README itself: the blocks between lines of three backquotes, tagged

    ```sh mailman2 mailman3          commands for a root shell
    ```file PATH mailman3            the whole content of PATH
    ```append PATH mailman2          lines added at the end of PATH

(a further word, e.g. alias-domain, marks an optional step that a test of
its own runs).  A block the parser cannot read fails the test, so does a
step that fails: an edit of the README that breaks a step breaks CI.

Each flavour runs them, top to bottom, as root, in the checkout's top
directory, inside a private network + mount + uts namespace
(tests/peers/sendmail.py) where

  /etc                  is a copy of this machine's /etc (adduser, /etc/mail,
                        /etc/mm-handler.cfg, /etc/mailman3 change the copy);
                        its Debian-built sendmail.cf is removed, so that no
                        step may need a .cf before the README builds one
  /opt                  is empty (the README makes /opt/mm-handler); for
                        Mailman 3, /opt/mailman/venv is this checkout's
                        .venv-mailman, with /etc/mailman3/mailman.cfg saying
                        where its var directory is (a Mailman 3 installed
                        "as its documentation says", which the README assumes)
  /var/spool/mqueue*, /var/lib/sendmail, /run/sendmail, /var/mail,
  /usr/share/sendmail/cf/mailer
                        are copies of this machine's
  Mailman 2's prefix    is a private copy of the real Mailman 2 build
                        (tests/peers/mailman2_real.py)

and /dev/log is a syslog sink.  Sendmail runs only in there; nothing leaves
127.0.0.1 and no name is looked up in the DNS.

What the test changes, and nothing else (MAPPING below): Mailman 2's paths
(the real Mailman 2 here is a source build under its own prefix, not
Debian's /usr/lib/mailman), and the commands a test cannot run as they
are:

  apt-get install PKG...              dpkg-query -W PKG... (they must be there;
                                      nothing is installed)
  /opt/mm-handler/bin/pip install mm-handler
                                      the same, from this checkout's wheelhouse
                                      (no PyPI in the namespace)
  /opt/mailman/venv/bin/pip install mm-handler
                                      checks that Mailman's venv imports the
                                      plug-in (make put the wheel there)
  systemctl restart|reload sendmail   /usr/sbin/sendmail -bd in the namespace
                                      (stopped first) | SIGHUP to it
  systemctl restart mailman3          Mailman 3's LMTP runner alone, as user
                                      mailman (the rest of Mailman is not needed)

Every other command runs as written; one whose program or absolute paths
fall outside the private copy is refused before it runs.  The --check of
step 2 may fail before Mailman 3 runs, as the README says, only on the LMTP
server; at step 3h it must say "result: OK".

Then the list host is used as the Internet would: SMTP from another
address to the daemon on port 25; list addresses are accepted and land in
Mailman's queue, unknown ones get 550 5.1.1 at RCPT, and the ownership
model of README.sendmail section 7 holds while root and Mailman's user
take turns at the maps.
"""

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.peers.mailman3 import listening, read_queue_file
from tests.peers.sendmail import Namespace, copy_etc
from tests.peers.syslog import SyslogSink

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.sendmail"
WHEELHOUSE = ROOT / "wheelhouse"
HOST = "lists.example.org"            # the README's own example, unchanged
ALIAS = "lists.example.net"           # the README's alias domain example
SENDER = "alice@example.org"
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME": "/root", "LANG": "C.UTF-8"}
PIDFILE = "run-sendmail/mta/sendmail.pid"

pytest_plugins = ["tests.peers.mailman2_real"]


# -- reading the README -------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>.*)$")
KINDS = ("sh", "file", "append")
FLAVOURS = ("mailman2", "mailman3")
PARTS = ("alias-domain",)


class Block:
    def __init__(self, line, kind, path, flavours, part, text):
        self.line = line            # the opening fence's line number
        self.kind = kind
        self.path = path
        self.flavours = flavours
        self.part = part
        self.text = text

    def commands(self):
        """[(line number, command)]: blank and # lines skipped, a trailing
        backslash joins the next line."""
        out, pending, first = [], "", None
        for number, line in enumerate(self.text.splitlines(), self.line + 1):
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            first = first if pending else number
            if line.endswith("\\"):
                pending += line[:-1]
                continue
            out.append((first, pending + line))
            pending = ""
        assert not pending, "README.sendmail line %d: a command ends in \\" % first
        return out

    def __repr__(self):
        return "Block(line %d: %s %s %s)" % (self.line, self.kind, self.path or "",
                                            " ".join(self.flavours))


def read_blocks(text=None):
    """Every tagged block of README.sendmail; AssertionError names the line
    of anything it cannot read."""
    lines = (README.read_text() if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        i += 1
        if not m:
            continue
        opened = i
        where = "README.sendmail line %d" % i
        words = m.group("info").split()
        assert words and words[0] in KINDS, \
            "%s: a block opens with ```sh, ```file PATH or ```append PATH" % where
        kind, path = words.pop(0), None
        if kind != "sh":
            assert words and words[0].startswith("/"), "%s: %s needs a PATH" % (where, kind)
            path = words.pop(0)
        flavours = tuple(w for w in words if w in FLAVOURS)
        part = [w for w in words if w in PARTS]
        unknown = [w for w in words if w not in FLAVOURS + PARTS]
        assert not unknown, "%s: unknown word(s) %s" % (where, unknown)
        assert flavours, "%s: say mailman2 and/or mailman3" % where
        assert len(part) <= 1, where
        indent, body = m.group("indent"), []
        while True:
            assert i < len(lines), "%s: the block is never closed" % where
            line = lines[i]
            i += 1
            if line.strip() == "```":
                assert line.startswith(indent) and len(line) - 3 == len(indent), \
                    "README.sendmail line %d: the closing ``` is not indented " \
                    "like the opening one" % i
                break
            assert not line.strip() or line.startswith(indent), \
                "README.sendmail line %d: less indented than its block" % i
            body.append(line[len(indent):])
        blocks.append(Block(opened, kind, path, flavours,
                            part[0] if part else None, "\n".join(body) + "\n"))
    return blocks


def steps(flavour, part=None, blocks=None):
    return [b for b in (blocks or read_blocks())
            if flavour in b.flavours and b.part == part]


# -- what a test changes: the mapping ----------------------------------------------

# plain text replacements, in commands, paths and file contents
PATHS = {
    "mailman2": [("/usr/lib/mailman/", "{prefix}/"),
                 ("/var/lib/mailman/lists", "{prefix}/lists")],
    "mailman3": [],
}
# README command (its start) -> the name of what the test does instead
MAPPING = [
    ("apt-get install ", "packages_present"),
    ("/opt/mm-handler/bin/pip install mm-handler", "pip_from_wheelhouse"),
    ("/opt/mailman/venv/bin/pip install mm-handler", "plugin_importable"),
    ("systemctl restart sendmail", "start_sendmail"),
    ("systemctl reload sendmail", "reload_sendmail"),
    ("systemctl restart mailman3", "start_mailman"),
]
# programs a README command may run, as written
PROGRAMS = {"cp", "mkdir", "chown", "chmod", "m4", "makemap", "runuser", "adduser",
            "python3", "sendmail", "newaliases", "dpkg-query", "for"}
# where a README command may touch anything: the private copy
PRIVATE = ("/etc/", "/opt/", "/usr/share/sendmail/cf/mailer/", "/var/spool/mqueue",
           "/var/lib/sendmail", "/run/sendmail", "/var/mail", "/nonexistent")


class DebianCopy:
    """A private Debian with Sendmail (and Mailman) to follow the README on."""

    def __init__(self, root, flavour, mm2=None):
        self.root = Path(root)
        self.flavour = flavour
        self.mm2 = mm2
        self.root.mkdir(parents=True)
        self.root.chmod(0o755)
        self.etc = copy_etc(self.root / "etc")
        # strictest reading: no step may need a .cf before step 3b builds it
        (self.etc / "mail" / "sendmail.cf").unlink()
        for name in ("mailman3", "mailman.cfg", "mm-handler.cfg"):
            assert not (self.etc / name).exists(), "this machine has /etc/%s" % name
        binds = []
        copies = {"var-spool-mqueue": "/var/spool/mqueue",
                  "var-spool-mqueue-client": "/var/spool/mqueue-client",
                  "var-lib-sendmail": "/var/lib/sendmail",
                  "run-sendmail": "/run/sendmail", "var-mail": "/var/mail",
                  "cf-mailer": "/usr/share/sendmail/cf/mailer"}
        for name, target in copies.items():
            subprocess.run(["cp", "-a", target, str(self.root / name)], check=True)
            binds.append((self.root / name, target))
        (self.root / "opt").mkdir(mode=0o755)
        binds.append((self.root / "opt", "/opt"))
        self.prefix = None
        if flavour == "mailman2":
            self.prefix = str(mm2.prefix)
            binds.extend(mm2.binds)
        else:
            self.setup_mailman3()
        self.sink = SyslogSink(self.root / "log.sock")
        self.ns = Namespace(self.root / "ns", etc=self.etc, binds=binds,
                            dev_log=self.sink.path, addresses=["127.0.0.2/8"])
        self.ns.start()
        self.runner = None
        self.followed = []          # (line, command) as run
        self.wheelhouse = private_wheelhouse(self.root / "wheelhouse")

    def setup_mailman3(self):
        """Mailman 3 as its documentation installs it: a venv in
        /opt/mailman/venv, user mailman, /etc/mailman3/mailman.cfg."""
        from tests.conftest import MAILMAN_VENV
        mailman = pwd.getpwnam("mailman")
        (self.root / "opt" / "mailman").mkdir(mode=0o755)
        os.symlink(MAILMAN_VENV, self.root / "opt" / "mailman" / "venv")
        self.var = self.root / "mailman-var"
        self.var.mkdir(mode=0o755)
        os.chown(self.var, mailman.pw_uid, mailman.pw_gid)
        (self.etc / "mailman3").mkdir(mode=0o755)
        cfg = self.etc / "mailman3" / "mailman.cfg"
        cfg.write_text("[mailman]\nsite_owner: postmaster@%s\nlayout: testing\n\n"
                       "[paths.testing]\nvar_dir: %s\n\n[runner.rest]\nstart: no\n\n"
                       % (HOST, self.var))
        cfg.chmod(0o644)

    # -- running -------------------------------------------------------------------

    def host_path(self, path):
        """A path inside -> where it is here."""
        if path.startswith("/etc/"):
            return self.etc / path[len("/etc/"):]
        if path.startswith("/opt/"):
            return self.root / "opt" / path[len("/opt/"):]
        raise ValueError(path)

    def mapped(self, text):
        for old, new in PATHS[self.flavour]:
            text = text.replace(old, new.format(prefix=self.prefix))
        return text

    def sh(self, command, timeout=180):
        """COMMAND in bash, in the checkout's top directory (entering the
        mount namespace resets the working directory to its /)."""
        return self.ns.run(["bash", "-c", "cd %s && %s" % (shlex.quote(str(ROOT)),
                                                          command)],
                           env=ENV, timeout=timeout)

    def as_user(self, user, argv, group=None):
        group = group or pwd.getpwnam(user).pw_gid
        return self.ns.run(["setpriv", "--reuid=%s" % user, "--regid=%s" % group,
                            "--init-groups"] + [str(a) for a in argv],
                           env=ENV, cwd="/")

    def follow(self, blocks):
        for block in blocks:
            if block.kind == "sh":
                for line, command in block.commands():
                    self.command(line, command)
            else:
                path = self.mapped(block.path)
                self.check_paths(block.line, [path])
                proc = self.ns.run(["bash", "-c", 'cat %s "$1"' % (
                    ">" if block.kind == "file" else ">>"), "-", path],
                    input=self.mapped(block.text).encode(), env=ENV)
                assert proc.returncode == 0, (block, proc)
                self.followed.append((block.line, "%s %s" % (block.kind, path)))

    def check_paths(self, line, tokens):
        outside = [t for t in tokens if t.startswith("/") and not (
            t.startswith(PRIVATE) or (self.prefix and t.startswith(self.prefix)))]
        assert not outside, ("README.sendmail line %d touches %s, outside the "
                             "private copy: add it to the test's binds" % (line, outside))

    def command(self, line, command):
        where = "README.sendmail line %d: %s" % (line, command)
        for start, action in MAPPING:
            if command.startswith(start):
                getattr(self, action)(command[len(start):].split(), where)
                self.followed.append((line, command))
                return
        command = self.mapped(command)
        words = shlex.split(command)
        program = words[0]
        assert program in PROGRAMS or program.startswith("/"), (
            "%s: the test does not know %r; run it here only if it is safe, "
            "then add it to PROGRAMS or MAPPING" % (where, program))
        self.check_paths(line, words)
        proc = self.sh(command)
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        self.followed.append((line, command))
        if "--check" in words:
            self.expect_check(where, proc.returncode, out + err)
            return
        assert proc.returncode == 0, "%s\nexit %d\n%s%s" % (where, proc.returncode,
                                                          out, err)
        if program == "m4":
            assert err == "", "%s: m4 must print nothing on stderr:\n%s" % (where, err)
        if words[:2] == ["sendmail", "-bv"]:
            local = words[2].split("@")[0]
            assert ("deliverable: mailer mailman, host %s, user %s" % (HOST, local)
                    in out), "%s:\n%s" % (where, out)

    def expect_check(self, where, code, out):
        fails = [l for l in out.splitlines() if l.startswith("FAIL ")]
        if self.flavour == "mailman3" and self.runner is None:
            # step 2: what the README says to expect, and nothing else
            assert code in (0, 78) and all("LMTP 127.0.0.1:8024" in f for f in fails), \
                "%s: exit %d\n%s" % (where, code, out)
        else:
            assert code == 0 and not fails and "result: OK" in out, \
                "%s: exit %d\n%s" % (where, code, out)

    # -- the mapping's actions -----------------------------------------------------

    def packages_present(self, packages, where):
        proc = self.sh("dpkg-query -W " + " ".join(map(shlex.quote, packages)))
        assert proc.returncode == 0, "%s: not installed here: %s" % (where, proc)

    def pip_from_wheelhouse(self, extra, where):
        assert not extra, where
        proc = self.sh("/opt/mm-handler/bin/pip install -q --no-index "
                       "--find-links %s mm-handler" % self.wheelhouse)
        assert proc.returncode == 0, (where, proc)

    def plugin_importable(self, extra, where):
        assert not extra, where
        proc = self.sh("/opt/mailman/venv/bin/python -c "
                       "'import mm_handler.mailman3_mta'")
        assert proc.returncode == 0, (where, proc)

    def sendmail_pid(self):
        try:
            pid = int((self.root / PIDFILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if os.path.exists("/proc/%d" % pid) else None

    def start_sendmail(self, extra=(), where=""):
        self.stop_sendmail()
        proc = self.ns.run(["/usr/sbin/sendmail", "-bd"], env=ENV, cwd="/")
        assert proc.returncode == 0, (where, proc)
        self.wait(lambda: self.sendmail_pid() and listening(25, self.ns.pid),
                  "sendmail -bd listening on 25")

    def reload_sendmail(self, extra=(), where=""):
        pid = self.sendmail_pid()
        assert pid, where
        before = (self.root / PIDFILE).stat().st_mtime_ns
        os.kill(pid, signal.SIGHUP)
        self.wait(lambda: ((self.root / PIDFILE).stat().st_mtime_ns != before
                           and self.sendmail_pid() and listening(25, self.ns.pid)),
                  "sendmail restarted after SIGHUP")

    def stop_sendmail(self):
        pid = self.sendmail_pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            self.wait(lambda: not os.path.exists("/proc/%d" % pid), "sendmail gone")

    def start_mailman(self, extra=(), where=""):
        self.stop_mailman()
        self.runner = self.ns.popen(
            ["setpriv", "--reuid=mailman", "--regid=mailman", "--init-groups",
             "/opt/mailman/venv/bin/runner", "-r", "lmtp"],
            env=dict(ENV, HOME="/nonexistent"), cwd="/", stdin=subprocess.DEVNULL,
            stdout=open(self.root / "runner.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait(lambda: listening(8024, self.ns.pid) or self.runner.poll() is not None,
                  "Mailman's LMTP runner")
        assert self.runner.poll() is None, (self.root / "runner.log").read_text()

    def stop_mailman(self):
        runner, self.runner = self.runner, None
        if runner is not None and runner.poll() is None:
            runner.terminate()
            try:
                runner.wait(15)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait(15)
        if runner is not None:
            runner.stdout and runner.stdout.close()

    @staticmethod
    def wait(condition, what, timeout=30):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out waiting for " + what
            time.sleep(0.05)

    def stop(self):
        self.stop_mailman()
        self.stop_sendmail()
        self.ns.stop()
        self.sink.close()

    # -- using it ------------------------------------------------------------------

    def smtp(self, transactions):
        """SMTP to the daemon from 127.0.0.2, as from the Internet:
        [(rcpts, data or None)] -> [{rcpt: (code, text)}, data reply]."""
        proc = self.ns.run(["/usr/bin/python3", "-I", "-c", CLIENT,
                            json.dumps(transactions)], env=ENV, cwd="/", timeout=120)
        assert proc.returncode == 0, proc
        return json.loads(proc.stdout)

    def rcpt_codes(self, addresses):
        [(replies, _)] = self.smtp([(addresses, None)])
        return {a: replies[a][0] for a in addresses}

    def mailman3_queue(self, queue="in"):
        return sorted((self.var / "queue" / queue).glob("*.pck"))

    def maps_dir(self):
        return self.etc / "mail" / "mm-handler"


def private_wheelhouse(target):
    """The wheels of this checkout, copied under the build lock (`make`
    empties wheelhouse/ while it rebuilds)."""
    import fcntl
    target.mkdir()
    with open("/tmp/mmh-build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wheels = list(WHEELHOUSE.glob("*.whl"))
        for wheel in wheels:
            shutil.copy(wheel, target)
    assert any(w.name.startswith("mm_handler-") for w in wheels), \
        "no wheel in %s: run `make test`" % WHEELHOUSE
    target.chmod(0o755)
    return target


CLIENT = r"""
import json, smtplib, sys
out = []
s = smtplib.SMTP("127.0.0.1", 25, local_hostname="client.example.net",
                 source_address=("127.0.0.2", 0), timeout=60)
s.ehlo()
for rcpts, data in json.loads(sys.argv[1]):
    code, text = s.mail("alice@example.org")
    assert code == 250, (code, text)
    replies = {}
    for r in rcpts:
        code, text = s.rcpt(r)
        replies[r] = (code, text.decode())
    if data is not None and any(c == 250 for c, _ in replies.values()):
        code, text = s.data(data)         # str: smtplib sends CRLF
        out.append((replies, (code, text.decode())))
    else:
        s.rset()
        out.append((replies, None))
s.quit()
print(json.dumps(out))
"""


def message(subject, to):
    return ("From: Alice <alice@example.org>\nTo: %s\nSubject: %s\n"
            "Message-ID: <%s@example.org>\n\nHello.\n" % (to, subject,
                                                          subject.replace(" ", ".")))


def ownership(site, owner):
    """README.sendmail section 7, "Who owns what", as it is on the disk,
    and nothing Sendmail or mm-handler reads is writable by the mailer."""
    user = pwd.getpwnam(owner)
    maps_dir = site.maps_dir()
    st = maps_dir.stat()
    # (Debian's /etc/mail is set-group-ID: mkdir passes that bit on, harmless)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (
        user.pw_uid, user.pw_gid, 0o755), (maps_dir, oct(st.st_mode))
    names = sorted(p.name for p in maps_dir.iterdir())
    assert names == [".mm-handler-maps.lock", "mailertable", "mailertable.db",
                     "virtuser-domains", "virtusertable", "virtusertable.db"], names
    for name in names:
        st = (maps_dir / name).lstat()
        assert (st.st_uid, st.st_mode & 0o7777) == (user.pw_uid, 0o644), \
            (name, st.st_uid, oct(st.st_mode))
    read = ["/etc", "/etc/mail", "/etc/mail/sendmail.cf", "/etc/mail/mailertable.db",
            "/etc/mail/mm-handler", "/etc/mm-handler.cfg", "/opt/mm-handler/bin",
            "/opt/mm-handler/bin/mm-handler", "/opt/mm-handler/bin/python3"] + [
        "/etc/mail/mm-handler/" + n for n in names]
    proc = site.ns.run(
        ["setpriv", "--reuid=mm-handler", "--regid=list", "--init-groups", "sh", "-c",
         'for p; do test -w "$p" && echo "$p"; done; true', "-"] + read, env=ENV)
    assert proc.returncode == 0 and proc.stdout == b"", proc


# -- Mailman 3 ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mm3_site(public_tmp, sendmail_binary):
    from tests.conftest import MAILMAN_VENV
    assert (MAILMAN_VENV / "bin" / "runner").exists(), "run `make test`"
    site = DebianCopy(public_tmp / "readme-mm3", "mailman3")
    try:
        site.follow(steps("mailman3"))
        yield site
    finally:
        site.stop()


def test_readme_blocks_are_read_and_name_every_step():
    blocks = read_blocks()
    for flavour in FLAVOURS:
        main = [c for b in steps(flavour, blocks=blocks) if b.kind == "sh"
                for _, c in b.commands()]
        for needed in ("adduser --system --ingroup list", "mm-handler --check",
                       "cp sendmail/mailman.m4", "m4 /etc/mail/sendmail.mc",
                       "makemap hash /etc/mail/mailertable",
                       "mkdir -m 0755 /etc/mail/mm-handler",
                       "systemctl restart sendmail"):
            assert any(needed in c for c in main), (flavour, needed)
        # the .cf is built before anything runs makemap (makemap reads it)
        first = lambda text: next(i for i, c in enumerate(main) if text in c)
        assert first("m4 /etc/mail/sendmail.mc") < first("makemap")
        # the configuration files are valid as written
        from mm_handler import config
        [cfg] = [b for b in steps(flavour, blocks=blocks) if b.kind == "file"
                 and b.path == "/etc/mm-handler.cfg"]
        settings = config.validate(config.parse_ini(cfg.text))
        assert settings.get("mm-handler", "backend") == flavour
    # a broken block is an error, with its line
    with pytest.raises(AssertionError, match="line 2: unknown word"):
        read_blocks("x\n```sh mailman3 mailmn2\ntrue\n```\n")
    with pytest.raises(AssertionError, match="never closed"):
        read_blocks("```sh mailman3\ntrue\n")


def test_mailman3_readme_makes_a_working_list_host(mm3_site):
    site = mm3_site
    # every step ran, in the README's order
    assert [c for _, c in site.followed][-1].startswith("sendmail -bv")
    valid = ["test", "test-request", "test-bounces+bob=example.net", "owner-test",
             "postmaster"]
    invalid = ["nolist", "test-foo"]
    [(replies, data)] = site.smtp([(["%s@%s" % (l, HOST) for l in valid + invalid],
                                    None)])
    codes = {a.split("@")[0]: c for a, (c, _) in replies.items()}
    assert codes == {**{l: 250 for l in valid}, **{l: 550 for l in invalid}}, replies
    for local in invalid:
        code, text = replies["%s@%s" % (local, HOST)]
        assert text.startswith("5.1.1 ") and "No such list address here" in text
    [(replies, data)] = site.smtp([(["test@" + HOST], message("readme mm3",
                                                                "test@" + HOST))])
    assert data[0] == 250, data
    site.wait(lambda: site.mailman3_queue(), "the message in Mailman's queue")
    [path] = site.mailman3_queue()
    msg, meta = read_queue_file(path)
    assert meta["listid"] == "test." + HOST and msg["Subject"] == "readme mm3"
    ownership(site, "mailman")


def test_mailman3_maps_writers_take_turns(mm3_site):
    """Root (`mailman --run-as-root`) and Mailman's user, in any order."""
    site = mm3_site
    mailman = "/opt/mailman/venv/bin/mailman"
    turns = [
        (None, [mailman, "--run-as-root", "create", "news@" + HOST]),
        ("mailman", [mailman, "aliases"]),
        (None, [mailman, "--run-as-root", "aliases"]),
        ("mailman", [mailman, "remove", "news@" + HOST]),
        (None, [mailman, "--run-as-root", "create", "news@" + HOST]),
    ]
    for user, argv in turns:
        proc = (site.as_user(user, argv) if user
                else site.ns.run(argv, env=ENV, cwd="/"))
        assert proc.returncode == 0, (user, argv, proc)
        ownership(site, "mailman")
        assert not list(site.maps_dir().glob(".mm-handler-maps-*"))
        news = 550 if argv[-2] == "remove" else 250
        assert site.rcpt_codes(["news@" + HOST, "test@" + HOST, "nolist@" + HOST]) == {
            "news@" + HOST: news, "test@" + HOST: 250, "nolist@" + HOST: 550}, argv


def test_mailman3_alias_domain(mm3_site):
    """README section 7's alias-domain step; then `mailman create` in the
    domain: both names reach the list, Mailman gets the real domain."""
    site = mm3_site
    site.follow(steps("mailman3", part="alias-domain"))
    mailman = "/opt/mailman/venv/bin/mailman"
    proc = site.as_user("mailman", [mailman, "create", "ann@" + HOST])
    assert proc.returncode == 0, proc
    rows = (site.maps_dir() / "virtusertable").read_text().splitlines()
    for local in ("test", "ann-bounces", "owner-ann"):
        assert ("%s@%s\t%s%%3@%s.mailman.invalid" % (local, ALIAS, local, HOST)
                in rows), rows
    assert "@%s\terror:5.1.1:550 No such list address here" % ALIAS in rows
    assert (site.maps_dir() / "virtuser-domains").read_text() == HOST + "\n" + ALIAS + "\n"
    assert ("%s\tmailman:%s" % (ALIAS, HOST)
            in (site.maps_dir() / "mailertable").read_text().splitlines())
    codes = site.rcpt_codes(["ann@" + ALIAS, "ann-request@" + ALIAS,
                             "test-bounces+x=y.example@" + ALIAS, "postmaster@" + ALIAS,
                             "nolist@" + ALIAS, "ann@" + HOST])
    assert codes == {"ann@" + ALIAS: 250, "ann-request@" + ALIAS: 250,
                     "test-bounces+x=y.example@" + ALIAS: 250,
                     "postmaster@" + ALIAS: 250, "nolist@" + ALIAS: 550,
                     "ann@" + HOST: 250}, codes
    for queued in site.mailman3_queue():
        queued.unlink()
    site.sink.clear()
    [(replies, data)] = site.smtp([(["ann@" + ALIAS], message("via alias",
                                                               "ann@" + ALIAS))])
    assert data[0] == 250, (replies, data)
    site.wait(lambda: site.mailman3_queue(), "the message in Mailman's queue")
    [path] = site.mailman3_queue()
    msg, meta = read_queue_file(path)
    assert meta["listid"] == "ann." + HOST and msg["Subject"] == "via alias"
    # the mailer got $h = the real domain, and so did Mailman's LMTP RCPT
    assert msg.get_all("Delivered-To") == ["ann@" + HOST], msg.items()
    log = "\n".join(site.sink.lines())
    assert re.search(r"mm-handler\[\d+\]: .*recipient=ann@%s .*status=0"
                     % re.escape(HOST), log), log
    ownership(site, "mailman")


# -- Mailman 2 ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mm2_site(public_tmp, sendmail_binary):
    from tests.peers.mailman2_real import RealMailman2
    mm2 = RealMailman2(public_tmp / "readme-mm2-mailman").start()
    site = None
    try:
        site = DebianCopy(public_tmp / "readme-mm2", "mailman2", mm2=mm2)
        site.follow(steps("mailman2"))
        yield site
    finally:
        if site is not None:
            site.stop()
        mm2.stop()


def test_mailman2_readme_makes_a_working_list_host(mm2_site):
    site, mm2 = mm2_site, mm2_site.mm2
    assert [c for _, c in site.followed][-1].startswith("sendmail -bv")
    mm2.clear_queues()
    valid = ["test", "test-request", "test-admin", "test-bounces+bob=example.net",
             "owner-test", "postmaster"]
    invalid = ["nolist", "test-foo"]
    [(replies, _)] = site.smtp([(["%s@%s" % (l, HOST) for l in valid + invalid],
                                 None)])
    codes = {a.split("@")[0]: c for a, (c, _) in replies.items()}
    assert codes == {**{l: 250 for l in valid}, **{l: 550 for l in invalid}}, replies
    [(replies, data)] = site.smtp([(["test@" + HOST, "test-request@" + HOST],
                                    message("readme mm2", "test@" + HOST))])
    assert data[0] == 250, data
    site.wait(lambda: len(mm2.queue()) == 2, "two messages in Mailman 2's queues")
    assert sorted((e.queue, e.flags, e.listname) for e in mm2.queue()) == [
        ("commands", ["torequest"], "test"), ("in", ["tolist"], "test")]
    ownership(site, "list")


def test_mailman2_maps_writers_take_turns(mm2_site):
    """The README ran the maps as list (3g) and as root (3h); again, in
    the other order, around a list removed as root."""
    site = mm2_site
    maps = ["/opt/mm-handler/bin/mm-handler", "maps", "-C", "/etc/mm-handler.cfg"]
    rmlist = [site.prefix + "/bin/rmlist", "-a", "test"]
    for user, argv, test_code in [("list", maps, 250), (None, rmlist, 250),
                                  (None, maps, 550), ("list", maps, 550)]:
        proc = (site.as_user(user, argv) if user
                else site.ns.run(argv, env=ENV, cwd="/"))
        assert proc.returncode == 0, (user, argv, proc)
        ownership(site, "list")
        assert site.rcpt_codes(["test@" + HOST]) == {"test@" + HOST: test_code}, argv
    # any other user, the mailer's included, is refused and changes nothing
    before = {p.name: p.read_bytes() for p in site.maps_dir().iterdir()}
    proc = site.as_user("mm-handler", maps, group="list")
    assert proc.returncode == 73 and b"Permission denied" in proc.stderr, proc
    assert {p.name: p.read_bytes() for p in site.maps_dir().iterdir()} == before

