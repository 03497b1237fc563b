"""Run one program, stream its stdin, collect its output: one deadline.

``run(program, argv, environ, chunks, timeout)`` starts PROGRAM with a
fixed argv (no shell, no PATH search), writes every bytes object from
`chunks` to its stdin, keeps the first `limit` bytes of its stdout and
stderr (one pipe) and waits for its exit.  Spawn, every write, every read
and the wait share one deadline; past it the child is killed.

Nothing partial is ever handed over: whenever run() does not finish
normally (the deadline, an exception from `chunks`, an exception raised by
a signal handler, anything) the child's process group is killed with
SIGKILL and the child reaped BEFORE our end of its stdin is closed, so it
never reads a clean end of file after part of the message.  Then the
exception goes on.

Portability: os.posix_spawn (fork + exec when it is missing, or for `cwd`,
which posix_spawn cannot set); a pidfd wakes the wait at the exit where
os.pidfd_open works (Linux 5.3+), elsewhere the end of file on the output
pipe does, and a sleep of at most 50 ms covers a child whose output stays
open in a grandchild; select.poll, or select.select where poll is missing
or on macOS.  Only modules that the delivery path imports anyway.

Finished (a types.SimpleNamespace) has
    status     the waitpid() status, or None: killed at the deadline
    wrote_all  every byte of `chunks` written and stdin closed by us
    unread     bytes were left in the stdin pipe after the exit (we keep a
               read end and try a one-byte read once the child is gone)
    output     the first `limit` bytes (default OUTPUT_LIMIT) of its stdout
               and stderr; what arrives later is read and dropped, so a
               chatty child never blocks; at the exit only what is already
               in the pipe is read (a grandchild may hold it open)
    pid        the child's process id (reaped)
SpawnError (an OSError with errno, strerror and filename) is raised only
when the program cannot be started (nothing was taken from `chunks`).

The code lives in mm_handler/wrapper.py: the Mailman 2 delivery path
imports that one module rather than two (an import costs ~60 us on every
message, bench/startup.py).  Only the fork + exec fallback is here.
"""

import _signal
import os

# the code is in wrapper.py, which the Mailman 2 path imports anyway
from .wrapper import OUTPUT_LIMIT, Finished, SpawnError, run  # noqa: F401
from .wrapper import _pipe

__all__ = ["OUTPUT_LIMIT", "Finished", "SpawnError", "run"]


def fork_exec(program, argv, environ, cwd, stdin_r, out_w, sigmask):
    """fork + exec; an exec failure comes back as an errno on a pipe."""
    err_r, err_w = _pipe()
    try:
        pid = os.fork()
        if pid == 0:                                # the child
            try:
                os.setpgid(0, 0)
                os.dup2(stdin_r, 0)
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
                if cwd is not None:
                    os.chdir(cwd)
                _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
                if sigmask is not None:
                    _signal.pthread_sigmask(_signal.SIG_SETMASK, sigmask)
                os.execve(program, argv, environ)
            except BaseException as exc:            # noqa: BLE001
                try:
                    os.write(err_w, b"%d" % (getattr(exc, "errno", 0) or 0))
                finally:
                    os._exit(127)
            os._exit(127)
        os.close(err_w)
        err_w = -1
        said = b""
        while True:                                 # EOF at exec or exit
            data = os.read(err_r, 64)
            if not data:
                break
            said += data
        if said:
            os.waitpid(pid, 0)
            errno = int(said) if said.isdigit() else 0
            raise OSError(errno, os.strerror(errno) if errno else "exec failed")
        return pid
    finally:
        os.close(err_r)
        if err_w >= 0:
            os.close(err_w)
