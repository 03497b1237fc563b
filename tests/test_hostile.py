"""Hostile input (hypothesis): nothing trusted, every path deliberate.

Recipients, hosts and senders come from random bytes and Unicode and from
the pieces attackers use (``../``, ``/``, NUL, CR, LF, ``$(...)``, backquotes,
``;``, ``|``, quotes, a leading ``-``, 10 KB names, empty strings, a lone
``+``, ``owner-``, ``-owner``); messages carry NUL bytes, a 1 MB single line,
bare CRs, no header/body separator, or nothing at all.

``mm_handler.cli.main`` runs in-process, with fd 0 redirected from a temp
file, under ``sys.addaudithook`` and wrapped ``os.stat``/``lstat``/``access``
so that every file it opens, stats, lists or runs is seen.  Properties:

- the exit code is one of the documented ones, never 1, never a crash;
- no file outside the configured lists/var directories (and the fixed,
  configured paths: config, spool, template, wrapper, sendmail, syslog) is
  opened, stat'ed or listed, and no path has a ``..`` component;
- the wrapper argv is only ``[wrapper, approved action, existing list]``;
- no LMTP command line and no header carries CR, LF or NUL from input;
- what is delivered is the message, byte for byte (LMTP: CRLF line ends,
  dot-stuffing, and lines over 998 bytes folded as Sendmail folds them);
- exit 0 with the reject policy means every recipient was delivered, and
  with healthy peers exit 75 means the message was empty (or HOST was an
  option word, a site fault).

bench/fuzz.py runs the same properties for 100,000+ examples.
"""

import io
import os
import re
import shutil
import socket
import sys
import tempfile
import threading

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# Everything main() may import lazily, imported now: an import inside the
# audited run would show up as file opens.
import email.charset  # noqa: F401
import email.parser  # noqa: F401
import email.utils  # noqa: F401
import string  # noqa: F401
import subprocess  # noqa: F401
import traceback  # noqa: F401

import chardet  # noqa: F401
import mm_handler.check  # noqa: F401
import mm_handler.lmtp  # noqa: F401
import mm_handler.wrapper  # noqa: F401
from mm_handler import address, bounce, cli, log
from mm_handler import envelope
from mm_handler.envelope import MODE_OPTIONS, clean_sender

from tests.conftest import render_config
from tests.peers.scripted_lmtp import ScriptedLMTP

HOST = "lists.example.test"
LISTS = ("test", "my-list", "news-bounces", "x.y")
TRACE = b"X-Mailman-Handler: mm-handler " + cli.__version__.encode()
CODES = {"mailman2": {0, 67, 75}, "mailman3": {0, 65, 67, 69, 75}}
APPROVED = ("post", "admin", "bounces", "confirm", "join", "leave", "owner",
            "request", "subscribe")           # "unsubscribe" is not approved
MAIN_THREAD = threading.main_thread().ident


# --- watching the process -------------------------------------------------------

class Watch:
    """Records file-system and process events of the main thread while active."""

    active = False
    events = []

    @classmethod
    def hook(cls, event, args):
        if not cls.active or threading.get_ident() != MAIN_THREAD:
            return
        if event in ("open", "os.listdir", "os.scandir", "os.mkdir", "os.rename",
                     "os.remove", "os.rmdir", "os.chmod", "os.chown", "os.link",
                     "os.symlink", "os.truncate", "os.utime", "shutil.copyfile",
                     "shutil.rmtree", "os.chdir"):
            cls.events.append((event, args[0]))
        elif event in ("os.posix_spawn", "os.spawn", "os.exec", "os.system",
                       "os.fork", "os.forkpty", "subprocess.Popen", "os.startfile"):
            cls.events.append((event, args))
        elif event == "socket.connect":
            cls.events.append((event, args[1]))

    @classmethod
    def wrap(cls, name, real):
        def watched(path, *args, **kwargs):
            if cls.active and threading.get_ident() == MAIN_THREAD:
                cls.events.append(("os." + name, path))
            return real(path, *args, **kwargs)
        watched.watched = True
        return watched


def _install():
    if getattr(os.stat, "watched", False):
        return
    sys.addaudithook(Watch.hook)
    for name in ("stat", "lstat", "access"):
        setattr(os, name, Watch.wrap(name, getattr(os, name)))


_install()


# --- the world the handler runs in --------------------------------------------------

class Result:
    pass


class Sink:
    """The syslog socket, read after each run (a run logs a few lines)."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)

    def take(self):
        lines = []
        while True:
            try:
                lines.append(self.sock.recv(65536).decode("ascii"))
            except BlockingIOError:
                return lines

    def close(self):
        self.sock.close()


class Harness:
    """Lists, a wrapper, a sendmail, an LMTP server and configs, made once."""

    def __init__(self, root):
        self.root = root
        self.lists_dir = os.path.join(root, "mm2-lists")
        self.var_dir = os.path.join(root, "mm3-var")
        self.spool = os.path.join(root, "spool")
        self.queue = os.path.join(root, "queue")
        self.letters = os.path.join(root, "letters")
        for d in (self.spool, self.queue, self.letters):
            os.makedirs(d)
        for name in LISTS:
            os.makedirs(os.path.join(self.lists_dir, name))
            open(os.path.join(self.lists_dir, name, "config.pck"), "wb").close()
            os.makedirs(os.path.join(self.var_dir, "lists", name + "." + HOST))
        # a wrapper that keeps what it reads; a sendmail that keeps the letter
        self.wrapper = self._script("wrapper", 'exec /bin/cat > "%s/$$"' % self.queue)
        self.sendmail = self._script("sendmail", 'exec /bin/cat > "%s/$$"' % self.letters)
        self.sink = Sink(os.path.join(root, "log.sock"))
        self.server = ScriptedLMTP({"rcpt": self._rcpt})
        self.configs = {}
        for backend in ("mailman2", "mailman3"):
            for policy in ("reject", "bounce", "discard"):
                path = os.path.join(root, "%s-%s.cfg" % (backend, policy))
                with open(path, "w") as f:
                    f.write(render_config({
                        "mm-handler": {
                            "backend": backend, "unknown_list": policy,
                            "unapproved_action": policy,
                            "approved_actions": " ".join(APPROVED),
                            "spool_dir": self.spool, "spool_threshold": "4096",
                            "syslog_socket": self.sink.path},
                        "mailman2": {"wrapper": self.wrapper,
                                     "lists_dir": self.lists_dir, "timeout": "30"},
                        "mailman3": {"lmtp": self.server.endpoint,
                                     "var_dir": self.var_dir, "timeout": "30"},
                        "bounce": {"sendmail": self.sendmail},
                    }))
                self.configs[backend, policy] = path
        # the system's syslog sockets: where a line goes before the config
        # (and its syslog_socket) is read
        self.allowed_files = {self.spool, self.wrapper, self.sendmail, self.sink.path,
                              bounce.DEFAULT_TEMPLATE} | set(self.configs.values()) \
            | set(log.SYSLOG_SOCKETS)

    def _script(self, name, line):
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n%s\n" % line)
        os.chmod(path, 0o755)
        return path

    @staticmethod
    def _rcpt(addr):
        """Accept the addresses of existing lists, like Mailman 3 does."""
        local, _, domain = addr[1:-1].rpartition("@")
        base = local.partition("+")[0]
        name, _, action = base.rpartition("-")
        if domain == HOST and (base in LISTS or (name in LISTS and action in (
                "bounces", "confirm", "join", "leave", "owner", "request",
                "subscribe", "unsubscribe"))):
            return "250 2.1.5 Ok"
        return "550 5.1.1 Requested action not taken: mailbox unavailable"

    def close(self):
        self.server.stop()
        self.sink.close()

    def run(self, backend, policy, sender, host, recipients, message, dot="250 2.0.0 Ok"):
        """One in-process run; returns a Result with everything observed."""
        argv = ([] if sender is None else ["-r", sender]) + [
            "-C", self.configs[backend, policy], host] + list(recipients)
        self.server.script["dot"] = dot
        first_session = len(self.server.sessions)
        self.sink.take()
        with tempfile.TemporaryFile(dir=self.root) as f:
            f.write(message)
            f.seek(0)
            saved = os.dup(0)
            out, err = io.StringIO(), io.StringIO()
            real_out, real_err = sys.stdout, sys.stderr
            os.dup2(f.fileno(), 0)
            sys.stdout, sys.stderr = out, err
            Watch.events = []
            Watch.active = True
            try:
                code = cli.main(argv)
            finally:
                Watch.active = False
                sys.stdout, sys.stderr = real_out, real_err
                os.dup2(saved, 0)
                os.close(saved)
        self.server.wait_idle(10)
        r = Result()
        r.argv, r.code, r.stdout, r.stderr = argv, code, out.getvalue(), err.getvalue()
        r.events = list(Watch.events)
        r.sessions = self.server.sessions[first_session:]
        r.log = [line.split("]: ", 1)[1] for line in self.sink.take()]
        r.queue = self._take(self.queue)
        r.letters = self._take(self.letters)
        return r

    @staticmethod
    def _take(directory):
        out = []
        for name in sorted(os.listdir(directory), key=int):
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out.append(f.read())
            os.unlink(path)
        return out


# --- the properties ---------------------------------------------------------------

def _inside(path, directory):
    return path == directory or path.startswith(directory + "/")


def delivered_to_line(recipient, host=None):
    local, domain = address.split_recipient(recipient, host or HOST)
    return b"Delivered-To: " + (local + "@" + domain).encode("ascii")


def without_delivered_to(data, eol):
    """(data without the Delivered-To line after the trace header, its line)."""
    start = data.find(TRACE + eol)
    assert start >= 0, data[:200]
    start += len(TRACE + eol)
    end = data.find(eol, start)
    line = data[start:end]
    assert line.startswith(b"Delivered-To: "), data[:300]
    return data[:start] + data[end + len(eol):], line


def expected_wrapper_input(message, recipient=None):
    """What the wrapper reads: From_ line, trace header, Delivered-To (when
    `recipient` is given), then the message."""
    if recipient is not None:
        plain = expected_wrapper_input(message)
        at = plain.index(TRACE) + len(TRACE)
        eol = b"\r\n" if plain[at:at + 2] == b"\r\n" else b"\n"
        return plain[:at] + eol + delivered_to_line(recipient) + plain[at:]

    if message.startswith(b"From "):
        end = message.find(b"\n")
        if 0 <= end < 8192:
            line = message[:end + 1]
            eol = b"\r\n" if line.endswith(b"\r\n") else b"\n"
            return line + TRACE + eol + message[end + 1:]
    return TRACE + b"\n" + message


def expected_lmtp_payload(message, recipient=None):
    """CRLF line ends, a last CRLF; header lines over 998 bytes folded as
    headers (at whitespace), body lines as Sendmail's LMTP mailer folds them
    (997 bytes and "!", then the rest).  Delivered-To after the trace header
    when `recipient` is given."""
    from tests.test_lmtp import fold_reference
    if recipient is not None:
        return expected_lmtp_payload(message).replace(
            TRACE + b"\r\n", TRACE + b"\r\n" + delivered_to_line(recipient) + b"\r\n", 1)
    rest = message
    if message.startswith(b"From "):
        end = message.find(b"\n")
        if 0 <= end < 8192:
            rest = message[end + 1:]
    rest = TRACE + b"\n" + rest
    rest = rest.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not rest.endswith(b"\r\n"):
        rest += b"\r\n"
    lines = []
    in_header = True
    for line in rest[:-2].split(b"\r\n"):
        in_header = in_header and line != b""
        if in_header:
            lines += fold_reference(line)
            continue
        while len(line) > 998:
            lines.append(line[:997] + b"!")
            line = line[997:]
        lines.append(line)
    return b"\r\n".join(lines) + b"\r\n"


def message_is_empty(message):
    """Nothing but (at most) a From_ line: the handler must keep such mail."""
    if message.startswith(b"From "):
        end = message.find(b"\n")
        if 0 <= end < 8192:
            return not message[end + 1:]
    return not message


IMPORT_DIRS = tuple(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))
SAFE_RCPT = re.compile(r"RCPT TO:<[a-z0-9._-]+(\+[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*)?"
                       r"@[a-z0-9.-]+>")
SAFE_MAIL = re.compile(r"MAIL FROM:<[\x21-\x7e]*>( BODY=8BITMIME)?")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
LETTER_HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted",
                  "MIME-Version", "Content-Type"}


def check(h, backend, policy, sender, host, recipients, message, dot, r):
    """Every property for one run; AssertionError names the broken one."""
    where = "argv=%r code=%r stderr=%r" % (r.argv, r.code, r.stderr[:500])

    # 1. a documented exit code, never 1, never a crash
    assert type(r.code) is int and r.code in CODES[backend], where
    assert not any(line.startswith("4.3.0 mm-handler: internal error (")
                   for line in r.stderr.splitlines()), where
    assert not any(line.startswith("internal error: ") for line in r.log), \
        (where, r.log)

    delivered = set()
    for rcpt in recipients:
        try:
            delivered.add(delivered_to_line(rcpt, host))
        except UnicodeEncodeError:
            pass

    # 2. only the configured files and directories, never a '..' path
    roots = [h.lists_dir, os.path.join(h.var_dir, "lists")]
    spawns, popens = [], []
    for event, arg in r.events:
        if event == "os.posix_spawn" and arg[0] == h.sendmail:
            popens.append((arg[0], arg[1], None, arg[2]))   # the bounce hand-off
            continue
        if event == "os.posix_spawn":
            spawns.append(arg)
            continue
        if event == "subprocess.Popen":
            popens.append(arg)
            continue
        if event in ("os.spawn", "os.exec", "os.system", "os.fork", "os.forkpty",
                     "os.startfile"):
            raise AssertionError("%s %r: %s" % (event, arg, where))
        if event == "socket.connect":
            assert arg in (h.sink.path, (h.server.host, h.server.port)) + \
                log.SYSLOG_SOCKETS, \
                (event, arg, where)
            continue
        if isinstance(arg, int):
            continue                    # an fd, not a path
        path = os.fsdecode(arg)
        assert "\x00" not in path and ".." not in path.split("/"), (event, path, where)
        if event not in ("open", "os.stat", "os.lstat", "os.access", "os.listdir",
                         "os.scandir"):
            raise AssertionError("%s %r: %s" % (event, path, where))
        if event == "open" and path.endswith((".py", ".pyc", ".so")) and any(
                _inside(path, d) for d in IMPORT_DIRS):
            continue                    # a module imported lazily by the code
        assert path in h.allowed_files or any(_inside(path, d) for d in roots), \
            (event, path, where)

    # 3. the wrapper argv: [wrapper, approved action, an existing, valid list]
    for path, argv, _env in spawns:
        assert backend == "mailman2" and path == h.wrapper, (path, where)
        assert len(argv) == 3 and argv[0] == h.wrapper, (argv, where)
        assert argv[1] in APPROVED, (argv, where)
        assert address.is_list_name(argv[2]) and argv[2] in LISTS, (argv, where)
    # ... and the bounce hand-off: no shell, "--" before a clean sender
    for executable, args, _cwd, _env in popens:
        assert policy == "bounce" and executable == h.sendmail, (args, where)
        assert list(args[:5]) == [h.sendmail, "-oi", "-f", "<>", "--"], (args, where)
        assert len(args) == 6 and args[5] and clean_sender(args[5]) == args[5], \
            (args, where)
        if sender is not None:
            assert args[5] == clean_sender(sender), (args, where)

    # 4. LMTP: no command line carries CR, LF or NUL from input
    for s in r.sessions:
        assert s.commands, where
        names = s.command_names()
        assert names[0] == "LHLO" and names[1] == "MAIL", (s.commands, where)
        for line in s.commands:
            text = line.decode("ascii")             # ASCII only, or this raises
            assert not CONTROL.search(text), (line, where)
        assert SAFE_MAIL.fullmatch(s.commands[1].decode()), (s.commands, where)
        rcpts = [c.decode() for c in s.commands if c.startswith(b"RCPT")]
        assert rcpts and all(SAFE_RCPT.fullmatch(c) for c in rcpts), (rcpts, where)
        assert len(rcpts) <= len(recipients), where
        assert set(names) <= {"LHLO", "MAIL", "RCPT", "DATA", "QUIT"}, (names, where)
        if s.data_complete:
            # we add our constant header and Delivered-To naming one of the
            # recipients (ASCII, nothing from input but a checked address);
            # the rest is the message
            payload, line = without_delivered_to(s.message, b"\r\n")
            assert line in delivered, (line, where)
            # a UTF-8 sender, with no SMTPUTF8 offered, travels in a header
            kept = TRACE + b"\r\nX-Original-Envelope-From: <"
            if kept in payload:
                start = payload.index(kept) + len(TRACE) + 2
                end = payload.index(b"\r\n", start)
                value = payload[start + 27:end - 1].decode("utf-8")
                assert not value.isascii() and value == clean_sender(
                    value), (value, where)
                assert s.commands[1] == b"MAIL FROM:<> BODY=8BITMIME", where
                payload = payload[:start] + payload[end + 2:]
            assert payload == expected_lmtp_payload(message), where

    # 5. the wrapper got the message byte for byte, once per run
    assert len(r.queue) == len(spawns), where
    for data in r.queue:
        at = data.index(TRACE) + len(TRACE)
        eol = b"\r\n" if data[at:at + 2] == b"\r\n" else b"\n"
        data, line = without_delivered_to(data, eol)
        assert line in delivered, (line, where)
        assert data == expected_wrapper_input(message), where

    # 6. bounce letters: no header carries CR, LF or NUL from input
    for letter in r.letters:
        head = letter.split(b"\n\n", 1)[0]
        assert b"\r" not in head and b"\x00" not in head, where
        names = [line.split(b":", 1)[0].decode("ascii") for line in head.split(b"\n")
                 if line[:1] not in (b" ", b"\t")]
        assert set(names) == LETTER_HEADERS and len(names) == len(LETTER_HEADERS), \
            (names, where)
        status = letter.split(b"Content-Type: message/delivery-status", 1)[1]
        status = status.split(b"\n--", 1)[0]
        for line in status.strip(b"\n").split(b"\n"):
            assert line == b"" or re.fullmatch(
                rb"(Content-Description|Reporting-MTA|Arrival-Date|Final-Recipient|"
                rb"Action|Status|Diagnostic-Code): [\x20-\x7e]*", line), (line, where)
    assert len(r.letters) <= len(recipients), where

    # 7. one clean syslog line per recipient, one clean stderr line per refusal
    for line in r.log:
        assert not CONTROL.search(line), (line, where)
    for line in r.stderr.splitlines():
        assert not CONTROL.search(line), (line, where)
    assert r.stderr == "" or r.stderr.endswith("\n"), where

    # 8. nothing lost: exit 0 under "reject" means every recipient delivered
    delivered = len(spawns) if backend == "mailman2" else sum(
        len(s.rcpts) for s in r.sessions if s.data_complete and dot.startswith("2"))
    option_host = host.startswith("-") and host != "-"
    # an unusable HOST or RECIPIENT is the mailer's setup, not the sender's
    # address: kept for retry (issue 8, 12)
    setup_fault = not envelope.is_host(host) or any(
        not rcpt or rcpt.endswith("@") for rcpt in recipients)
    if r.code == 0 and policy == "reject" and not option_host:
        assert delivered == len(recipients), (delivered, where)
        assert "exit status" not in r.stdout, where        # not a dry run
    # ... and with healthy peers a transient code needs a reason
    if r.code == 75 and dot.startswith("2"):
        assert message_is_empty(message) or option_host or setup_fault, where
    return r


# --- strategies ----------------------------------------------------------------------

SPECIAL = ["../", "..", "/", "\x00", "\r", "\n", "\r\n", "$(reboot)", "`id`", ";", "|",
           "'", '"', "-", "+", "owner-", "-owner", "@", ".", " ", "\t", "<", ">", "\\",
           "*", "&", "%", "=", "~", "#", "!", "{", "}", "\x7f", "\xff", "\udcff",
           "\u202e", "é", "İ", "K", "ß", "--", "-C", "-r", "-f", "--help",
           "--dry-run", "--check", "--render-template", "--version", "-h"]
NAMES = ["test", "TEST", "Test", "my-list", "news-bounces", "x.y", "nope", "owner-test",
         "test-x", "lists"]
SUFFIXES = ["", "-request", "-bounces", "-admin", "-owner", "-confirm", "-join",
            "-leave", "-subscribe", "-unsubscribe", "-foo", "-"]
DETAILS = ["", "+", "+alice=example.org", "+0123abcd", "+a+b", "+x" * 3,
           "+" + "x" * 10240]
DOMAINS = [HOST, HOST.upper(), HOST + ".", "other.example", "", "localhost",
           "[127.0.0.1]", "a" * 300, "lists.example.test\r\n",
           ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])]   # 253: the longest

pieces = st.one_of(
    st.sampled_from(SPECIAL), st.sampled_from(NAMES), st.sampled_from(SUFFIXES),
    st.binary(max_size=24).map(os.fsdecode), st.text(max_size=16))
hostile = st.one_of(
    st.lists(pieces, max_size=6).map("".join),
    st.sampled_from(["", "+", "owner-", "-owner", "a" * 10240, "-" + "b" * 10240,
                     "/etc/passwd", "../../../../etc/passwd", "test/../../x"]))
near_valid = st.builds(
    lambda n, s, d: n + s + d, st.sampled_from(NAMES), st.sampled_from(SUFFIXES),
    st.one_of(st.sampled_from(DETAILS), hostile.map(lambda x: "+" + x)))
local_part = st.one_of(near_valid, hostile)
recipient = st.one_of(
    local_part,
    st.builds(lambda l, d: l + "@" + d, local_part,
              st.one_of(st.sampled_from(DOMAINS), hostile)))
hosts = st.one_of(st.sampled_from([HOST, HOST.upper(), HOST + "."]), hostile)
senders = st.one_of(
    st.none(), st.sampled_from(["alice@example.org", "MAILER-DAEMON", "<>", "",
                                "<bob@example.org>", "-oQ/tmp", "--"]), hostile)

FROM_LINE = b"From alice@example.org Sun Nov 22 02:44:03 2026\n"
HEADERS = (b"From: Alice <alice@example.org>\nTo: test@lists.example.test\n"
           b"Subject: hostile\nMessage-ID: <h@example.org>\n")
BIG_LINE = b"x" * (1 << 20)
from_lines = st.one_of(
    st.just(FROM_LINE), st.just(b""), st.just(b"From \n"), st.just(b"From "),
    st.just(b"From alice@example.org Sun Nov 22 02:44:03 2026\r\n"),
    st.binary(max_size=60).map(lambda b: b"From " + b.replace(b"\n", b"")
                               + b" Sun Nov 22 02:44:03 2026\n"))
bodies = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda b: HEADERS + b"\n" + b, st.binary(max_size=2000)),
    st.sampled_from([
        b"",
        HEADERS + b"\nnul \x00 bytes\x00\n\x00",
        HEADERS + b"\n" + BIG_LINE,                       # a 1 MB single line
        HEADERS + b"\n" + BIG_LINE + b"\n.\n",
        HEADERS.replace(b"\n", b"\r") + b"\rbare\rCRs\r",  # bare CRs only
        b"Subject: no separator\nstill header\nbody?",     # no header/body separator
        HEADERS + b"\n.\n..\n.x\r\n.\r\nFrom me\n",      # dots and From_ in the body
        HEADERS + b"\nends with CR\r",
        b"\n",
        b".",
    ]),
    st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\x00", b"From ",
                              b"\xff"]), max_size=40).map(b"".join))
messages = st.builds(lambda f, b: f + b, from_lines, bodies)
dots = st.sampled_from(["250 2.0.0 Ok"] * 6 + ["451 4.3.0 later", "554 5.0.0 no",
                                               "501 5.6.0 Message has defects"])

case = st.fixed_dictionaries({
    "backend": st.sampled_from(["mailman2", "mailman3"]),
    "policy": st.sampled_from(["reject", "reject", "bounce", "discard"]),
    "sender": senders,
    "host": hosts,
    "recipients": st.lists(recipient, min_size=1, max_size=4),
    "message": messages,
    "dot": dots,
})


def run_case(h, c):
    if c["sender"] is None and c["host"] in MODE_OPTIONS:
        # Without -r (root submitting without -f) a HOST that is exactly a
        # mode option cannot be told from one; $h is the admin's mailertable
        # entry, never the sender's.  Documented residual: see the report.
        c = dict(c, host=HOST)
    r = h.run(c["backend"], c["policy"], c["sender"], c["host"], c["recipients"],
              c["message"], c["dot"])
    return check(h, r=r, **c)


# --- the tests ------------------------------------------------------------------------

_harness = None


def harness():
    global _harness
    if _harness is None:
        root = tempfile.mkdtemp(prefix="mmh-hostile-")
        _harness = Harness(root)
    return _harness


def teardown_module(module):
    global _harness
    if _harness is not None:
        _harness.close()
        shutil.rmtree(_harness.root, ignore_errors=True)
        _harness = None


# No "explain" phase: its tracer resolves paths inside the watched run.
FAST = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])


# The properties as plain functions with their strategies, so that
# bench/fuzz.py runs exactly these for its 100,000+ examples.

def prop_everything(c):
    run_case(harness(), c)


def prop_local_parts_with_a_healthy_envelope(backend, recipients):
    h = harness()
    message = FROM_LINE + HEADERS + b"\nbody\n"
    r = h.run(backend, "reject", "alice@example.org", HOST, recipients, message)
    check(h, backend, "reject", "alice@example.org", HOST, recipients, message,
          "250 2.0.0 Ok", r)
    # a name that reaches Mailman is one of its lists, whatever the input; an
    # empty RECIPIENT or one without a domain is the mailer's setup (75)
    assert r.code in (0, 67) or (r.code == 75 and any(
        not rcpt or rcpt.endswith("@") for rcpt in recipients)), r.stderr


def prop_messages_arrive_byte_exact(backend, message):
    h = harness()
    r = h.run(backend, "reject", "alice@example.org", HOST, ["test"], message)
    check(h, backend, "reject", "alice@example.org", HOST, ["test"], message,
          "250 2.0.0 Ok", r)
    if message_is_empty(message):
        assert r.code == 75 and "no message on standard input" in r.stderr
    else:
        assert r.code == 0, r.stderr
        if backend == "mailman2":
            assert r.queue == [expected_wrapper_input(message, "test")]
        else:
            [s] = r.sessions
            assert s.message == expected_lmtp_payload(message, "test")


def prop_senders_and_hosts(sender, host):
    h = harness()
    message = FROM_LINE + HEADERS + b"\nbody\n"
    for backend in ("mailman2", "mailman3"):
        r = run_case(h, {"backend": backend, "policy": "bounce", "sender": sender,
                         "host": host, "recipients": ["test", "nope"],
                         "message": message, "dot": "250 2.0.0 Ok"})
        assert r.code in (0, 75)
        for s in r.sessions:
            mail = s.commands[1].decode()
            expected = clean_sender(
                sender if sender is not None else "alice@example.org")
            # a UTF-8 sender without SMTPUTF8 offered: <> and a header
            assert mail.startswith("MAIL FROM:<%s>" % (
                expected if expected.isascii() else "")), (mail, sender)


backends = st.sampled_from(["mailman2", "mailman3"])
# (property, its strategies, examples in CI, share of bench/fuzz.py's examples)
PROPERTIES = [
    (prop_everything, {"c": case}, 1500, 0.7),
    (prop_local_parts_with_a_healthy_envelope,
     {"backend": backends, "recipients": st.lists(local_part, min_size=1, max_size=3)},
     600, 0.1),
    (prop_messages_arrive_byte_exact, {"backend": backends, "message": messages},
     400, 0.1),
    (prop_senders_and_hosts, {"sender": senders, "host": hosts}, 300, 0.1),
]


def hypothesis_test(prop, strategies, examples):
    return settings(FAST, max_examples=examples)(given(**strategies)(prop))


test_hostile_everything = hypothesis_test(*PROPERTIES[0][:3])
test_hostile_local_parts_with_a_healthy_envelope = hypothesis_test(*PROPERTIES[1][:3])
test_hostile_messages_arrive_byte_exact = hypothesis_test(*PROPERTIES[2][:3])
test_hostile_senders_and_hosts = hypothesis_test(*PROPERTIES[3][:3])


# --- plain examples of the named cases, so that each one surely runs ----------------

NAMED = [
    "../test", "test/../../etc", "/etc/passwd", "te\x00st", "test\r\nRCPT TO:<x>",
    "test\nDATA", "$(reboot)", "`id`", "test;id", "test|id", "'test'", '"test"',
    "-test", "-owner", "owner-", "+", "", "a" * 10240, "test+" + "x" * 10240,
    "-C/etc/passwd", "--help", "test-request+\r\n", "TEST-REQUEST", "owner-test",
]


def test_named_hostile_recipients():
    h = harness()
    message = FROM_LINE + HEADERS + b"\nbody\n"
    for backend in ("mailman2", "mailman3"):
        for policy in ("reject", "bounce"):
            for rcpt in NAMED:
                r = run_case(h, {"backend": backend, "policy": policy,
                                 "sender": "alice@example.org", "host": HOST,
                                 "recipients": [rcpt], "message": message,
                                 "dot": "250 2.0.0 Ok"})
                expected = 0 if rcpt in ("TEST-REQUEST", "owner-test") else \
                    75 if rcpt == "" else 67 if policy == "reject" else 0
                assert r.code == expected, (backend, policy, rcpt, r.stderr)


def test_named_hostile_hosts():
    h = harness()
    message = FROM_LINE + HEADERS + b"\nbody\n"
    for host in ["-C", "-r", "-f", "--help", "--dry-run", "--check", "--version",
                 "--render-template", "-Cx", "-rx", "--", "../..", "/", "",
                 "lists.example.test\x00", "a" * 10240]:
        for backend in ("mailman2", "mailman3"):
            r = run_case(h, {"backend": backend, "policy": "reject",
                             "sender": "alice@example.org", "host": host,
                             "recipients": ["test", "/etc/passwd"],
                             "message": message, "dot": "250 2.0.0 Ok"})
            assert r.code in (67, 75), (host, r.code, r.stderr)
            assert r.queue == [] and not any(s.data_complete for s in r.sessions)


def test_named_hostile_messages():
    h = harness()
    for body in [b"", b"\x00" * 100, BIG_LINE, b"a\rb\rc\r", b"no separator\nat all",
                 b".\r\n.\n..\n"]:
        for backend in ("mailman2", "mailman3"):
            message = FROM_LINE + body
            r = h.run(backend, "reject", None, HOST, ["test"], message)
            check(h, backend, "reject", None, HOST, ["test"], message,
                  "250 2.0.0 Ok", r)
            assert r.code == (75 if not body else 0), (body[:20], r.stderr)


def test_the_watch_sees_what_it_must():
    """The harness itself: a stray open and a stat are caught."""
    h = harness()
    Watch.events = []
    Watch.active = True
    try:
        os.stat("/etc/hostname")
        open("/etc/hostname").close()
    finally:
        Watch.active = False
    assert ("os.stat", "/etc/hostname") in Watch.events
    assert ("open", "/etc/hostname") in Watch.events
    r = Result()
    r.code, r.stdout, r.stderr, r.log, r.sessions = 0, "", "", [], []
    r.queue, r.letters, r.argv = [], [], []
    r.events = [("open", "/etc/hostname")]
    try:
        check(h, "mailman2", "discard", None, HOST, ["x"], b"", "250", r)
    except AssertionError:
        pass
    else:
        raise AssertionError("a stray open went unnoticed")


def test_a_refused_recipient_before_a_deliverable_one():
    """The bounce policy reads the message first; the list still gets it."""
    h = harness()
    message = FROM_LINE + HEADERS + b"\nbody\n"
    for backend in ("mailman2", "mailman3"):
        r = h.run(backend, "bounce", "alice@example.org", HOST, ["nope", "test"],
                  message)
        check(h, backend, "bounce", "alice@example.org", HOST, ["nope", "test"],
              message, "250 2.0.0 Ok", r)
        assert (r.code, r.stderr) == (0, ""), r.stderr
        assert len(r.letters) == 1 and b"nope@lists.example.test" in r.letters[0]
        if backend == "mailman2":
            assert r.queue == [expected_wrapper_input(message, "test")]
        else:
            [s] = r.sessions
            assert s.message == expected_lmtp_payload(message, "test")


def test_the_checks_catch_a_crash():
    """A crash (exit 75 with the internal-error line) breaks the properties."""
    h = harness()
    real = cli.registry.candidates
    cli.registry.candidates = lambda *a: 1 / 0
    try:
        r = h.run("mailman2", "reject", "alice@example.org", HOST, ["test"],
                  FROM_LINE + HEADERS + b"\nbody\n")
    finally:
        cli.registry.candidates = real
    assert r.code == 75 and "internal error (ZeroDivisionError)" in r.stderr
    try:
        check(h, "mailman2", "reject", "alice@example.org", HOST, ["test"],
              FROM_LINE + HEADERS + b"\nbody\n", "250 2.0.0 Ok", r)
    except AssertionError:
        pass
    else:
        raise AssertionError("a crash went unnoticed")
