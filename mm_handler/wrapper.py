"""Delivery to Mailman 2: run ``WRAPPER ACTION LIST`` and stream the message.

No shell: os.posix_spawn with a fixed argv.  The wrapper's exit codes are
not sysexits (2 group mismatch ... 8 group not found); every failure is a
site fault, so the mail stays queued (75) and the wrapper's own words are
passed on.  Success needs exit 0 AND the whole message read: we keep a
read end of the pipe so that unread bytes can be detected after the exit.
"""

import _signal
import os
import select
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
    8: "the wrapper's mail group name was not found",
}
STDERR_KEEP = 2048


def describe_status(status):
    """A waitpid() status in words."""
    if os.WIFSIGNALED(status):
        return "killed by signal %d" % os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    return "exit %d: %s" % (code, WRAPPER_EXIT.get(code, "unexpected status"))


def deliver(wrapper, action, listname, chunks, timeout, environ):
    """Run the wrapper once for one list; returns an Outcome."""
    argv = [wrapper, action, listname]
    stdin_r, stdin_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawn(
            wrapper, argv, environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, stdin_r, 0),
                          (os.POSIX_SPAWN_DUP2, err_w, 1),
                          (os.POSIX_SPAWN_DUP2, err_w, 2)],
            setsigdef=(_signal.SIGPIPE,))
    except OSError as exc:
        for fd in (stdin_r, stdin_w, err_r, err_w):
            os.close(fd)
        return Outcome(EX_TEMPFAIL, "cannot run wrapper %s: %s"
                       % (wrapper, exc.strerror or exc))
    os.close(err_w)
    try:
        status, wrote_all, errors = _feed(pid, stdin_w, err_r, chunks, timeout)
        unread = _unread(stdin_r)
    finally:
        os.close(stdin_r)
        os.close(err_r)
    said = errors.decode("utf-8", "replace").strip()
    if status is None:
        return Outcome(EX_TEMPFAIL, "wrapper did not finish within %g s and "
                       "was killed" % timeout, said)
    if status == 0 and wrote_all and not unread:
        return Outcome(EX_OK, "accepted by the Mailman 2 wrapper", said)
    if status == 0:
        reason = "wrapper exited 0 without reading the whole message"
    else:
        reason = "wrapper " + describe_status(status)
    return Outcome(EX_TEMPFAIL, reason, said)


def _feed(pid, stdin_w, err_r, chunks, timeout):
    """Write the message, collect output, wait for the exit.

    Returns (wait status or None on timeout, whether every byte was
    written, the wrapper's first STDERR_KEEP bytes of output).  Closes
    stdin_w.  A pidfd wakes the loop at the exit; without one (old kernel)
    the loop polls every 50 ms.
    """
    deadline = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    os.set_blocking(stdin_w, False)
    poller = select.poll()
    poller.register(stdin_w, select.POLLOUT)
    poller.register(err_r, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    source = iter(chunks)
    pending = memoryview(b"")
    writing = True
    errors = b""
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status, not writing, errors + _drain(err_r, errors)
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return None, not writing, errors
            wait_ms = min(int(left * 1000) + 1, 50 if pidfd is None else 2 ** 30)
            for fd, _ in poller.poll(wait_ms):
                if fd == stdin_w and writing:
                    while not pending:
                        data = next(source, None)
                        if data is None:
                            break
                        pending = memoryview(data)
                    if pending:
                        try:
                            pending = pending[os.write(stdin_w, pending):]
                        except BlockingIOError:
                            pass
                    else:
                        writing = False
                        poller.unregister(stdin_w)
                        os.close(stdin_w)
                elif fd == err_r:
                    data = os.read(err_r, 4096)
                    if data:
                        errors = (errors + data)[:STDERR_KEEP]
                    else:
                        poller.unregister(err_r)
    finally:
        if pidfd is not None:
            os.close(pidfd)
        if writing:
            os.close(stdin_w)


def _drain(fd, already):
    """What the wrapper wrote and we have not read yet (it has exited)."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(already) + len(data) < STDERR_KEEP:
            more = os.read(fd, 4096)
            if not more:
                break
            data += more
    except BlockingIOError:
        pass
    return data[:max(0, STDERR_KEEP - len(already))]


def _unread(fd):
    """True when bytes are still in the pipe: the wrapper did not read the
    whole message.  Our write end is closed, so an empty pipe reads as EOF;
    a one-byte read needs neither fcntl nor termios on the hot path."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1) != b""
    except BlockingIOError:     # a write end survives in a wrapper's child
        return False
