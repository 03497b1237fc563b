"""Delivery to Mailman 3 over LMTP (RFC 2033).

One transaction for all recipients: LHLO, MAIL, one RCPT each, DATA
streamed with CRLF line ends and dot-stuffing, then one reply per accepted
recipient.  Every reply is turned into an exit code by status.exit_for_reply;
a refused, reset, silent or garbled exchange leaves the mail queued (75).
The next configured server is tried only while no RCPT has been sent, so
a message can never be handed to two of them.

Built on the C-level _socket module: ``import socket`` (and the idna codec
that a str host name pulls in) costs every message more than the whole
delivery (see bench/startup.py).
"""

import _socket
import os

from .status import EX_OK, EX_TEMPFAIL, Outcome, exit_for_reply

CRLF = b"\r\n"
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100
LINE_LIMIT = 998        # RFC 5322; with a stuffed dot 999, under Mailman's 1000
# Replies after the final dot that Mailman 3.3 (aiosmtpd) sends ONCE for the
# whole transaction, however many recipients: 501 "Message has defects",
# 500 "Line too long" (a line of 1000 bytes or more before its CRLF) and
# 552 "Too much mail data" (over 32 MiB).
MESSAGE_WIDE = (500, 501, 552)


class ExchangeError(Exception):
    """The conversation broke: no usable reply (refused, reset, timeout...)."""


class Reply:
    __slots__ = ("code", "text")

    def __init__(self, code, text):
        self.code = code
        self.text = text

    def __str__(self):
        return "%d %s" % (self.code, self.text)


def describe_endpoint(endpoint):
    family, address = endpoint
    if family == "unix":
        return "unix:" + address
    host, port = address
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


class Connection:
    """A line-oriented LMTP client connection with a per-operation timeout."""

    def __init__(self, endpoint, timeout):
        self.name = describe_endpoint(endpoint)
        self.buf = b""
        family, address = endpoint
        try:
            if family == "unix":
                self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(address)
            else:
                self.sock = self._connect_inet(address, timeout)
                # commands and the final dot are small writes: without this,
                # Nagle + delayed ACK cost ~40 ms a message
                self.sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise ExchangeError("cannot connect to %s: %s"
                                % (self.name, _why(exc))) from None

    @staticmethod
    def _connect_inet(address, timeout):
        host, port = address
        # a bytes host keeps getaddrinfo from loading the idna codec
        infos = _socket.getaddrinfo(host.encode("ascii"), port, 0,
                                    _socket.SOCK_STREAM)
        error = OSError("no address for %s" % host)
        for family, kind, proto, _, sockaddr in infos:
            sock = _socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ExchangeError("%s: sending failed: %s"
                                % (self.name, _why(exc))) from None

    def command(self, line):
        self.send(line.encode("ascii") + CRLF)
        return self.reply()

    def reply(self):
        """Read one (possibly multi-line) reply; ExchangeError if garbled."""
        lines = []
        while True:
            line = self._line()
            code, sep, text = line[:3], line[3:4], line[4:]
            if not code.isdigit() or sep not in ("-", " ", "") \
                    or (lines and code != lines[0][0]):
                raise ExchangeError("%s: garbled reply %r"
                                    % (self.name, line[:80]))
            lines.append((code, text))
            if sep != "-":
                return Reply(int(code), " ".join(t for _, t in lines).strip())
            if len(lines) > MAX_REPLY_LINES:
                raise ExchangeError("%s: endless multi-line reply" % self.name)

    def _line(self):
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 1:]
                return line.rstrip(b"\r").decode("utf-8", "replace")
            if len(self.buf) > MAX_REPLY_LINE:
                raise ExchangeError("%s: reply line too long" % self.name)
            try:
                data = self.sock.recv(8192)
            except OSError as exc:
                raise ExchangeError("%s: no reply: %s"
                                    % (self.name, _why(exc))) from None
            if not data:
                raise ExchangeError("%s: connection closed without a reply"
                                    % self.name)
            self.buf += data

    def close(self):
        try:
            self.sock.send(b"QUIT" + CRLF)
        except OSError:
            pass
        self.sock.close()


def _why(exc):
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def folded(lines):
    """Lines (without CRLF), each over LINE_LIMIT bytes broken as Sendmail's
    L= limit breaks it: LINE_LIMIT-1 bytes and a "!", then the rest.

    Mailman 3's LMTP server refuses a message with a line of 1000 bytes or
    more ("500 Line too long"); Sendmail's own LMTP mailer folds such lines
    and delivers, and so do we.
    """
    for line in lines:
        while len(line) > LINE_LIMIT:
            yield line[:LINE_LIMIT - 1] + b"!"
            line = line[LINE_LIMIT - 1:]
        yield line


def data_stream(header, chunks):
    """The DATA payload: header line, message with CRLF and dot-stuffing, end.

    Lone LFs become CRLF, existing CRLFs stay, bare CRs pass unchanged;
    a CR at a chunk's end waits for the next chunk so that a split CRLF is
    recognised.  The unterminated last line of each chunk waits too (at
    most LINE_LIMIT bytes of it), so that every piece sent ends a line and
    long lines fold the same wherever the chunks fall.  An unterminated
    last line gets its CRLF (DATA cannot express a message without one).
    """
    if header:
        yield header + CRLF
    held = pending = b""
    for chunk in chunks:
        data = held + chunk
        held = b""
        if data.endswith(b"\r"):
            data, held = data[:-1], b"\r"
        lines = (pending + data.replace(b"\r\n", b"\n").replace(b"\n", CRLF)).split(CRLF)
        pending = lines.pop()
        if len(pending) > LINE_LIMIT:
            *more, pending = folded([pending])
            lines += more
        if lines:
            yield _stuffed(lines)
    last = pending + held
    if last:
        yield _stuffed([last])
    yield b"." + CRLF


def _stuffed(lines):
    """Complete lines joined with CRLF, long ones folded, dots stuffed."""
    if any(len(line) > LINE_LIMIT for line in lines):
        lines = folded(lines)
    data = CRLF.join(lines) + CRLF
    if data[:1] == b".":
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def _session_start(conn, sender, lhlo_name):
    """Greeting, LHLO, MAIL; returns None or (stage, Reply) of a failure."""
    reply = conn.reply()
    if reply.code != 220:
        return "greeting", reply
    reply = conn.command("LHLO " + lhlo_name)
    if reply.code != 250:
        return "lhlo", reply
    extensions = reply.text.upper().split()
    mail = "MAIL FROM:<%s>" % sender
    if "8BITMIME" in extensions:
        mail += " BODY=8BITMIME"
    reply = conn.command(mail)
    if reply.code != 250:
        return "mail", reply
    return None


def _failure(stage, reply, name):
    code = exit_for_reply(stage, reply.code)
    if code == EX_OK:   # a 2xx where another code was due: out of step
        code = EX_TEMPFAIL
    return Outcome(code, "%s refused at %s" % (name, stage), str(reply), stage)


def deliver(endpoints, timeout, sender, rcpts, header, chunks, lhlo_name):
    """Deliver to every address in `rcpts`; returns one Outcome per address.

    With `chunks` None this is a dry run: the session stops after the RCPT
    replies, so nothing is delivered but the server still says which
    addresses it would take.
    """
    failures = []
    for endpoint in endpoints:
        try:
            conn = Connection(endpoint, timeout)
        except ExchangeError as exc:
            failures.append(Outcome(EX_TEMPFAIL, str(exc)))
            continue
        try:
            try:
                failed = _session_start(conn, sender, lhlo_name)
            except ExchangeError as exc:
                failures.append(Outcome(EX_TEMPFAIL, str(exc)))
                continue
            if failed is not None:
                failures.append(_failure(failed[0], failed[1], conn.name))
                continue
            return _transaction(conn, rcpts, header, chunks)
        finally:
            conn.close()
    temporary = [f for f in failures if f.code == EX_TEMPFAIL]
    worst = (temporary or failures)[-1]
    if len(failures) > 1:
        worst = Outcome(worst.code, "; ".join(f.reason for f in failures),
                        worst.reply)
    return [worst] * len(rcpts)


def _transaction(conn, rcpts, header, chunks):
    """RCPTs, DATA and the per-recipient replies on a started session."""
    outcomes = [None] * len(rcpts)
    accepted = []
    try:
        for i, rcpt in enumerate(rcpts):
            reply = conn.command("RCPT TO:<%s>" % rcpt)
            if reply.code == 250:
                accepted.append(i)
            else:
                outcomes[i] = _failure("rcpt", reply, conn.name)
        if not accepted:
            return outcomes
        if chunks is None:
            return _fill(outcomes, accepted, Outcome(
                EX_OK, "dry run: %s would take it" % conn.name, "", "rcpt"))
        reply = conn.command("DATA")
        if reply.code != 354:
            return _fill(outcomes, accepted, _failure("data", reply, conn.name))
        batch = b""
        for data in data_stream(header, chunks):
            batch += data
            if len(batch) >= 65536:
                conn.send(batch)
                batch = b""
        conn.send(batch)
        for n, i in enumerate(accepted):
            reply = conn.reply()
            code = exit_for_reply("dot", reply.code)
            if code == EX_OK:
                outcomes[i] = Outcome(EX_OK, "accepted by %s" % conn.name,
                                      str(reply), "dot")
                continue
            outcomes[i] = _failure("dot", reply, conn.name)
            if reply.code in MESSAGE_WIDE:
                # Mailman 3 answers these once, not once per recipient: the
                # fault is the message's, so it is everyone's (waiting for
                # more replies would hang until the timeout).
                return _fill(outcomes, accepted[n:], outcomes[i])
    except ExchangeError as exc:
        # After DATA began, an accepted recipient may or may not be queued
        # in Mailman: keep the mail (a duplicate beats a loss).
        return _fill(outcomes, range(len(rcpts)), Outcome(EX_TEMPFAIL, str(exc)))
    return outcomes


def _fill(outcomes, indexes, outcome):
    for i in indexes:
        if outcomes[i] is None:
            outcomes[i] = outcome
    return outcomes


def lhlo_name():
    """Our name for LHLO: the node name when it is a plain host name."""
    name = os.uname().nodename
    ok = name and all(c.isascii() and (c.isalnum() or c in ".-") for c in name)
    return name if ok else "localhost"
