"""Shared bench helpers: a user-style install, sinks, and timed runs."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
FROM_LINE = b"From alice@example.org Sun Nov 22 02:44:03 2026\n"


def workdir():
    path = Path(tempfile.mkdtemp(prefix="mmh-bench-"))
    path.chmod(0o755)
    return path


def install(where, python=SYSTEM_PYTHON):
    """pip-install mm-handler into a fresh venv with this machine's own pip."""
    venv = where / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    wheels = ROOT / "wheelhouse"
    # chardet for another interpreter may come from the package index
    source = (["--find-links", str(wheels), "mm-handler"]
              if list(wheels.glob("mm_handler-*.whl")) else [str(ROOT)])
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                    "--disable-pip-version-check"] + source, check=True)
    return venv / "bin" / "mm-handler"


def install_revision(where, rev, python=SYSTEM_PYTHON):
    """mm-handler as it was at git revision `rev`, installed the same way
    (its own venv), so that a bench compares before and after in one run."""
    src = where / ("src-" + rev)
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    wheels = where / ("wheels-" + rev)
    subprocess.run([str(ROOT / ".venv" / "bin" / "pip"), "wheel", "-q",
                    "--disable-pip-version-check", "--no-build-isolation",
                    "--no-deps", "-w", str(wheels), str(src)], check=True,
                   cwd=str(src))
    venv = where / ("venv-" + rev)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    [wheel] = wheels.glob("mm_handler-*.whl")     # that revision's, by path
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                    "--disable-pip-version-check", "--find-links",
                    str(ROOT / "wheelhouse"), "chardet", str(wheel)], check=True)
    return venv / "bin" / "mm-handler"


def wrapper_sink(where):
    """A wrapper stand-in that reads and discards stdin (C if cc exists)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    path = where / "sink"
    if cc:
        src = where / "sink.c"
        src.write_text("#include <unistd.h>\nint main(void){char b[65536];"
                       "while(read(0,b,sizeof b)>0);return 0;}\n")
        subprocess.run([cc, "-O2", "-o", str(path), str(src)], check=True)
    else:
        path.write_text("#!/bin/sh\nexec cat >/dev/null\n")
        path.chmod(0o755)
    return path


class LMTPSink:
    """A minimal LMTP server on 127.0.0.1 that accepts and discards mail."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.delivered = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        f = conn.makefile("rb")
        conn.sendall(b"220 sink LMTP\r\n")
        rcpts = 0
        try:
            for line in f:
                verb = line[:4].upper()
                if verb == b"LHLO":
                    conn.sendall(b"250-sink\r\n250-8BITMIME\r\n250 SIZE 0\r\n")
                elif verb == b"RCPT":
                    rcpts += 1
                    conn.sendall(b"250 ok\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go\r\n")
                    tail = b""
                    while True:
                        chunk = f.read1(1 << 20)
                        if not chunk:
                            return
                        tail = (tail + chunk)[-5:]
                        if tail == b"\r\n.\r\n":
                            break
                    conn.sendall(b"250 ok\r\n" * rcpts)
                    self.delivered += rcpts
                    rcpts = 0
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def write_config(where, name, text):
    path = where / name
    path.write_text(text)
    return path


def setup(python=SYSTEM_PYTHON):
    """A user-style install, a wrapper sink with list "bench", an LMTP sink,
    and one config per backend: (workdir, handler, mm2.cfg, mm3.cfg, sink)."""
    where = workdir()
    handler = str(install(where, python))
    sink = wrapper_sink(where)
    (where / "lists" / "bench").mkdir(parents=True)
    (where / "lists" / "bench" / "config.pck").write_bytes(b"")
    lmtp = LMTPSink()
    mm2 = write_config(where, "mm2.cfg", "[mm-handler]\nbackend = mailman2\n"
                       "syslog_socket = %s/nolog\n[mailman2]\nwrapper = %s\n"
                       "lists_dir = %s/lists\n" % (where, sink, where))
    mm3 = write_config(where, "mm3.cfg", "[mm-handler]\nbackend = mailman3\n"
                       "syslog_socket = %s/nolog\n[mailman3]\nlmtp = 127.0.0.1:%d\n"
                       % (where, lmtp.port))
    return where, handler, mm2, mm3, lmtp


def spawn_timed(argv, stdin_path=None, stdin_bytes_gen=None):
    """Run argv like Sendmail (empty env, cwd /); (seconds, status, maxrss KiB)."""
    if stdin_path is not None:
        fd = os.open(stdin_path, os.O_RDONLY)
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, {}, file_actions=[
            (os.POSIX_SPAWN_DUP2, fd, 0)])
        os.close(fd)
    else:
        r, w = os.pipe()
        start = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, {}, file_actions=[
            (os.POSIX_SPAWN_DUP2, r, 0)])
        os.close(r)
        with os.fdopen(w, "wb") as out:
            for data in stdin_bytes_gen:
                out.write(data)
    _, status, usage = os.wait4(pid, 0)
    return time.perf_counter() - start, os.waitstatus_to_exitcode(status), usage.ru_maxrss


def message_10k(path):
    body = (b"x" * 70 + b"\n") * 140
    path.write_bytes(FROM_LINE + b"From: a@example.org\nSubject: bench\n"
                     b"Message-ID: <bench@example.org>\n\n" + body)
    return path


def python_version_line():
    return "%s (%s)" % (SYSTEM_PYTHON, sys.version.split()[0])
