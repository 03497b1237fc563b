"""The real Mailman 2.1 (the Python 3 port "mailman2-python3") for the tests.

../shared/peers/build-mailman2.sh builds it into a prefix; the prefix is
compiled into the setgid wrapper (``PREFIX/mail/mailman``) and into
Mailman's paths, so a build cannot simply be copied elsewhere.  The session
fixture therefore

- reuses the shared build (/tmp/mm2real/prefix, or $MM2_PREFIX) when the
  script's stamp says it is current: it copies that tree (``cp -a``, ~1 s)
  into a directory of its own and runs every Mailman and mm-handler command
  inside a private net + mount + uts namespace where the copy is
  bind-mounted over the shared prefix.  Lists made and mail queued by the
  tests never touch the shared build, and other sessions never touch ours;
- otherwise runs the build script into a prefix of its own under /tmp
  (~15 s) and uses it in place (same namespace, no bind mount), removing it
  at the end.

Inside the namespace /dev/log is a SyslogSink (the wrapper's fatal() and
mm-handler both log there).  Mailman commands run as the "mailman" user;
the wrapper and mm-handler run as the mailer does (``U=list:list``:
setpriv to uid/gid "list", no supplementary groups, empty environment,
cwd /).

API (``mailman2_real`` session fixture -> RealMailman2; ``mm2real``
function fixture: the same object with its queues emptied first):

    prefix, wrapper, lists_dir     paths as Mailman and mm-handler see them
    files                          the same tree on the host (read/modify it)
    binds                          [(files, prefix)] or []: add to another
                                   Namespace (e.g. SendmailHost.ns.binds)
    ns, sink                       the namespace and its /dev/log
    trace                          b"X-Mailman-Handler: mm-handler VERSION"
    ensure_list(name), newlist(name), rmlist(name)
    host_path(path)                a prefix path -> the host path
    run(argv, input=, user=, group=)   a command inside, as that user/group
    wrapper_run(args, input=, group=)  the real wrapper, as the mailer
    write_config(path, **mm_handler_keys)  mm-handler config for this Mailman
    deliver(config, args, stdin, group=)   the installed mm-handler, as the
                                   mailer -> tests.conftest.Run
    added_headers(recipient), expected_queue_bytes(message, recipient)
                                   what mm-handler adds; what a queue file holds
    queue()                        [QueueEntry(queue, meta, text, data, path)]
    clear_queues()
"""

import hashlib
import os
import pickle
import shutil
import subprocess
import tempfile
import email.message
from pathlib import Path

import pytest

from tests.peers.sendmail import Namespace
from tests.peers.syslog import SyslogSink

ROOT = Path(__file__).resolve().parent.parent.parent
BUILD_SCRIPT = Path(os.environ.get(
    "MM2_BUILD_SCRIPT", ROOT.parent / "shared" / "peers" / "build-mailman2.sh"))
SHARED_PREFIX = Path(os.environ.get("MM2_PREFIX", "/tmp/mm2real/prefix"))
MAIL_GROUP = os.environ.get("MM2_MAIL_GID", "list")    # the wrapper's compiled-in group
MAILER_USER = "list"                                   # the kit's U=list:list
SYSTEM_PYTHON = "/usr/bin/python3"
SITE_LIST = "mailman"


def build_stamp(script=BUILD_SCRIPT):
    """What build-mailman2.sh writes into PREFIX/.mm2-build-stamp for a
    current build (its own `want`), or None without a tarball."""
    tarballs = sorted(Path(script).parent.glob("mailman2-python3-*.tar.gz"))
    if not tarballs:
        return None
    digest = hashlib.sha256(tarballs[0].read_bytes()).hexdigest()[:16]
    return "%s mailgid=%s py=%s" % (digest, MAIL_GROUP, SYSTEM_PYTHON)


def is_current(prefix, script=BUILD_SCRIPT):
    """The script's own test: stamp matches, wrapper and site list there."""
    prefix = Path(prefix)
    stamp = prefix / ".mm2-build-stamp"
    want = build_stamp(script)
    return (want is not None and stamp.is_file()
            and stamp.read_text().strip() == want
            and os.access(prefix / "mail" / "mailman", os.X_OK)
            and (prefix / "lists" / SITE_LIST / "config.pck").is_file())


class _Unpickler(pickle.Unpickler):
    """Mailman classes (a pickled Message, should one appear) -> email.message."""

    def find_class(self, module, name):
        if module.startswith("Mailman"):
            return email.message.Message
        return super().find_class(module, name)


class QueueEntry:
    """One qfiles/QUEUE/*.pck: the message text and its metadata."""

    def __init__(self, queue, path):
        self.queue = queue
        self.path = str(path)
        with open(path, "rb") as f:
            u = _Unpickler(f)
            msg = u.load()
            self.meta = u.load()
        self.text = msg if isinstance(msg, str) else msg.as_string()
        # the wrapper's Python read stdin as UTF-8 with surrogateescape
        self.data = self.text.encode("utf-8", "surrogateescape")

    @property
    def listname(self):
        return self.meta.get("listname")

    @property
    def flags(self):
        """The script's routing flags: tolist, toowner, torequest, ..."""
        return sorted(k for k, v in self.meta.items() if k.startswith("to") and v)

    def __repr__(self):
        return "QueueEntry(%s, %s, %s, %d bytes)" % (self.queue, self.listname,
                                                     self.flags, len(self.data))


class RealMailman2:
    def __init__(self, workdir, handler=None):
        self.workdir = Path(workdir)
        self.handler = Path(handler) if handler else None
        self.own_build = None
        self.ns = None
        self.sink = None
        self.trace = None

    # -- set-up / tear-down ----------------------------------------------------

    def start(self):
        assert os.geteuid() == 0, "the real Mailman 2 tests need root"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        if is_current(SHARED_PREFIX):
            self.prefix = SHARED_PREFIX
            self.files = self.workdir / "prefix"
            subprocess.run(["cp", "-a", str(SHARED_PREFIX), str(self.files)], check=True)
            self._forget_foreign_state()
        else:
            # a build of our own, used in place
            self.own_build = Path(tempfile.mkdtemp(prefix="mmh-mm2-", dir="/tmp"))
            self.own_build.chmod(0o755)
            self.prefix = self.files = self.own_build / "prefix"
            proc = subprocess.run(["bash", str(BUILD_SCRIPT), "", str(self.prefix)],
                                  capture_output=True, timeout=900)
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        self.wrapper = self.prefix / "mail" / "mailman"
        self.lists_dir = self.prefix / "lists"
        self.binds = [] if self.files == self.prefix else [(self.files, self.prefix)]
        self.sink = SyslogSink(self.workdir / "log.sock")
        self.ns = Namespace(self.workdir / "ns", binds=self.binds,
                            dev_log=self.sink.path)
        self.ns.start()
        if self.handler:
            out = subprocess.run([str(self.handler), "--version"], capture_output=True,
                                 env={}, cwd="/", check=True).stdout
            self.trace = b"X-Mailman-Handler: " + out.strip()
        return self

    def _forget_foreign_state(self):
        """The copy keeps only the site list; queues, locks and logs empty."""
        for entry in (self.files / "lists").iterdir():
            if entry.name != SITE_LIST:
                shutil.rmtree(entry)
                for arch in ("archives/private/%s", "archives/private/%s.mbox",
                             "archives/public/%s"):
                    p = self.files / (arch % entry.name)
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    elif p.exists() or p.is_symlink():
                        p.unlink()
        for sub in ("locks", "logs"):
            for p in (self.files / sub).iterdir():
                if p.is_file() or p.is_symlink():
                    p.unlink()
        self.clear_queues()

    def stop(self):
        if self.ns is not None:
            self.ns.stop()
            self.ns = None
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        if self.own_build is not None:
            shutil.rmtree(self.own_build, ignore_errors=True)
        elif self.files != self.prefix:
            shutil.rmtree(self.files, ignore_errors=True)

    # -- running things inside -------------------------------------------------

    def host_path(self, path):
        """A path under the prefix -> where it is on the host."""
        return self.files / Path(path).relative_to(self.prefix)

    def run(self, argv, input=b"", user=MAILER_USER, group=MAILER_USER, timeout=120):
        """argv inside the namespace as user/group (names or numbers), no
        supplementary groups, empty environment, cwd /."""
        drop = [] if user == "root" else [
            "setpriv", "--reuid=%s" % user, "--regid=%s" % group, "--clear-groups"]
        return self.ns.run(drop + [str(a) for a in argv], input=input, env={},
                           cwd="/", timeout=timeout)

    def wrapper_run(self, args, input=b"", group=MAILER_USER, wrapper=None):
        return self.run([wrapper or self.wrapper] + list(args), input=input,
                        group=group)

    def newlist(self, name, owner="owner@example.org", password="pw"):
        proc = self.run([self.prefix / "bin" / "newlist", "-q", name, owner, password],
                        user="mailman", group="mailman")
        assert proc.returncode == 0, proc
        assert (self.files / "lists" / name / "config.pck").is_file()

    def ensure_list(self, name):
        if not (self.files / "lists" / name / "config.pck").is_file():
            self.newlist(name)

    def rmlist(self, name):
        proc = self.run([self.prefix / "bin" / "rmlist", "-a", name],
                        user="mailman", group="mailman")
        assert proc.returncode == 0, proc
        assert not (self.files / "lists" / name).exists()

    # -- mm-handler --------------------------------------------------------------

    def write_config(self, path, wrapper=None, lists_dir=None, **mm_handler):
        from tests.conftest import render_config
        path = Path(path)
        path.write_text(render_config({
            "mm-handler": dict({"backend": "mailman2",
                                "syslog_socket": "/dev/log"}, **mm_handler),
            "mailman2": {"wrapper": str(wrapper or self.wrapper),
                         "lists_dir": str(lists_dir or self.lists_dir),
                         "timeout": "60"},
        }))
        path.chmod(0o644)
        return path

    def deliver(self, config, args, stdin=b"", group=MAILER_USER, timeout=120):
        """The installed mm-handler as Sendmail's U=list:list runs it."""
        from tests.conftest import Run
        assert self.handler, "RealMailman2 was made without the handler"
        return Run(self.run([self.handler, "-C", config] + list(args), input=stdin,
                            group=group, timeout=timeout))

    def added_headers(self, recipient):
        """The header lines mm-handler writes after the From_ line, in order:
        the trace header, then Delivered-To with the whole envelope recipient."""
        return [self.trace, b"Delivered-To: " + recipient]

    def expected_queue_bytes(self, message, recipient):
        """The one place that says what a queue file must hold: the From_
        line as Sendmail wrote it, mm-handler's header(s) in that line's
        line end, then the message byte for byte."""
        assert message.startswith(b"From ")
        end = message.index(b"\n") + 1
        eol = b"\r\n" if message[:end].endswith(b"\r\n") else b"\n"
        added = b"".join(h + eol for h in self.added_headers(recipient.encode()))
        return message[:end] + added + message[end:]

    # -- queues --------------------------------------------------------------------

    def queue(self):
        """Every queue file, oldest first."""
        out = []
        qfiles = self.files / "qfiles"
        for qdir in sorted(p for p in qfiles.iterdir() if p.is_dir()):
            for f in qdir.iterdir():
                if f.name.endswith(".pck"):
                    out.append(QueueEntry(qdir.name, f))
        return sorted(out, key=lambda e: (e.meta.get("received_time", 0), e.path))

    def clear_queues(self):
        qfiles = self.files / "qfiles"
        for qdir in qfiles.iterdir():
            if qdir.is_dir():
                for f in qdir.iterdir():
                    f.unlink()

    def log_lines(self):
        return self.sink.lines() if self.sink else []


@pytest.fixture(scope="session")
def mailman2_real(public_tmp, handler):
    mm2 = RealMailman2(public_tmp / "mailman2-real", handler=handler)
    try:
        yield mm2.start()
    finally:
        mm2.stop()


@pytest.fixture
def mm2real(mailman2_real):
    mailman2_real.clear_queues()
    mailman2_real.sink.clear()
    yield mailman2_real
