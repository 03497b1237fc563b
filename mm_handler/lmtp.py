"""Delivery to Mailman 3 over LMTP (RFC 2033).

One transaction for all recipients: LHLO, MAIL, RCPT for each recipient
(its candidate addresses in turn until one is taken), DATA streamed with
CRLF line ends and dot-stuffing, then the replies after the final dot.
Every reply is turned into an exit code by status.exit_for_reply; a
refused, reset, silent or garbled exchange leaves the mail queued (75).
The next configured server is tried only while no RCPT has been sent, so
a message can never be handed to two of them.

We never pipeline: exactly one reply is due at a time, and anything the
server sends when none is due is a protocol error (75).  Each reply wait
has its own deadline, `timeout` seconds from when the wait starts, however
slowly the bytes trickle in; so has the connect.

Built on the C-level _socket module: ``import socket`` (and the idna codec
that a str host name pulls in) costs every message more than the whole
delivery (see bench/startup.py).  For the same reason deadlines are read
from os.times(), not the time module (10 ms ticks are plenty).
"""

import _socket
import os

from .status import (EX_OK, EX_TEMPFAIL, STAGE_DATA, STAGE_DOT, STAGE_GREETING,
                     STAGE_LHLO, STAGE_MAIL, STAGE_RCPT, Outcome, exit_for_reply)

CRLF = b"\r\n"
END = b"." + CRLF       # the end of DATA, yielded last by data_stream
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100
LINE_LIMIT = 998        # RFC 5322; with a stuffed dot 999, under Mailman's 1000
BATCH = 65536           # DATA goes out in sends of at least this much
# Replies after the final dot that Mailman 3.3 (aiosmtpd) sends ONCE for the
# whole transaction, however many recipients: 501 "Message has defects",
# 500 "Line too long" (a line of 1000 bytes or more before its CRLF) and
# 552 "Too much mail data" (over 32 MiB).  Other servers (Dovecot: 552 for
# a full mailbox) send one reply per recipient, as RFC 2033 says.
MESSAGE_WIDE = (500, 501, 552)
MAILMAN = "GNU Mailman"     # Mailman 3: "220 host GNU Mailman LMTP runner 2.0"
NEXT_READING = (550, 551, 553)  # RCPT refusals after which the next candidate is tried
UTF8_NOTE = " (UTF-8 sender passed as X-Original-Envelope-From, envelope sender <>)"
_PEEK = _socket.MSG_PEEK | getattr(_socket, "MSG_DONTWAIT", 0)
_DIGIT = b"0123456789"


class ExchangeError(Exception):
    """The conversation broke: no usable reply (refused, reset, timeout...)."""


class Reply:
    __slots__ = ("code", "text", "lines")

    def __init__(self, code, lines):
        self.code = code
        self.lines = lines      # the text of each line, code and separator removed
        self.text = " ".join(lines).strip()

    def __str__(self):
        return "%d %s" % (self.code, self.text)


def describe_endpoint(endpoint):
    family, address = endpoint
    if family == "unix":
        return "unix:" + address
    host, port = address
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def _now():
    return os.times().elapsed       # monotonic (clock ticks since boot)


class Connection:
    """A line-oriented LMTP client connection: one deadline per reply wait."""

    def __init__(self, endpoint, timeout):
        self.name = describe_endpoint(endpoint)
        self.timeout = timeout
        self.buf = b""
        self.in_data = False    # DATA payload under way: no QUIT may be sent
        self.mailman = False    # the greeting says GNU Mailman
        deadline = _now() + timeout
        family, address = endpoint
        try:
            if family == "unix":
                self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                try:
                    self.sock.settimeout(timeout)
                    self.sock.connect(address)
                except OSError:
                    self.sock.close()
                    raise
            else:
                self.sock = self._connect_inet(address, deadline)
                # commands and the final dot are small writes: without this,
                # Nagle + delayed ACK cost ~40 ms a message
                self.sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise ExchangeError("cannot connect to %s: %s"
                                % (self.name, _why(exc))) from None

    @staticmethod
    def _connect_inet(address, deadline):
        host, port = address
        # a bytes host keeps getaddrinfo from loading the idna codec
        infos = _socket.getaddrinfo(host.encode("ascii"), port, 0,
                                    _socket.SOCK_STREAM)
        error = OSError("no address for %s" % host)
        for family, kind, proto, _, sockaddr in infos:
            remaining = deadline - _now()
            if remaining <= 0:
                raise TimeoutError("timed out")
            sock = _socket.socket(family, kind, proto)
            try:
                sock.settimeout(remaining)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    def send(self, data):
        try:
            self.sock.settimeout(self.timeout)  # sendall: for the whole of it
            self.sock.sendall(data)
        except OSError as exc:
            raise ExchangeError("%s: sending failed: %s"
                                % (self.name, _why(exc))) from None

    def command(self, line, utf8=False):
        """Send one command line, return its reply.  `line` is ASCII unless
        `utf8` (SMTPUTF8 was offered); CR, LF or NUL never reach the wire."""
        try:
            data = line.encode("utf-8" if utf8 else "ascii")
        except UnicodeError:
            raise ExchangeError("%s: not sent, not ASCII: %r"
                                % (self.name, line[:80])) from None
        if b"\r" in data or b"\n" in data or b"\0" in data:
            raise ExchangeError("%s: not sent, CR, LF or NUL in %r"
                                % (self.name, line[:80]))
        self.send(data + CRLF)
        return self.reply()

    def reply(self, last=True):
        """Read one (possibly multi-line) reply; ExchangeError if garbled,
        late (one deadline for the whole reply), or, with `last`, followed
        by anything: no further reply is due then."""
        deadline = _now() + self.timeout
        code = None
        lines = []
        while True:
            line = self._line(deadline)
            if not (len(line) >= 3 and line[0] in b"2345" and line[1] in _DIGIT
                    and line[2] in _DIGIT and line[3:4] in (b" ", b"-", b"")
                    and (code is None or line[:3] == code)):
                raise ExchangeError("%s: garbled reply %r" % (
                    self.name, line[:80].decode("utf-8", "replace")))
            code = line[:3]
            lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                break
            if len(lines) > MAX_REPLY_LINES:
                raise ExchangeError("%s: endless multi-line reply" % self.name)
        if last:
            self.expect_nothing()
        return Reply(int(code), lines)

    def expect_nothing(self):
        """No reply is due: nothing may have arrived."""
        if self.buf:
            raise ExchangeError("%s: protocol error: more than the reply "
                                "arrived: %r" % (self.name, self.buf[:80]))

    def check_quiet(self):
        """Before the final dot: the server must not have spoken (a reply
        now would be taken for the reply to the dot)."""
        self.expect_nothing()
        try:
            self.sock.settimeout(0.0)
            early = self.sock.recv(1, _PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise ExchangeError("%s: during DATA: %s"
                                % (self.name, _why(exc))) from None
        if early:
            raise ExchangeError("%s: protocol error: the server spoke before "
                                "the end of DATA" % self.name)
        raise ExchangeError("%s: connection closed during DATA" % self.name)

    def _line(self, deadline):
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 1:]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buf) > MAX_REPLY_LINE:
                raise ExchangeError("%s: reply line too long" % self.name)
            remaining = deadline - _now()
            try:
                if remaining <= 0:
                    raise TimeoutError("timed out")
                self.sock.settimeout(remaining)
                data = self.sock.recv(8192)
            except OSError as exc:
                raise ExchangeError("%s: no reply: %s"
                                    % (self.name, _why(exc))) from None
            if not data:
                raise ExchangeError("%s: connection closed without a reply"
                                    % self.name)
            self.buf += data

    def close(self):
        """QUIT (never inside DATA: it would become a line of the message),
        without waiting, then close."""
        if not self.in_data:
            try:
                self.sock.settimeout(0.0)
                self.sock.send(b"QUIT" + CRLF)
            except OSError:
                pass
        self.sock.close()


def _why(exc):
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def folded(lines):
    """Body lines (without CRLF), each over LINE_LIMIT bytes broken as
    Sendmail's L= limit breaks it: LINE_LIMIT-1 bytes and a "!", then the rest.

    Mailman 3's LMTP server refuses a message with a line of 1000 bytes or
    more ("500 Line too long"); Sendmail's own LMTP mailer folds such lines
    and delivers, and so do we.
    """
    for line in lines:
        while len(line) > LINE_LIMIT:
            yield line[:LINE_LIMIT - 1] + b"!"
            line = line[LINE_LIMIT - 1:]
        yield line


def header_folded(line):
    """A header line over LINE_LIMIT bytes folded as a header: broken at the
    last space or tab at or before the limit, the whitespace starting the
    continuation line, so that removing the CRLFs gives the line back.

    With no whitespace to break at, the line is broken anyway after
    LINE_LIMIT bytes and the continuation starts with one added space: the
    unfolded value then has one more space there.  (The "!" fold of body
    lines would turn the rest into a non-header, and Mailman 3 answers
    "501 Message has defects".)  Pieces are never empty, so folding never
    ends the header block.
    """
    out = []
    while len(line) > LINE_LIMIT:
        cut = max(line.rfind(b" ", 1, LINE_LIMIT + 1),
                  line.rfind(b"\t", 1, LINE_LIMIT + 1))
        if cut > 0:
            out.append(line[:cut])
            line = line[cut:]
        else:
            out.append(line[:LINE_LIMIT])
            line = b" " + line[LINE_LIMIT:]
    out.append(line)
    return out


def _in_header(lines):
    """Complete lines of the header block, folded, up to the empty line that
    ends it (and the body lines after it, as they are):
    (lines, still in the header block)."""
    out = None
    for n, line in enumerate(lines):
        if not line:
            return (lines if out is None else out + lines[n:]), False
        if len(line) > LINE_LIMIT:
            if out is None:
                out = lines[:n]
            out += header_folded(line)
        elif out is not None:
            out.append(line)
    return (lines if out is None else out), True


def data_stream(header, chunks):
    """The DATA payload: header lines, message with CRLF and dot-stuffing,
    then END.

    `header` is a list of complete header lines without line ends, sent
    first.  Lone LFs become CRLF, existing CRLFs stay, bare CRs pass
    unchanged; a CR at a chunk's end waits for the next chunk so that a
    split CRLF is recognised.  The unterminated last line of each chunk
    waits too (at most LINE_LIMIT bytes of it), so that every piece sent
    ends a line and long lines fold the same wherever the chunks fall:
    as headers (header_folded) up to the first empty line, as Sendmail
    folds them (folded) after it.  An unterminated last line gets its CRLF
    (DATA cannot express a message without one).
    """
    held = pending = b""
    in_header = True
    first = (CRLF.join(header) + CRLF,) if header else ()
    for source in (first, chunks):
        for chunk in source:
            data = held + chunk
            held = b""
            if data.endswith(b"\r"):
                data, held = data[:-1], b"\r"
            # pending never ends with CR: a CRLF cannot straddle it
            lines = (pending + data.replace(CRLF, b"\n")).split(b"\n")
            pending = lines.pop()
            if in_header:
                lines, in_header = _in_header(lines)
                if in_header and len(pending) > LINE_LIMIT:
                    *more, pending = header_folded(pending)
                    lines += more
            if len(pending) > LINE_LIMIT:
                *more, pending = folded([pending])
                lines += more
            if lines:
                yield _stuffed(lines)
    last = pending + held
    if last:
        yield _stuffed(header_folded(last) if in_header else [last])
    yield END


def _stuffed(lines):
    """Complete lines joined with CRLF, long ones folded, dots stuffed."""
    if max(map(len, lines)) > LINE_LIMIT:
        lines = folded(lines)
    data = CRLF.join(lines) + CRLF
    if data[:1] == b".":
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


class Refused(Exception):
    """The server answered a session step with something other than yes."""

    def __init__(self, stage, reply):
        super().__init__(stage, reply)
        self.stage = stage
        self.reply = reply


def _session_start(conn, sender, lhlo_name):
    """Greeting, LHLO, MAIL; Refused when the server says no.

    Returns UTF8_NOTE when a UTF-8 sender went into a header instead of the
    envelope, else "".
    """
    reply = conn.reply()
    if reply.code != 220:
        raise Refused(STAGE_GREETING, reply)
    conn.mailman = MAILMAN in reply.text
    reply = conn.command("LHLO " + lhlo_name)
    if reply.code != 250:
        raise Refused(STAGE_LHLO, reply)
    extensions = [words[0].upper() for words in map(str.split, reply.lines[1:])
                  if words]
    note = ""
    utf8 = not sender.isascii()
    if not utf8:
        mail = "MAIL FROM:<%s>" % sender
    elif "SMTPUTF8" in extensions and _is_utf8(sender):
        mail = "MAIL FROM:<%s> SMTPUTF8" % sender
    else:   # Mailman 3: 500 to a non-ASCII MAIL, 501 to SMTPUTF8
        mail, utf8, note = "MAIL FROM:<>", False, UTF8_NOTE
    if "8BITMIME" in extensions:
        mail += " BODY=8BITMIME"
    reply = conn.command(mail, utf8)
    if reply.code != 250:
        raise Refused(STAGE_MAIL, reply)
    return note


def _is_utf8(text):
    """False for a str with lone surrogates (invalid UTF-8 in argv)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeError:
        return False


def _failure(stage, reply, name, rcpt=""):
    code = exit_for_reply(stage, reply.code)
    if code == EX_OK:   # a 2xx where another code was due: out of step
        code = EX_TEMPFAIL
    return Outcome(code, "%s refused at %s" % (name, stage), str(reply), stage,
                   rcpt)


def deliver(endpoints, timeout, sender, recipients, header, chunks, lhlo_name):
    """Deliver one message; returns one Outcome per entry of `recipients`.

    `recipients` has one entry per recipient: a non-empty list of the
    addresses it may be known by, best reading first (["news-admin@d",
    "news-bounces@d"]).  Each is sent in RCPT until one gets 250; after
    550/551/553 the next is tried; any other reply, or the last one
    refused, is that recipient's failure.  Every Outcome's `rcpt` is the
    address the server answered for (the last one tried; the first one
    when no server got as far as RCPT).

    `sender` may be UTF-8: with SMTPUTF8 offered it goes into MAIL as is;
    otherwise (or when it is not valid UTF-8) the envelope sender is <> and
    the header line "X-Original-Envelope-From: <sender>" carries it
    (UTF8_NOTE is in the accepted Outcomes' reason).  A sender with CR,
    LF, NUL, < or > is never sent: every recipient gets 75.

    `header` is a list of header lines (bytes, no line ends) sent first in
    DATA.  `chunks` yields the message; None is a dry run: the session
    stops after the RCPT replies, so nothing is delivered but the server
    still says which addresses it would take.

    If `chunks` raises, the exception propagates and the connection is
    closed without the final dot: the server delivers nothing.
    """
    for entry in recipients:
        if isinstance(entry, (str, bytes)) or not entry:
            raise ValueError("each recipient is a non-empty list of addresses")
    firsts = [entry[0] for entry in recipients]
    if any(c in sender for c in "\r\n\0<>"):
        why = "sender %r not sent: CR, LF, NUL, < or > in it" % sender[:80]
        return [Outcome(EX_TEMPFAIL, why, "", "", a) for a in firsts]
    failures = []
    for endpoint in endpoints:
        try:
            conn = Connection(endpoint, timeout)
        except ExchangeError as exc:
            failures.append(Outcome(EX_TEMPFAIL, str(exc)))
            continue
        try:
            try:
                note = _session_start(conn, sender, lhlo_name)
            except ExchangeError as exc:
                failures.append(Outcome(EX_TEMPFAIL, str(exc)))
                continue
            except Refused as no:
                failures.append(_failure(no.stage, no.reply, conn.name))
                continue
            if note:
                # the sender's bytes as they came (surrogateescape: argv)
                header = list(header or ()) + [
                    b"X-Original-Envelope-From: <"
                    + sender.encode("utf-8", "surrogateescape") + b">"]
            return _transaction(conn, recipients, header, chunks, note)
        finally:
            conn.close()
    temporary = [f for f in failures if f.code == EX_TEMPFAIL]
    worst = (temporary or failures)[-1]
    reason = "; ".join(f.reason for f in failures) if len(failures) > 1 \
        else worst.reason
    return [Outcome(worst.code, reason, worst.reply, worst.stage, a)
            for a in firsts]


def _transaction(conn, recipients, header, chunks, note):
    """RCPTs, DATA and the replies after the dot on a started session."""
    outcomes = [None] * len(recipients)
    asked = [entry[0] for entry in recipients]  # the address last sent in RCPT
    accepted = []
    try:
        out_of_step = None
        for i, entry in enumerate(recipients):
            for k, rcpt in enumerate(entry, 1 - len(entry)):
                asked[i] = rcpt
                reply = conn.command("RCPT TO:<%s>" % rcpt)
                if reply.code == 250:
                    accepted.append(i)
                    break
                if k == 0 or reply.code not in NEXT_READING:    # k == 0: the last
                    outcomes[i] = _failure(STAGE_RCPT, reply, conn.name, rcpt)
                    if reply.code < 400:    # 251...: it may hold the recipient
                        out_of_step = reply
                    break
        if not accepted:
            return outcomes
        if out_of_step is not None:
            return _fill(outcomes, asked, Outcome(
                EX_TEMPFAIL, "%s answered %s to RCPT: out of step, nothing "
                "sent" % (conn.name, out_of_step), str(out_of_step), STAGE_RCPT))
        if chunks is None:
            return _fill(outcomes, asked, Outcome(
                EX_OK, "dry run: %s would take it" % conn.name, "", STAGE_RCPT))
        reply = conn.command("DATA")
        if reply.code != 354:
            return _fill(outcomes, asked, _failure(STAGE_DATA, reply, conn.name))
        conn.in_data = True
        batch = b""
        for data in data_stream(header, chunks):
            if data is END:
                conn.check_quiet()
                conn.send(batch + END)
                break
            batch += data
            if len(batch) >= BATCH:
                conn.send(batch)
                batch = b""
        conn.in_data = False
        for n, i in enumerate(accepted):
            reply = conn.reply(last=n == len(accepted) - 1)
            if exit_for_reply(STAGE_DOT, reply.code) == EX_OK:
                outcomes[i] = Outcome(EX_OK, "accepted by %s%s" % (conn.name, note),
                                      str(reply), STAGE_DOT, asked[i])
                continue
            outcomes[i] = _failure(STAGE_DOT, reply, conn.name, asked[i])
            if conn.mailman and reply.code in MESSAGE_WIDE:
                # Mailman 3 answers these once, not once per recipient: the
                # fault is the message's, so it is everyone's (waiting for
                # more replies would hang until the timeout).
                conn.expect_nothing()
                return _fill(outcomes, asked, outcomes[i])
    except ExchangeError as exc:
        # After DATA began, an accepted recipient may or may not be queued
        # in Mailman: keep the mail (a duplicate beats a loss).
        return _fill(outcomes, asked, Outcome(EX_TEMPFAIL, str(exc)))
    return outcomes


def _fill(outcomes, asked, outcome):
    """Every recipient without an outcome gets `outcome`, for its address."""
    for i, rcpt in enumerate(asked):
        if outcomes[i] is None:
            outcomes[i] = Outcome(outcome.code, outcome.reason, outcome.reply,
                                  outcome.stage, rcpt)
    return outcomes


def lhlo_name():
    """Our name for LHLO: the node name when it is a plain host name."""
    name = os.uname().nodename
    ok = name and all(c.isascii() and (c.isalnum() or c in ".-") for c in name)
    return name if ok else "localhost"
