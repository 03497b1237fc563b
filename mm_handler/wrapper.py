"""Delivery to Mailman 2: run ``WRAPPER ACTION LIST`` and stream the message.

No shell: run() below with a fixed argv, under one deadline (the
``timeout`` of [mailman2]).  The wrapper's exit codes are not sysexits (2
group mismatch ... 8 group not found); every failure is a site fault, so
the mail stays queued (75) and the wrapper's own words are passed on.  Success needs
exit 0 AND the whole message read: run() keeps a read end of the pipe so
that unread bytes show after the exit.  On the deadline or any exception
(a signal's) the wrapper is killed before its stdin closes: Mailman 2
queues whatever it read up to a clean end of file.

run() is mm_handler.child.run (described there), kept in this module
because the Mailman 2 path then imports one module, not two: an import
costs ~60 us on every message (bench/startup.py).  Its rare fork + exec
fallback lives in mm_handler.child.
"""

import _signal
import os
import select
import sys
import time

from .status import EX_OK, EX_TEMPFAIL, Outcome

WRAPPER_EXIT = {
    1: "the Mailman script failed (list missing or a Python error)",
    2: "group mismatch: the mailer's U= group is not the group the wrapper "
       "was compiled for",
    3: "setregid() failed",
    4: "the wrapper could not exec its script",
    5: "the wrapper reports a usage error",
    6: "the wrapper reports an illegal command",
    8: "the mailer's gid has no group name (check U= and /etc/group)",
}
STDERR_KEEP = 2048


def describe_status(status):
    """A waitpid() status in words."""
    if os.WIFSIGNALED(status):
        return "killed by signal %d" % os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    return "exit %d: %s" % (code, WRAPPER_EXIT.get(code, "unexpected status"))


def deliver(wrapper, action, listname, chunks, timeout, environ):
    """Run the wrapper once for one list; returns an Outcome.  An exception
    from `chunks` (or a signal handler) goes on, the wrapper killed."""
    try:
        done = run(wrapper, [wrapper, action, listname], environ, chunks,
                   timeout, limit=STDERR_KEEP)
    except SpawnError as exc:
        return Outcome(EX_TEMPFAIL, "cannot run wrapper %s: %s"
                       % (wrapper, exc.strerror or exc))
    except OSError as exc:      # the pipes to it; run() killed it first
        return Outcome(EX_TEMPFAIL, "I/O error with wrapper %s: %s"
                       % (wrapper, exc.strerror or exc))
    said = done.output.decode("utf-8", "replace").strip()
    if done.status is None:
        return Outcome(EX_TEMPFAIL, "wrapper did not finish within %g s and "
                       "was killed" % timeout, said)
    if done.status == 0 and done.wrote_all and not done.unread:
        return Outcome(EX_OK, "accepted by the Mailman 2 wrapper", said)
    if done.status == 0:
        reason = "wrapper exited 0 without reading the whole message"
    else:
        reason = "wrapper " + describe_status(done.status)
    return Outcome(EX_TEMPFAIL, reason, said)


# --- the process runner: mm_handler.child.run ------------------------------

OUTPUT_LIMIT = 4096
_CHUNK = 65536
_NAP_FIRST = 0.001      # without a pidfd: first sleep between exit checks,
_NAP_MAX = 0.05         # doubling up to this


class SpawnError(OSError):
    """The program could not be started; nothing was written to it."""


# status, wrote_all, unread, output, pid: see mm_handler.child
Finished = type(sys.implementation)     # types.SimpleNamespace, no import


def run(program, argv, environ, chunks, timeout, cwd=None, limit=OUTPUT_LIMIT):
    """mm_handler.child.run: run PROGRAM under one deadline; a Finished.

    SpawnError (an OSError) when it cannot be started; any exception from
    `chunks` or a signal handler goes on once the child is dead and reaped.
    """
    deadline = time.monotonic() + timeout
    fds = {}        # our descriptors by role; closed in the finally
    started = []    # the pid, set while signals are still blocked
    reaped = False
    sigchld = _sigchld_default()
    try:
        _start(program, argv, environ, cwd, fds, started)
        pid = started[0]
        status, wrote_all, output = _feed(pid, fds, chunks, deadline, limit)
        reaped = True
        if not wrote_all:
            # the child is gone, but a process it left in its group may
            # still hold the pipe: it must not read end of file now
            _killpg(pid)
        if "out_r" in fds:
            output += _drain(fds["out_r"], limit - len(output))
        _close(fds, "stdin_w")
        return Finished(status=status, wrote_all=wrote_all, pid=pid,
                        unread=_unread(fds["stdin_r"]), output=bytes(output))
    finally:
        if started and not reaped:
            _kill(started[0])           # before stdin_w is closed below
        elif started and "stdin_w" in fds:
            _killpg(started[0])
        for role in list(fds):
            _close(fds, role)
        if sigchld:
            _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)


def _killpg(pgid):
    """SIGKILL what is left of a reaped child's process group."""
    try:
        os.killpg(pgid, _signal.SIGKILL)
    except OSError:             # no one left (ESRCH), or not ours
        pass


def _start(program, argv, environ, cwd, fds, started):
    """Pipes and the child, with every signal blocked so that no handler
    can raise between the spawn and the moment its pid is in `started`
    (a handler that runs as the mask is restored finds it there)."""
    mask = getattr(_signal, "pthread_sigmask", None)
    old = None
    if mask is not None:
        old = mask(_signal.SIG_BLOCK, _signal.valid_signals())
    try:
        try:
            fds["stdin_r"], fds["stdin_w"] = _pipe()
            fds["out_r"], fds["out_w"] = _pipe()
            started.append(_spawn(program, argv, environ, cwd, fds["stdin_r"],
                                  fds["out_w"], old))
        except OSError as exc:
            raise SpawnError(exc.errno, exc.strerror, program) from None
        _close(fds, "out_w")
    finally:
        if mask is not None:
            mask(_signal.SIG_SETMASK, old)


def _spawn(program, argv, environ, cwd, stdin_r, out_w, sigmask):
    spawn = getattr(os, "posix_spawn", None)
    if spawn is None or cwd is not None:       # posix_spawn cannot chdir
        from .child import fork_exec
        return fork_exec(program, argv, environ, cwd, stdin_r, out_w, sigmask)
    extra = {} if sigmask is None else {"setsigmask": sigmask}
    return spawn(program, argv, environ,
                 file_actions=[(os.POSIX_SPAWN_DUP2, stdin_r, 0),
                               (os.POSIX_SPAWN_DUP2, out_w, 1),
                               (os.POSIX_SPAWN_DUP2, out_w, 2)],
                 setpgroup=0, setsigdef=(_signal.SIGPIPE,), **extra)


def _feed(pid, fds, chunks, deadline, limit):
    """Write, read and wait until the exit or the deadline.

    Returns (status or None, wrote_all, output).  The child is reaped on
    return; an exception leaves it to run()'s finally to kill.
    """
    stdin_w, out_r = fds["stdin_w"], fds["out_r"]
    os.set_blocking(stdin_w, False)
    os.set_blocking(out_r, False)
    pidfd = _pidfd(pid, fds)
    poll = getattr(select, "poll", None) if sys.platform != "darwin" else None
    source = iter(chunks)
    pending = memoryview(b"")
    output = bytearray()
    nap = _NAP_FIRST
    hinted = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, "stdin_w" not in fds, output
        if hinted:
            # the pidfd is readable yet the child not reapable (a thread
            # outlives the leader): no busy loop, the naps take over
            _close(fds, "pidfd")
            pidfd = None
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(pid)
            return None, "stdin_w" not in fds, output
        readers = [fd for fd in (fds.get("out_r"), pidfd) if fd is not None]
        writers = [stdin_w] if "stdin_w" in fds else []
        ready = _wait(poll, readers, writers,
                      left if pidfd is not None else min(left, nap))
        if not ready:
            nap = min(nap * 2, _NAP_MAX)
            continue
        nap = _NAP_FIRST
        hinted = pidfd is not None and pidfd in ready
        if hinted:
            continue
        if out_r in ready and "out_r" in fds:
            try:
                data = os.read(out_r, _CHUNK)
            except BlockingIOError:
                data = None
            if data == b"":
                _close(fds, "out_r")
            elif data:
                output += data[:max(0, limit - len(output))]   # read on, keep limit
        if stdin_w in ready and "stdin_w" in fds:
            while True:
                while not pending:
                    data = next(source, None)
                    if data is None:
                        break
                    pending = memoryview(data)
                if not pending:
                    _close(fds, "stdin_w")      # all written: a real EOF
                    break
                try:
                    pending = pending[os.write(stdin_w, pending):]
                except BlockingIOError:
                    break
                if pending:
                    break                       # the pipe is full


def _wait(poll, readers, writers, seconds):
    """The descriptors that are ready within `seconds`."""
    if poll is not None:
        poller = poll()
        for fd in readers:
            poller.register(fd, select.POLLIN)
        for fd in writers:
            poller.register(fd, select.POLLOUT)
        ms = min(int(seconds * 1000) + 1, 86400000)
        return {fd for fd, _ in poller.poll(ms)}
    r, w, _ = select.select(readers, writers, [], seconds)
    return set(r + w)


def _pidfd(pid, fds):
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fds["pidfd"] = opener(pid)
    except OSError:             # ENOSYS (old kernel), EMFILE...
        return None
    return fds["pidfd"]


def _kill(pid):
    """SIGKILL the child's process group and the child, then reap it.

    Another exception (a second signal's handler) cannot stop this: the
    child must be dead before its stdin closes.
    """
    while True:
        try:
            try:
                os.killpg(pid, _signal.SIGKILL)     # helpers reading stdin too
            except OSError:
                pass
            os.kill(pid, _signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        except (ChildProcessError, ProcessLookupError):
            return              # already reaped
        except OSError:         # EPERM: not ours to kill; nothing more to do
            return
        except BaseException:   # noqa: BLE001 - a handler raised: again
            continue


def _pipe():
    """os.pipe() with both ends above 2: dup2 onto 0-2 must never be a no-op
    that leaves close-on-exec set, nor clobber the other end."""
    r, w = os.pipe()
    if r > 2 and w > 2:
        return r, w
    low = []
    try:
        while r <= 2:
            low.append(r)
            r = os.dup(r)
        while w <= 2:
            low.append(w)
            w = os.dup(w)
    finally:
        for fd in low:
            os.close(fd)
    return r, w


def _close(fds, role):
    fd = fds.pop(role, None)
    if fd is not None:
        os.close(fd)


def _drain(fd, room):
    """What the child wrote and we have not read yet (it has exited; a
    grandchild may hold the pipe open, so never wait for EOF)."""
    data = b""
    try:
        while len(data) < room:
            more = os.read(fd, _CHUNK)
            if not more:
                break
            data += more
    except BlockingIOError:
        pass
    return data[:max(0, room)]


def _unread(fd):
    """True when bytes are still in the stdin pipe: the child did not read
    the whole message.  Our write end is closed, so an empty pipe reads as
    EOF; a one-byte read needs neither fcntl nor termios."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1) != b""
    except BlockingIOError:     # a write end survives in a grandchild
        return False


def _sigchld_default():
    """An inherited SIGCHLD = SIG_IGN makes the kernel reap children itself
    and waitpid() fail; set the default while we run (True: restore)."""
    try:
        if _signal.getsignal(_signal.SIGCHLD) == _signal.SIG_IGN:
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            return True
    except ValueError:          # not the main thread: leave it alone
        pass
    return False
