"""A scripted LMTP server on 127.0.0.1, for fault injection only.

Real-peer behaviour is tested against a real Mailman 3 LMTP runner
(tests/peers/mailman3.py); this server exists to produce the replies and
failures a healthy Mailman never gives on demand: a 421 greeting, silence,
a reset in the middle of DATA, no reply after the final dot...

    with ScriptedLMTP({"rcpt": "452 4.2.2 mailbox full"}) as server:
        ... mm-handler with lmtp = server.endpoint ...
        server.sessions[0].commands      # every command line received
        server.sessions[0].message       # the DATA payload, dot-unstuffed
        server.delivered()               # messages answered 2xx after the dot

The script maps a stage to what the server does there.  Stages:
``greeting``, ``lhlo``, ``mail``, ``rcpt``, ``data`` (the reply to the DATA
command), ``dot`` (the replies after the final dot, one per accepted
recipient).  A value is a reply (``"250 ok"``; a multi-line reply is given
with its lines separated by ``\\n``), a list of them (``rcpt``: one per
RCPT command in turn; ``dot``: one per accepted recipient), or one of the
actions:

    SILENCE   say nothing, keep the connection open (the client times out)
    CLOSE     close the connection cleanly (FIN)
    RESET     abort the connection (RST)
    NOTHING   say nothing and carry on (``dot``: Mailman 3's one reply for
              the whole transaction is ``["501 ...", NOTHING]``)
    Raw(b"...", then=CLOSE)     these exact bytes in one write, then maybe
                                an action (``"354 go\r\n250 early\r\n"``)
    Trickle("220 ...", 0.8)     the reply one byte at a time, 0.8 s apart
    Delay(0.7, "250 ok")        the reply after 0.7 s

``reset_after_data_bytes: N`` aborts the connection (RST) once N bytes of
the DATA payload have arrived: a reset in the middle of DATA.
``during_data: (N, what)`` does `what` (a reply or an action) once N bytes
of the DATA payload have arrived, then keeps reading: a reply when none is
due.
"""

import socket
import struct
import threading
import time

SILENCE = "<silence>"
CLOSE = "<close>"
RESET = "<reset>"
NOTHING = "<nothing>"
ACTIONS = (SILENCE, CLOSE, RESET, NOTHING)


class Raw:
    """Send `data` (bytes, line ends included) in one write, then `then`."""

    def __init__(self, data, then=None):
        self.data = data
        self.then = then

    def __str__(self):
        return self.data.decode("utf-8", "replace")


class Trickle:
    """Send the reply one byte at a time, `interval` seconds apart."""

    def __init__(self, reply, interval):
        self.reply = reply
        self.interval = interval

    def __str__(self):
        return self.reply


class Delay:
    """Send the reply after `seconds`."""

    def __init__(self, seconds, reply):
        self.seconds = seconds
        self.reply = reply

    def __str__(self):
        return str(self.reply)

DEFAULT_SCRIPT = {
    "greeting": "220 scripted.test GNU Mailman LMTP runner 2.0 (scripted)",
    "lhlo": "250-scripted.test\n250-SIZE 33554432\n250 8BITMIME",
    "mail": "250 2.1.0 Ok",
    "rcpt": "250 2.1.5 Ok",
    "data": "354 End data with <CR><LF>.<CR><LF>",
    "dot": "250 2.0.0 Ok",
}


class Session:
    """What one client connection sent."""

    def __init__(self, peer):
        self.peer = peer
        self.commands = []          # command lines as bytes, CRLF removed
        self.raw_data = b""         # the DATA payload as received (stuffed)
        self.data_complete = False  # the final dot arrived
        self.rcpts = []             # RCPT TO addresses that were accepted
        self.dot_replies = []       # what we answered after the final dot
        self.said_during_data = False   # `during_data` was acted on
        self.closed_by = None       # "client", "server", "reset", "stop"

    @property
    def message(self):
        """The DATA payload with dot-stuffing undone (CRLFs kept)."""
        lines = self.raw_data.split(b"\r\n")
        return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)

    def command_names(self):
        return [c.split(b" ", 1)[0].split(b":", 1)[0].upper().decode("ascii", "replace")
                for c in self.commands]


class _Abort(Exception):
    pass


class ScriptedLMTP:
    def __init__(self, script=None, host="127.0.0.1"):
        self.script = dict(DEFAULT_SCRIPT)
        self.script.update(script or {})
        self.sessions = []
        self.errors = []
        self._stop = threading.Event()
        self._threads = []
        self._lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.host, self.port = self.sock.getsockname()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def endpoint(self):
        """The value for the ``[mailman3] lmtp`` setting."""
        return "%s:%d" % (self.host, self.port)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._stop.set()
        self._acceptor.join(5)
        for t in list(self._threads):
            t.join(5)
        self.sock.close()

    def delivered(self):
        """[(rcpts, message)] for every session whose DATA got a 2xx reply."""
        out = []
        for s in self.sessions:
            ok = [r for r, reply in zip(s.rcpts, s.dot_replies)
                  if reply.startswith("2")]
            if s.data_complete and ok:
                out.append((ok, s.message))
        return out

    def wait_idle(self, timeout=5.0):
        """Wait until every connection so far has been closed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.closed_by for s in self.sessions):
                return True
            time.sleep(0.001)
        return False

    # --- the server ---------------------------------------------------------

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            session = Session(peer)
            with self._lock:
                self.sessions.append(session)
            t = threading.Thread(target=self._serve, args=(conn, session),
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn, session):
        conn.settimeout(0.05)
        reader = _Reader(conn, self._stop)
        try:
            self._act(conn, session, self.script["greeting"])
            rcpt_count = 0
            while True:
                line = reader.line()
                if line is None:
                    session.closed_by = session.closed_by or "client"
                    return
                session.commands.append(line)
                verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
                if verb == b"LHLO":
                    self._act(conn, session, self.script["lhlo"])
                elif verb == b"MAIL":
                    self._act(conn, session, self.script["mail"])
                elif verb == b"RCPT":
                    addr = line.partition(b":")[2].strip().decode(
                        "utf-8", "replace")
                    reply = self._pick("rcpt", rcpt_count, addr)
                    rcpt_count += 1
                    if str(reply)[:1] == "2":
                        session.rcpts.append(addr)
                    self._act(conn, session, reply)
                elif verb == b"DATA":
                    reply = self.script["data"]
                    self._act(conn, session, reply)
                    if not str(reply).startswith("354"):
                        continue
                    self._read_data(conn, session, reader)
                    for n in range(len(session.rcpts)):
                        reply = self._pick("dot", n)
                        if str(reply) not in ACTIONS:
                            session.dot_replies.append(str(reply))
                        self._act(conn, session, reply)
                elif verb == b"QUIT":
                    self._send(conn, "221 2.0.0 Bye")
                    session.closed_by = "client"
                    return
                elif verb in (b"RSET", b"NOOP"):
                    self._send(conn, "250 2.0.0 Ok")
                else:
                    self._send(conn, "500 5.5.2 Error: command not recognized")
        except _Abort:
            pass
        except Exception as exc:   # keep the test's view of server errors
            self.errors.append(repr(exc))
            session.closed_by = session.closed_by or "error"
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _pick(self, stage, n, arg=None):
        value = self.script[stage]
        if callable(value):
            return value(arg)
        if isinstance(value, (list, tuple)):
            return value[min(n, len(value) - 1)]
        return value

    def _read_data(self, conn, session, reader):
        limit = self.script.get("reset_after_data_bytes")
        during = self.script.get("during_data")
        while True:
            line = reader.raw_line()
            if line is None:
                session.closed_by = session.closed_by or "client"
                raise _Abort()
            if line == b".\r\n":
                session.data_complete = True
                return
            session.raw_data += line
            if limit is not None and len(session.raw_data) >= limit:
                self._reset(conn, session)
            if during is not None and len(session.raw_data) >= during[0]:
                what, during = during[1], None
                session.said_during_data = True
                self._act(conn, session, what)

    def _act(self, conn, session, what):
        if isinstance(what, Raw):
            conn.sendall(what.data)
            if what.then is not None:
                self._act(conn, session, what.then)
            return
        if isinstance(what, Delay):
            if self._stop.wait(what.seconds):
                raise _Abort()
            return self._act(conn, session, what.reply)
        if isinstance(what, Trickle):
            for byte in what.reply.replace("\n", "\r\n").encode("utf-8") + b"\r\n":
                if self._stop.wait(what.interval):
                    raise _Abort()
                try:
                    conn.sendall(bytes([byte]))
                except OSError:     # the client gave up
                    session.closed_by = session.closed_by or "client"
                    raise _Abort()
            return
        if what == NOTHING:
            return
        if what == SILENCE:
            # say nothing; hold the connection until the client gives up
            while not self._stop.is_set():
                try:
                    if not conn.recv(65536):
                        break
                except socket.timeout:
                    continue
                except OSError:
                    break
            session.closed_by = session.closed_by or "client"
            raise _Abort()
        if what == CLOSE:
            session.closed_by = "server"
            conn.shutdown(socket.SHUT_RDWR)
            raise _Abort()
        if what == RESET:
            self._reset(conn, session)
        self._send(conn, what)
        if what.startswith("421"):
            session.closed_by = "server"
            raise _Abort()

    @staticmethod
    def _send(conn, reply):
        conn.sendall(reply.replace("\n", "\r\n").encode("utf-8") + b"\r\n")

    @staticmethod
    def _reset(conn, session):
        session.closed_by = "reset"
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
        conn.close()
        raise _Abort()


class _Reader:
    """CRLF lines from a socket that checks a stop flag between reads."""

    MAX_LINE = 1 << 22

    def __init__(self, conn, stop):
        self.conn = conn
        self.stop = stop
        self.buf = b""

    def raw_line(self):
        """One line with its line end, or None at EOF."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[:end + 1], self.buf[end + 1:]
                return line
            if len(self.buf) > self.MAX_LINE:
                line, self.buf = self.buf, b""
                return line
            if self.stop.is_set():
                raise _Abort()
            try:
                data = self.conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return None
            if not data:
                return None
            self.buf += data

    def line(self):
        line = self.raw_line()
        if line is None:
            return None
        return line.rstrip(b"\r\n")


def refused_endpoint():
    """(holder socket, "127.0.0.1:PORT") where connections are refused.

    The port is bound but not listening, so nothing else can take it while
    the holder lives and every connect() gets ECONNREFUSED.  It lies below
    the ephemeral range (32768+), so a connect() can never be given it as
    its own source port and connect to itself.
    """
    import random
    for _ in range(200):
        port = random.randrange(20000, 32000)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        return s, "127.0.0.1:%d" % port
    raise RuntimeError("no free port below 32768")
