"""mm_handler.child.run, in-process, with small /bin/sh and Python children.

Every test runs five times: with what Linux has (posix_spawn, a pidfd,
select.poll) and with each fallback forced by deleting the call the way a
platform lacks it: no os.pidfd_open (FreeBSD, macOS, NetBSD, illumos, old
Linux), no select.poll (macOS, where it is not used), no os.posix_spawn
(fork + exec), and none of the three.  A watchdog alarm turns a hang into
a failure; after each test no descriptor and no child may be left over.
"""

import errno
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mm_handler import child
from tests.peers.mailman2_wrapper import Installed

ROOT = Path(__file__).resolve().parent.parent
LETTER = b"".join(b"%06d %s\n" % (i, b"m" * 70) for i in range(3200))   # ~240 KB
MARGIN = 0.5            # how late past its timeout run() may return
WATCHDOG = 30

MODES = {
    "native": (),
    "no pidfd_open": ("pidfd_open",),
    "no select.poll": ("poll",),
    "no posix_spawn": ("posix_spawn",),
    "none of the three": ("pidfd_open", "poll", "posix_spawn"),
}


# subprocess (3.13) spawns with os.posix_spawn: the drivers below need it
# back in this process; they delete the calls in their own
POSIX_SPAWN = getattr(os, "posix_spawn", None)


def restore_posix_spawn(monkeypatch):
    if POSIX_SPAWN is not None:
        monkeypatch.setattr(os, "posix_spawn", POSIX_SPAWN, raising=False)


class Hung(Exception):
    pass


def _fds():
    where = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    return sorted(os.listdir(where))


@pytest.fixture(autouse=True, params=list(MODES))
def mode(request, monkeypatch):
    """Delete the calls this mode lacks; count the ones used."""
    gone = MODES[request.param]
    if "pidfd_open" in gone:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    if "poll" in gone:
        monkeypatch.delattr(select, "poll", raising=False)
    if "posix_spawn" in gone:
        monkeypatch.delattr(os, "posix_spawn", raising=False)
    used = {}
    children = []       # this test's own: the session may have others
    for module, name in ((os, "pidfd_open"), (select, "poll"), (select, "select"),
                         (os, "posix_spawn"), (os, "fork")):
        real = getattr(module, name, None)
        if real is not None:
            def counted(*args, _real=real, _name=name, **kw):
                used[_name] = used.get(_name, 0) + 1
                result = _real(*args, **kw)
                if _name in ("posix_spawn", "fork") and result:
                    children.append(result)
                return result
            monkeypatch.setattr(module, name, counted)

    def alarm(signum, frame):
        raise Hung("run() hung past the watchdog")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG)
    before = _fds()
    yield used
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
    assert _fds() == before, "descriptors left open"
    for pid in children:                     # no child left unreaped
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def sh(script, *args):
    """argv for /bin/sh -c SCRIPT with $1... = args."""
    return ["/bin/sh", "-c", script, "sh"] + [str(a) for a in args]


def run_sh(script, *args, chunks=(LETTER,), timeout=20, **kw):
    argv = sh(script, *args)
    return child.run(argv[0], argv, {}, chunks, timeout, **kw)


def py(tmp_path, source, *args):
    """argv running SOURCE with this interpreter (-I -S: fast, nothing else)."""
    path = tmp_path / "peer.py"
    path.write_text(textwrap.dedent(source))
    return [sys.executable, "-I", "-S", str(path)] + [str(a) for a in args]


def gone(pid, wait=2.0):
    """The process is dead: no such pid, or a zombie that init has not
    reaped yet (a killed grandchild is init's to reap)."""
    end = time.monotonic() + wait
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except OSError:
            pass
        if time.monotonic() > end:
            return False
        time.sleep(0.01)


def read_pid(path, wait=5.0):
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            text = Path(path).read_text()
            if text.endswith("\n"):
                return int(text)
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError("no pid in %s" % path)


def kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# A stand-in for Mailman 2's script: reads stdin to EOF, then "queues" it.
QUEUE_AT_EOF = """
    import os, sys
    with open(sys.argv[1] + ".pid", "w") as f:
        f.write("%d\\n" % os.getpid())
    data = b""
    while True:
        more = os.read(0, 65536)
        if not more:
            break
        data += more
    with open(sys.argv[1], "wb") as f:
        f.write(data)
"""


# --- the whole message, the status, the output ------------------------------------

def test_every_byte_arrives_in_order(tmp_path):
    out = tmp_path / "out"
    chunks = [b"From a\n", b"", b"x" * 3000000, b"\x00\xff.\r\n", b"", b"end"]
    done = run_sh('cat > "$1"; echo done', out, chunks=chunks)
    assert (done.status, done.wrote_all, done.unread) == (0, True, False)
    assert done.output == b"done\n"
    assert out.read_bytes() == b"".join(chunks)


def test_an_empty_message_is_an_immediate_end_of_file(tmp_path):
    out = tmp_path / "out"
    done = run_sh('cat > "$1"; sleep 0.1', out, chunks=[])
    assert (done.status, done.wrote_all, done.unread) == (0, True, False)
    assert out.read_bytes() == b""


def test_a_slow_reader_gets_everything(tmp_path):
    out = tmp_path / "out"
    argv = py(tmp_path, """
        import os, sys, time
        with open(sys.argv[1], "wb") as f:
            while True:
                data = os.read(0, 4096)
                if not data:
                    break
                f.write(data)
                time.sleep(0.002)
    """, out)
    chunks = [LETTER[i:i + 10000] for i in range(0, len(LETTER), 10000)]
    done = child.run(argv[0], argv, {}, chunks, 20)
    assert (done.status, done.wrote_all, done.unread) == (0, True, False)
    assert out.read_bytes() == LETTER


def test_the_environment_is_exactly_the_one_given():
    done = child.run("/usr/bin/env", ["/usr/bin/env"], {"AGENT": "sendmail"}, [], 5)
    assert (done.status, done.output) == (0, b"AGENT=sendmail\n")


def test_argv_reaches_the_child_without_a_shell(tmp_path):
    argv = py(tmp_path, "import sys; print(sys.argv[1:])", "a b", "$HOME", ";", "*")
    done = child.run(argv[0], argv, {}, [], 5)
    assert done.output == b"['a b', '$HOME', ';', '*']\n"


@pytest.mark.parametrize("script, exited, wrote_all, unread, output", [
    ("cat >/dev/null; exit 3", 3, True, False, b""),
    ("sleep 0.2; echo nope >&2; exit 3", 3, False, True, b"nope\n"),   # never read
    ("cat >/dev/null; echo out; echo err >&2; exit 0", 0, True, False, b"out\nerr\n"),
])
def test_exit_status_and_output(script, exited, wrote_all, unread, output):
    done = run_sh(script)
    assert os.WIFEXITED(done.status) and os.WEXITSTATUS(done.status) == exited
    assert (done.wrote_all, done.unread, done.output) == (wrote_all, unread, output)


@pytest.mark.parametrize("script, signum", [
    ("kill -SEGV $$", signal.SIGSEGV),
    ("cat >/dev/null; kill -KILL $$", signal.SIGKILL),
])
def test_a_child_killed_by_a_signal(script, signum):
    done = run_sh(script)
    assert os.WIFSIGNALED(done.status) and os.WTERMSIG(done.status) == signum


def test_exit_0_without_reading_a_small_message_shows_as_unread():
    # the message fits in the pipe: every write succeeds, stdin is closed by
    # us, and only the byte left in the pipe tells that it was never read
    done = run_sh("sleep 0.3; exit 0", chunks=[b"a short message\n"])
    assert (done.status, done.wrote_all, done.unread) == (0, True, True)


def test_a_partial_read_shows_as_unread(tmp_path):
    argv = py(tmp_path, "import os, time; os.read(0, 10); time.sleep(0.3)")
    done = child.run(argv[0], argv, {}, [b"0123456789abcdef"], 10)
    assert (done.status, done.wrote_all, done.unread) == (0, True, True)


def test_output_is_capped_and_a_chatty_child_never_blocks():
    done = run_sh("head -c 1000000 /dev/zero; cat >/dev/null; echo late >&2",
                  limit=100)
    assert (done.status, done.wrote_all, done.unread) == (0, True, False)
    assert done.output == b"\0" * 100


def test_sigpipe_is_default_in_the_child():
    # reads the child's signal state from /proc: this test runs on Linux
    assert os.path.exists("/proc/self/status"), "no /proc"
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN   # Python's own
    done = run_sh("grep SigIgn /proc/$$/status", chunks=[])
    ignored = int(done.output.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))


def test_the_child_runs_in_its_own_process_group(tmp_path):
    argv = py(tmp_path, "import os; print(os.getpgid(0) == os.getpid())")
    done = child.run(argv[0], argv, {}, [], 5)
    assert done.output == b"True\n"


def test_cwd(tmp_path):
    done = run_sh("pwd", chunks=[], cwd=str(tmp_path))
    assert (done.status, done.output) == (0, str(tmp_path).encode() + b"\n")


# --- the deadline --------------------------------------------------------------------

def test_a_child_that_never_reads_is_killed_at_the_deadline(tmp_path):
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    done = run_sh('echo $$ > "$1"; exec sleep 60', pidfile, timeout=1)
    took = time.monotonic() - start
    assert 1 <= took < 1 + MARGIN
    assert (done.status, done.wrote_all, done.unread) == (None, False, True)
    assert done.pid == read_pid(pidfile) and gone(done.pid)


def test_a_slow_reader_past_the_deadline_is_killed_and_queues_nothing(tmp_path):
    queued = tmp_path / "queued"
    argv = py(tmp_path, QUEUE_AT_EOF.replace("more = os.read(0, 65536)",
                                             "more = os.read(0, 100); time.sleep(0.01)")
              .replace("import os, sys", "import os, sys, time"), queued)
    start = time.monotonic()
    done = child.run(argv[0], argv, {}, [LETTER], 0.5)
    assert time.monotonic() - start < 0.5 + MARGIN
    assert done.status is None and not done.wrote_all
    time.sleep(0.2)
    assert not queued.exists()


def test_a_deadline_that_passes_while_the_child_is_busy_after_reading(tmp_path):
    done = run_sh("cat >/dev/null; echo working; exec sleep 60", timeout=0.5)
    assert done.status is None and done.wrote_all and done.output == b"working\n"


@pytest.mark.parametrize("spawner", [
    "sleep 30 & echo $! > \"$1\"",
    "yes & echo $! > \"$1\"",                   # keeps writing to the pipe
])
def test_a_grandchild_holding_the_output_open_does_not_delay_the_return(
        tmp_path, spawner):
    pidfile = tmp_path / "grandchild"
    start = time.monotonic()
    try:
        done = run_sh("cat >/dev/null; echo said; " + spawner + "; exit 0", pidfile,
                      timeout=20)
        took = time.monotonic() - start
    finally:
        kill_quietly(read_pid(pidfile))
    assert took < 2
    assert (done.status, done.wrote_all, done.unread) == (0, True, False)
    assert done.output.startswith(b"said\n")


# --- exceptions: the child dies before its stdin closes, then the exception goes on ---

class Boom(Exception):
    pass


def letter_then_boom():
    yield LETTER[:100000]
    time.sleep(0.2)         # the child has read what was sent
    raise Boom("the message could not be read whole")


def test_an_exception_from_chunks_kills_the_child_and_queues_nothing(tmp_path):
    queued = tmp_path / "queued"
    argv = py(tmp_path, QUEUE_AT_EOF, queued)
    with pytest.raises(Boom):
        child.run(argv[0], argv, {}, letter_then_boom(), 20)
    pid = read_pid(str(queued) + ".pid")
    time.sleep(0.3)
    assert not queued.exists() and gone(pid)


def test_a_forked_reader_in_the_child_dies_too(tmp_path):
    # sh forks the reader (the trailing ":" keeps sh from exec'ing it):
    # killing the child alone would leave the reader to see a clean EOF
    queued = tmp_path / "queued"
    argv = py(tmp_path, QUEUE_AT_EOF, queued)
    script = '"$@"; :'
    with pytest.raises(Boom):
        child.run("/bin/sh", sh(script, *argv), {}, letter_then_boom(), 20)
    pid = read_pid(str(queued) + ".pid")
    time.sleep(0.3)
    assert not queued.exists() and gone(pid)


def test_a_signal_handler_exception_kills_the_child_and_queues_nothing(tmp_path):
    class Interrupted(BaseException):
        pass

    def handler(signum, frame):
        raise Interrupted(signum)
    queued = tmp_path / "queued"
    argv = py(tmp_path, QUEUE_AT_EOF.replace(
        "    data = b\"\"\n",
        "    data = os.read(0, 1000)\n    os.kill(os.getppid(), %d)\n"
        % signal.SIGUSR1), queued)
    old = signal.signal(signal.SIGUSR1, handler)
    try:
        start = time.monotonic()
        with pytest.raises(Interrupted):
            child.run(argv[0], argv, {}, [LETTER] * 4, 20)
        assert time.monotonic() - start < 5
    finally:
        signal.signal(signal.SIGUSR1, old)
    pid = read_pid(str(queued) + ".pid")
    time.sleep(0.3)
    assert not queued.exists() and gone(pid)


def test_the_child_is_killed_and_reaped_before_its_stdin_is_closed(monkeypatch):
    events = []
    pipes = []
    real = {name: getattr(os, name) for name in ("pipe", "close", "kill", "killpg",
                                                 "waitpid")}

    def pipe():
        fds = real["pipe"]()
        pipes.append(fds)
        return fds

    def close(fd):
        if pipes and fd == pipes[0][1]:
            events.append("close stdin")
        return real["close"](fd)

    def kill(pid, sig):
        events.append("kill %d" % sig)
        return real["kill"](pid, sig)

    def waitpid(pid, options):
        got = real["waitpid"](pid, options)
        if got[0]:
            events.append("reaped")
        return got
    monkeypatch.setattr(os, "pipe", pipe)
    monkeypatch.setattr(os, "close", close)
    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "waitpid", waitpid)
    with pytest.raises(Boom):
        run_sh("cat >/dev/null", chunks=letter_then_boom())
    assert events == ["kill %d" % signal.SIGKILL, "reaped", "close stdin"]


# --- spawn failures, odd callers ------------------------------------------------------

@pytest.mark.parametrize("make, code", [
    (lambda p: p / "missing", errno.ENOENT),
    (lambda p: (p / "plain").write_text("#!/bin/sh\n") and p / "plain", errno.EACCES),
])
def test_a_program_that_cannot_start_raises_spawn_error(tmp_path, make, code):
    program = str(make(tmp_path))
    consumed = []

    def chunks():
        consumed.append(1)
        yield b"x"
    with pytest.raises(child.SpawnError) as info:
        child.run(program, [program], {}, chunks(), 5)
    assert isinstance(info.value, OSError)
    assert info.value.errno == code and info.value.filename == program
    assert consumed == []


def test_a_missing_cwd_raises_spawn_error(tmp_path):
    with pytest.raises(child.SpawnError) as info:
        run_sh("exit 0", chunks=[], cwd=str(tmp_path / "nowhere"))
    assert info.value.errno == errno.ENOENT


def test_sigchld_ignored_by_the_caller_still_gives_the_status():
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        done = run_sh("cat >/dev/null; exit 3")
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert os.WEXITSTATUS(done.status) == 3


def test_closed_standard_descriptors_in_the_caller(tmp_path, request, monkeypatch):
    # fds 0-2 closed: os.pipe() returns them, and a dup2 onto itself would
    # leave close-on-exec set (the child would have no stdin)
    out = tmp_path / "out"
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent("""
        import os, select, sys
        sys.path.insert(0, %r)
        for name in %r:
            for module in (os, select):
                if hasattr(module, name):
                    delattr(module, name)
        from mm_handler import child
        for fd in (0, 1, 2):
            os.close(fd)
        done = child.run("/bin/sh", ["/bin/sh", "-c", "cat; echo err >&2"], {},
                         [b"through"], 10)
        with open(%r, "w") as f:
            f.write(repr((done.status, done.wrote_all, done.unread, done.output)))
    """ % (str(ROOT), MODES[request.node.callspec.params["mode"]], str(out))))
    restore_posix_spawn(monkeypatch)
    subprocess.run([sys.executable, str(driver)], check=True, timeout=20)
    assert out.read_text() == repr((0, True, False, b"througherr\n"))


# --- the fallbacks are the ones in use --------------------------------------------------

def test_each_mode_uses_what_it_says(request, mode):
    name = request.node.callspec.params["mode"]
    lacks = MODES[name]
    run_sh("cat >/dev/null")
    on_linux = sys.platform.startswith("linux")
    if "pidfd_open" not in lacks and on_linux:
        assert mode.get("pidfd_open") == 1
    assert "pidfd_open" not in mode or "pidfd_open" not in lacks
    if "poll" in lacks:
        assert mode.get("select", 0) >= 1 and "poll" not in mode
    elif on_linux:
        assert mode.get("poll", 0) >= 1 and "select" not in mode
    if "posix_spawn" in lacks:
        assert mode.get("fork") == 1 and "posix_spawn" not in mode
    else:
        assert mode.get("posix_spawn") == 1 and "fork" not in mode


# --- a signal to a process streaming to the Mailman 2 wrapper stand-in ------------------

DRIVER = """
import os, select, signal, sys, time
sys.path.insert(0, {root!r})
for name in {lacks!r}:
    for module in (os, select):
        if hasattr(module, name):
            delattr(module, name)
from mm_handler import child


class Interrupted(BaseException):
    pass


def interrupted(signum, frame):
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(sig, interrupted)


def slowly():
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuv\\n"
    yield b"From alice@example.org Sun Nov 22 02:44:03 2026\\nSubject: x\\n\\n"
    for i in range(400):
        yield line * 1000
        time.sleep(0.05)


try:
    done = child.run({wrapper!r}, [{wrapper!r}, "post", "test"], {{}}, slowly(), 60)
except Interrupted as exc:
    print("interrupted by signal %d" % exc.args[0])
    sys.exit(75)
print(done)
sys.exit(0)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_stream_to_the_wrapper_queues_nothing(tmp_path, request,
                                                          monkeypatch, signum):
    lacks = MODES[request.node.callspec.params["mode"]]
    started = tmp_path / "started"
    mm2 = Installed(tmp_path / "mailman", lists=["test"], started=str(started))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT), lacks=lacks, wrapper=mm2.path))
    restore_posix_spawn(monkeypatch)
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE)
    try:
        wrapper_pid = read_pid(started)         # the wrapper reads the message
        time.sleep(0.3)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (75, b"interrupted by signal %d\n" % signum)
    assert gone(wrapper_pid)
    time.sleep(0.3)
    assert mm2.queued() == [] and mm2.runs() == []
