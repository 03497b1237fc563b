"""Fault injection inside the mm-handler process (tests/test_injection.py).

The test runs the installed command's own interpreter as

    VENV/bin/python3 -c RUNNER ARG...      (env: MMH_INJECT, MMH_INJECT_REPORT)

where RUNNER imports this module and calls ``run_script(SCRIPT)``:
``install()`` wraps the system calls below, both MMH_* variables are
removed from the environment (the handler, and every program it starts,
sees the empty environment Sendmail gives it), ``mm_handler.cli`` is
imported and its ``main`` wrapped, then SCRIPT (``VENV/bin/mm-handler``)
runs as ``__main__`` with ``sys.argv[0]`` and ``sys.path[0]`` as a script
run gets them.

Kinds of call, counted only once main() has started (interpreter start-up
and the package import are not counted):

    read     os.read  (file objects too, see below)         -> EIO
    write    os.write (file objects too)                    -> ENOSPC
    open     os.open  (open()/io.open() too)                -> EIO
    spawn    os.posix_spawn[p], os.fork, _posixsubprocess.fork_exec
             (what subprocess.Popen forks with)             -> EAGAIN
    connect  _socket.socket.connect/connect_ex              -> ECONNREFUSED
    recv     _socket.socket.recv/recv_into/recvfrom         -> ECONNRESET
    send     _socket.socket.send/sendall/sendto             -> ECONNRESET

``MMH_INJECT=KIND:K`` makes the K-th call of KIND raise that OSError
instead of making the call; empty: count only.  Files opened with
``open()``/``io.open()`` (the configuration, the template, subprocess's
pipes) are opened with ``_pyio.open``, the pure-Python reference
implementation of the same API, whose raw file calls os.open/os.read/
os.write: a buffered write that reaches write(2) is then a "write" like
any other, which a C-level file object would hide.  ``_socket.socket`` is
replaced by a subclass, as the package creates its sockets with
``_socket.socket(...)``.

The report, JSON in MMH_INJECT_REPORT, is written when the process ends
(os._exit, which the command uses, or a normal exit):

    {"target": [KIND, K] or null, "fired": bool, "fired_at": "site",
     "fired_stack": [...], "counts": {KIND: N}, "sites": {KIND: [site...]},
     "children": [pid...]}

A site is "innermost file:line" plus " <- module.py:line function" for the
nearest frame in the mm_handler package.
"""

import atexit
import builtins
import errno
import io
import json
import os
import sys

KINDS = ("read", "write", "open", "spawn", "connect", "recv", "send")
ERRNO = {"read": errno.EIO, "write": errno.ENOSPC, "open": errno.EIO,
         "spawn": errno.EAGAIN, "connect": errno.ECONNREFUSED,
         "recv": errno.ECONNRESET, "send": errno.ECONNRESET}

_real = {}
_state = {
    "active": False, "target": None, "fired": False, "fired_at": None,
    "fired_stack": None, "counts": {k: 0 for k in KINDS},
    "sites": {k: [] for k in KINDS}, "children": [], "report": None,
    "pid": None, "written": False,
}
MAX_SITES = 400


def _frames():
    here = __file__
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename == here:
        f = f.f_back
    return f


def _where(f):
    return "%s:%d" % (f.f_code.co_filename.rsplit("/", 1)[-1], f.f_lineno)


def _site():
    f = _frames()
    if f is None:
        return "?"
    site = _where(f)
    g = f
    while g is not None and "/mm_handler/" not in g.f_code.co_filename:
        g = g.f_back
    if g is not None and g is not f:
        site += " <- %s %s" % (_where(g), g.f_code.co_name)
    elif g is f:
        site += " " + f.f_code.co_name
    return site


def _stack():
    out = []
    f = _frames()
    while f is not None:
        if "/mm_handler/" in f.f_code.co_filename:
            out.append("%s %s" % (_where(f), f.f_code.co_name))
        f = f.f_back
    return out


def _count(kind, filename=None):
    """Count one call of `kind`; raise the kind's OSError on the target call."""
    if not _state["active"] or os.getpid() != _state["pid"]:
        return
    _state["counts"][kind] += 1
    n = _state["counts"][kind]
    sites = _state["sites"][kind]
    if len(sites) < MAX_SITES:
        sites.append(_site())
    if _state["target"] == (kind, n):
        _state["fired"] = True
        _state["fired_at"] = sites[-1] if len(sites) >= n else _site()
        _state["fired_stack"] = _stack()
        code = ERRNO[kind]
        if filename is not None:
            raise OSError(code, os.strerror(code), filename)
        raise OSError(code, os.strerror(code))


# -- wrappers -------------------------------------------------------------------

def _read(fd, n):
    _count("read")
    return _real["read"](fd, n)


def _write(fd, data):
    _count("write")
    return _real["write"](fd, data)


def _open(path, flags, mode=0o777, *, dir_fd=None):
    _count("open", path)
    return _real["open"](path, flags, mode, dir_fd=dir_fd)


def _spawner(name):
    real = _real[name]

    def spawn(*args, **kwargs):
        _count("spawn")
        pid = real(*args, **kwargs)
        if pid and os.getpid() == _state["pid"]:
            _state["children"].append(pid)
        return pid
    spawn.__name__ = name
    return spawn


def _fork_exec(*args, **kwargs):
    _count("spawn")
    pid = _real["fork_exec"](*args, **kwargs)
    if pid:
        _state["children"].append(pid)
    return pid


def _exit(code):
    write_report()
    _real["_exit"](code)


def _make_socket_class(base):
    class CountingSocket(base):
        """_socket.socket whose connect/recv/send calls are counted."""
        __slots__ = ()

        def connect(self, address):
            _count("connect")
            return base.connect(self, address)

        def connect_ex(self, address):
            _count("connect")
            return base.connect_ex(self, address)

        def recv(self, *args):
            _count("recv")
            return base.recv(self, *args)

        def recv_into(self, *args, **kwargs):
            _count("recv")
            return base.recv_into(self, *args, **kwargs)

        def recvfrom(self, *args):
            _count("recv")
            return base.recvfrom(self, *args)

        def send(self, *args):
            _count("send")
            return base.send(self, *args)

        def sendall(self, *args):
            _count("send")
            return base.sendall(self, *args)

        def sendto(self, *args):
            _count("send")
            return base.sendto(self, *args)

    CountingSocket.__name__ = CountingSocket.__qualname__ = "socket"
    return CountingSocket


# -- set-up and report ----------------------------------------------------------

def install(target=None, report=None):
    """Wrap the calls; target is "KIND:K" or empty (count only)."""
    if _real:
        return
    import _posixsubprocess
    import _pyio
    import _socket
    _state["pid"] = os.getpid()
    _state["report"] = report
    if target:
        kind, _, k = target.partition(":")
        assert kind in KINDS, target
        _state["target"] = (kind, int(k))
    for name in ("read", "write", "open", "_exit"):
        _real[name] = getattr(os, name)
    os.read, os.write, os.open, os._exit = _read, _write, _open, _exit
    for name in ("posix_spawn", "posix_spawnp", "fork"):
        if hasattr(os, name):
            _real[name] = getattr(os, name)
            setattr(os, name, _spawner(name))
    _real["fork_exec"] = _posixsubprocess.fork_exec
    _posixsubprocess.fork_exec = _fork_exec
    if "subprocess" in sys.modules:     # it keeps its own reference
        sys.modules["subprocess"]._fork_exec = _fork_exec
    _real["io.open"] = io.open
    io.open = builtins.open = _pyio.open
    _real["socket"] = _socket.socket
    _socket.socket = _make_socket_class(_socket.socket)
    atexit.register(write_report)


def write_report():
    """Write the report once, from the process that installed (not a child)."""
    if _state["written"] or os.getpid() != _state["pid"] or not _state["report"]:
        return
    _state["written"] = True
    _state["active"] = False
    data = json.dumps({
        "target": list(_state["target"]) if _state["target"] else None,
        "fired": _state["fired"], "fired_at": _state["fired_at"],
        "fired_stack": _state["fired_stack"], "counts": _state["counts"],
        "sites": _state["sites"], "children": _state["children"],
    }).encode()
    path = _state["report"]
    fd = _real["open"](path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[_real["write"](fd, view):]
    finally:
        os.close(fd)
    os.rename(path + ".tmp", path)


def _start_counting(main):
    def counted_main(*args, **kwargs):
        _state["active"] = True
        return main(*args, **kwargs)
    counted_main.__name__ = main.__name__
    counted_main.__doc__ = main.__doc__
    return counted_main


def run_script(script):
    """Install from the environment, then run SCRIPT as __main__."""
    target = os.environ.pop("MMH_INJECT", "")
    report = os.environ.pop("MMH_INJECT_REPORT", "")
    install(target, report)
    sys.argv[0] = script
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        import mm_handler.cli as cli
    except BaseException:   # noqa: BLE001 - the script reports a broken install
        cli = None
    if cli is not None:
        cli.main = _start_counting(cli.main)
    with open(script, "rb") as f:    # not counted: counting has not started
        code = compile(f.read(), script, "exec")
    main = sys.modules["__main__"]
    main.__dict__.update({"__file__": script, "__name__": "__main__",
                          "__builtins__": builtins})
    exec(code, main.__dict__)
