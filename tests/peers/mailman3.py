"""A real Mailman 3.3.10 LMTP runner for the tests.

`Mailman3Runner` runs only Mailman's LMTP runner (``bin/runner -r lmtp``)
from a venv holding the real ``mailman`` package from PyPI, with its own
config and var directory.  It can run inside another network/mount
namespace: give a command prefix such as
``["nsenter", "--target", PID, "--net", "--mount"]``; every Mailman command
then runs through it, and readiness is read from that namespace's
/proc/<pid>/net/tcp.

Queue files are read without importing Mailman: a custom Unpickler maps
``mailman.*`` classes to ``email.message.Message`` (the message) or to a
plain stand-in (anything else).

Fixtures: `mailman3` (one runner per session with the test lists),
`mm3` (the same runner, queues emptied) and `mm3_config` (an mm-handler
config for backend mailman3 pointing at it).
"""

import email.message
import os
import pickle
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

DOMAIN = "lists.example.test"
# "news-bounces" is a list whose name looks like news's -bounces address;
# "news-admin" and "owner-foo" look like news's and foo's role addresses.
SESSION_LISTS = ("test", "my-list", "news-bounces", "news", "news-admin",
                 "foo", "owner-foo")
QUEUES = ("in", "command", "bounces")

CONFIG_TEMPLATE = """\
[mailman]
site_owner: postmaster@{domain}
layout: testing

[paths.testing]
var_dir: {var_dir}

[mta]
incoming: mailman.mta.null.NullMTA
lmtp_host: 127.0.0.1
lmtp_port: {port}
smtp_host: 127.0.0.1
smtp_port: {smtp_port}

[runner.rest]
start: no
"""


class Opaque:
    """Stands in for any non-message mailman.* object found in a pickle."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class QueueUnpickler(pickle.Unpickler):
    """Unpickle Mailman queue files without Mailman installed."""

    def find_class(self, module, name):
        if module == "mailman" or module.startswith("mailman."):
            if name.endswith("Message"):
                return email.message.Message
            return Opaque
        return super().find_class(module, name)


def read_queue_file(path):
    """One .pck file -> (email.message.Message, msgdata dict)."""
    with open(path, "rb") as f:
        unpickler = QueueUnpickler(f)
        msg = unpickler.load()
        data = unpickler.load()
    if isinstance(msg, (bytes, str)):       # the '_plaintext' flavour
        text = msg if isinstance(msg, str) else msg.decode("ascii", "surrogateescape")
        msg = email.message_from_string(text)
    return msg, data


def free_port(low=20000, high=32000):
    """A TCP port below the ephemeral range that nothing here listens on.

    Bound (never connected) to check: connecting to a port in the
    ephemeral range can connect a socket to itself.
    """
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port in %d..%d" % (low, high))


def listening(port, pid="self"):
    """True when /proc/PID/net/tcp{,6} shows PORT in LISTEN state.

    /proc/PID/net shows the network namespace of PID, so this also works
    for a runner started inside another namespace.
    """
    want = ":%04X" % port
    for name in ("tcp", "tcp6"):
        try:
            with open("/proc/%s/net/%s" % (pid, name)) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if (len(fields) > 3 and fields[1].endswith(want)
                            and fields[3] == "0A"):
                        return True
        except OSError:
            continue
    return False


class Mailman3Runner:
    """Mailman 3's LMTP runner with its own config and var dir in `workdir`."""

    def __init__(self, venv, workdir, port, prefix=(), netns_pid=None):
        self.venv = Path(venv)
        self.workdir = Path(workdir)
        self.port = int(port)
        self.prefix = [str(p) for p in prefix]
        # where to read the namespace's /proc/PID/net/tcp; default: the runner
        self.netns_pid = netns_pid
        self.endpoint = "127.0.0.1:%d" % self.port
        self.var_dir = self.workdir / "var"
        self.config_path = self.workdir / "mailman.cfg"
        self.log_path = self.workdir / "runner.log"
        self.proc = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.var_dir.mkdir(exist_ok=True)
        for path in (self.workdir, self.var_dir):
            path.chmod(0o755)
        self.config_path.write_text(CONFIG_TEMPLATE.format(
            domain=DOMAIN, var_dir=self.var_dir, port=self.port,
            smtp_port=self.port + 1))
        self.config_path.chmod(0o644)

    # -- commands ----------------------------------------------------------

    def _env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MAILMAN_", "PYTHON"))}
        env.setdefault("LANG", "C.UTF-8")
        return env

    def mailman(self, *args, timeout=120):
        """Run `bin/mailman -C CFG --run-as-root ARGS...`; CompletedProcess."""
        argv = self._mailman_argv(*args)
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              env=self._env(), timeout=timeout, text=True)
        if proc.returncode != 0:
            raise RuntimeError("%s failed (exit %d):\n%s%s" % (
                " ".join(argv), proc.returncode, proc.stdout, proc.stderr))
        return proc

    def _mailman_argv(self, *args):
        return self.prefix + [str(self.venv / "bin" / "mailman"), "-C",
                              str(self.config_path), "--run-as-root"] + list(args)

    def create_list(self, fqdn):
        """`mailman create FQDN` (~2 s: most of it is Mailman's start-up)."""
        self.mailman("create", fqdn)
        self._check_list_dir(fqdn)

    def create_lists(self, *fqdns, timeout=120):
        """Create several lists: the first alone (it makes the database),
        the others with concurrent `mailman create` commands."""
        if not fqdns:
            return
        self.create_list(fqdns[0])
        procs = [(fqdn, subprocess.Popen(
            self._mailman_argv("create", fqdn), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self._env()))
            for fqdn in fqdns[1:]]
        failures = []
        for fqdn, proc in procs:
            out = proc.communicate(timeout=timeout)[0]
            if proc.returncode != 0:
                failures.append("create %s: exit %d: %s" % (
                    fqdn, proc.returncode, out.decode(errors="replace")))
        if failures:
            raise RuntimeError("\n".join(failures))
        for fqdn in fqdns[1:]:
            self._check_list_dir(fqdn)

    def _check_list_dir(self, fqdn):
        list_dir = self.var_dir / "lists" / fqdn.lower().replace("@", ".")
        assert list_dir.is_dir(), "mailman create left no %s" % list_dir

    # -- the LMTP runner ---------------------------------------------------

    def start(self, timeout=30):
        if self.proc is not None and self.proc.poll() is None:
            return
        argv = self.prefix + [str(self.venv / "bin" / "runner"), "-C",
                              str(self.config_path), "-r", "lmtp"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env=self._env(), start_new_session=True)
        where = self.netns_pid or self.proc.pid
        deadline = time.monotonic() + timeout
        while not listening(self.port, where):
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError("LMTP runner exited before listening:\n"
                                   + self.log_tail())
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("LMTP runner not listening on %d after %ds:\n%s"
                                   % (self.port, timeout, self.log_tail()))
            time.sleep(0.05)

    def stop(self, timeout=15):
        """SIGTERM by PID; wait until /proc/PID is gone (SIGKILL if it hangs)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pid = proc.pid
        if proc.poll() is None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(pid, signal.SIGKILL)   # our own session only
                except ProcessLookupError:
                    pass
                proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines=30):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        mailman_log = self.var_dir / "logs" / "mailman.log"
        if mailman_log.exists():
            text += mailman_log.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- queues ------------------------------------------------------------

    def queue_dir(self, queue):
        return self.var_dir / "queue" / queue

    def queue_files(self, queue):
        """Sorted paths of the messages in var/queue/<queue>/*.pck."""
        return sorted(self.queue_dir(queue).glob("*.pck"))

    def read_queue(self, queue):
        """[(email.message.Message, msgdata dict)] in queue order."""
        return [read_queue_file(path) for path in self.queue_files(queue)]

    def queued(self):
        """{queue: number of .pck files} for every queue that has some."""
        root = self.var_dir / "queue"
        if not root.is_dir():
            return {}
        counts = {}
        for qdir in sorted(root.iterdir()):
            n = len(list(qdir.glob("*.pck")))
            if n:
                counts[qdir.name] = n
        return counts

    def clear_queues(self):
        root = self.var_dir / "queue"
        if not root.is_dir():
            return
        for qdir in root.iterdir():
            for path in qdir.iterdir():
                if path.is_file():
                    path.unlink()


@pytest.fixture(scope="session")
def mailman3(public_tmp):
    """One LMTP runner for the session, with the test lists created."""
    from tests.conftest import MAILMAN_VENV
    assert (MAILMAN_VENV / "bin" / "runner").exists(), \
        "no Mailman 3 in %s: run `make test`" % MAILMAN_VENV
    runner = Mailman3Runner(MAILMAN_VENV, public_tmp / "mailman3", free_port())
    runner.create_lists(*("%s@%s" % (name, DOMAIN) for name in SESSION_LISTS))
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture
def mm3(mailman3):
    """The session runner, running, with empty queues."""
    if not mailman3.running:
        mailman3.start()
    mailman3.clear_queues()
    yield mailman3


@pytest.fixture
def mm3_config(make_config, mm3):
    """Write an mm-handler config for backend mailman3 pointing at `mm3`.

    mm3_config(var_dir=True, lmtp="h:p h:p", trace_header="no",
               extra={"section": {...}}) -> path
    """
    def make(var_dir=False, lmtp=None, extra=None, **handler_keys):
        sections = {"mm-handler": {"backend": "mailman3"},
                    "mailman3": {"lmtp": lmtp or mm3.endpoint, "timeout": "20"}}
        sections["mm-handler"].update(handler_keys)
        if var_dir:
            sections["mailman3"]["var_dir"] = str(mm3.var_dir)
        for section, keys in (extra or {}).items():
            sections.setdefault(section, {}).update(keys)
        return make_config(sections)
    return make


# -- all of Mailman 3: `mailman start` ----------------------------------------

# The runners `mailman start` starts with Mailman 3.3.10's defaults (nntp,
# bad and shunt are start: no); each logs "NAME runner started."
SITE_RUNNERS = ("archive", "bounces", "command", "in", "lmtp", "out", "pipeline",
                "rest", "retry", "task", "virgin", "digest")

# The REST runner's gunicorn: without this it makes a control socket in the
# runner's home ($HOME is not passed to runners: pwd's, /root), shared by
# every site on the machine; a short graceful timeout keeps the stop quick.
SITE_GUNICORN = """\
[gunicorn]
graceful_timeout = 1
timeout = 60
control_socket_disable = true
"""


class Mailman3Site(Mailman3Runner):
    """All of Mailman 3 (`mailman start`: master and every runner, REST on
    a port of its own) with its own config and var dir in `workdir`.

    Outgoing mail goes to 127.0.0.1:`smtp_port` (a sink the caller runs).
    The bounce runner polls every second, not every 2 minutes (its
    default), so that a test sees its verdict.  `extra` is
    {section: {key: value}} added to (or overriding) the config.
    start() runs `mailman start` and waits for every runner; stop() sends
    SIGTERM to the master's PID (from master.pid), waits until it and every
    runner it had are gone, SIGKILL by PID to any left after the timeout.
    """

    def __init__(self, venv, workdir, port, smtp_port, rest_port=None, extra=None):
        super().__init__(venv, workdir, port)
        self.smtp_port = int(smtp_port)
        self.rest_port = int(rest_port or free_port())
        self.master_pid = None
        self.runner_pids = []
        gunicorn = self.workdir / "gunicorn.cfg"
        gunicorn.write_text(SITE_GUNICORN)
        sections = {
            "mailman": {"site_owner": "postmaster@" + DOMAIN, "layout": "testing"},
            "paths.testing": {"var_dir": str(self.var_dir)},
            "mta": {"incoming": "mailman.mta.null.NullMTA",
                    "lmtp_host": "127.0.0.1", "lmtp_port": str(self.port),
                    "smtp_host": "127.0.0.1", "smtp_port": str(self.smtp_port)},
            "webservice": {"hostname": "127.0.0.1", "port": str(self.rest_port),
                           "workers": "1", "configuration": str(gunicorn)},
            "runner.bounces": {"sleep_time": "1s"},
        }
        for section, keys in (extra or {}).items():
            sections.setdefault(section, {}).update(keys)
        self.config_path.write_text("".join(
            "[%s]\n%s\n" % (section, "".join("%s: %s\n" % kv for kv in keys.items()))
            for section, keys in sections.items()))
        self.config_path.chmod(0o644)

    def add_members(self, fqdn, *emails):
        """`mailman addmembers -W` (no welcome message): subscribed at once."""
        members = self.workdir / "members.txt"
        members.write_text("".join(e + "\n" for e in emails))
        self.mailman("addmembers", "-W", str(members), fqdn)

    def log(self, name="mailman"):
        path = self.var_dir / "logs" / ("%s.log" % name)
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    @staticmethod
    def _children_of(pid):
        """PIDs whose parent is `pid` (read from /proc)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                pids.append(int(entry))
        return pids

    @staticmethod
    def _wait_gone(pids, timeout):
        deadline = time.monotonic() + timeout
        while any(os.path.exists("/proc/%d" % p) for p in pids):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def start(self, timeout=60):
        if self.master_pid is not None:
            return
        # `mailman start` forks the master and returns; the master keeps
        # whatever output it inherits: a file, never a pipe we wait on
        with open(self.log_path, "ab") as log:
            proc = subprocess.run(self._mailman_argv("start"), stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT,
                                  env=self._env(), timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError("mailman start failed (exit %d):\n%s"
                               % (proc.returncode, self.log_tail()))
        pid_file = self.var_dir / "master.pid"
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.master_pid is None and pid_file.exists():
                    text = pid_file.read_text().strip()
                    if text.isdigit():
                        self.master_pid = int(text)
                log = self.log()
                missing = [r for r in SITE_RUNNERS if "%s runner started." % r not in log]
                if self.master_pid and not missing and listening(self.port):
                    break
                if self.master_pid and not os.path.exists("/proc/%d" % self.master_pid):
                    raise RuntimeError("Mailman's master exited:\n" + self.log_tail())
                if time.monotonic() > deadline:
                    raise RuntimeError("Mailman not up after %ds (pid %s, waiting "
                                       "for %s):\n%s" % (timeout, self.master_pid,
                                                         missing, self.log_tail()))
                time.sleep(0.1)
            self.runner_pids = self._children_of(self.master_pid)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout=30):
        pid, self.master_pid = self.master_pid, None
        if pid is None:
            return
        pids = [pid]
        for p in self.runner_pids + self._children_of(pid):
            if p not in pids:
                pids.append(p)
        self.runner_pids = []
        try:
            os.kill(pid, signal.SIGTERM)    # the master stops its runners
        except ProcessLookupError:
            pass
        if not self._wait_gone(pids, timeout):
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._wait_gone(pids, 5)

    @property
    def running(self):
        return self.master_pid is not None and os.path.exists("/proc/%d" % self.master_pid)
