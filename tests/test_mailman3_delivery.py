"""The installed mm-handler against a real Mailman 3.3.10 LMTP runner.

The command runs as Sendmail runs it (argv ``-r SENDER HOST LOCALPART...``,
the From_ line first on stdin, an empty environment, cwd /); what Mailman
made of the message is read back from its queue files.

What Mailman 3.3.10 does with what LMTP carried (read from its source and
checked here): the posting address and -owner go to the ``in`` queue,
-request/-confirm/-join/-subscribe/-leave/-unsubscribe to ``command``,
-bounces to ``bounces``; ``+detail`` is cut off before the list is looked
up; a list really named like LIST-SUFFIX wins over the suffix reading.  The
stored message is the DATA content as received (line ends CRLF, dots
un-stuffed) parsed by the email package: header values lose their line
end, the body keeps its bytes; Mailman appends Message-ID-Hash,
X-Message-ID-Hash and X-MailFrom.
"""

import re
import time

import pytest

from tests.conftest import FROM_LINE, sample_message
from tests.peers.mailman3 import DOMAIN, free_port

HOST = DOMAIN
SENDER = "alice@example.org"


def listid(name):
    return "%s.%s" % (name, DOMAIN)


def run_mailer(run_handler, config, *recipients, sender=SENDER, stdin=None,
               options=()):
    """One run as Sendmail starts it: [-r SENDER] HOST RECIPIENT..."""
    argv = list(options)
    if sender is not None:
        argv += ["-r", sender]
    argv += [HOST] + list(recipients)
    return run_handler(argv, stdin=sample_message() if stdin is None else stdin,
                       config=config)


def raw(text):
    """A header value or payload as the email package keeps it -> bytes."""
    return text.encode("ascii", "surrogateescape")


def log_fields(line):
    """'k=v k="v w"' -> {k: v}."""
    return {k: v[1:-1] if v.startswith('"') else v
            for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', line)}


def delivery_logs(sink):
    return [log_fields(m) for m in sink.messages() if "recipient=" in m]


def only_message(mm3, queue):
    """The single message Mailman queued, checking nothing else was queued."""
    assert mm3.queued() == {queue: 1}, mm3.queued()
    (msg, data), = mm3.read_queue(queue)
    return msg, data


# --------------------------------------------------------------------------
# every action lands in the right queue

# (local part, queue, msgdata Mailman must have set, mm-handler's action)
ACTIONS = [
    ("test", "in", {"to_list": True}, "post"),
    ("test-owner", "in", {"subaddress": "owner", "to_owner": True,
                          "envsender": "postmaster@" + DOMAIN}, "owner"),
    ("owner-test", "in", {"subaddress": "owner", "to_owner": True}, "owner"),
    ("test-request", "command", {"subaddress": "request", "to_request": True},
     "request"),
    ("test-confirm+0123456789abcdef", "command", {"subaddress": "confirm"},
     "confirm"),
    ("test-join", "command", {"subaddress": "join"}, "join"),
    ("test-subscribe", "command", {"subaddress": "join"}, "subscribe"),
    ("test-leave", "command", {"subaddress": "leave"}, "leave"),
    ("test-unsubscribe", "command", {"subaddress": "leave"}, "unsubscribe"),
    ("test-bounces", "bounces", {"subaddress": "bounces"}, "bounces"),
    ("test-bounces+bob=example.net", "bounces", {"subaddress": "bounces"},
     "bounces"),
    # Mailman 3 has no -admin: mm-handler hands it to -bounces
    ("test-admin", "bounces", {"subaddress": "bounces"}, "admin"),
]


@pytest.mark.parametrize("var_dir", [False, True], ids=["lmtp-only", "var_dir"])
@pytest.mark.parametrize("local,queue,expected,action", ACTIONS,
                         ids=[a[0] for a in ACTIONS])
def test_action_lands_in_its_queue(run_handler, mm3, mm3_config, syslog_sink,
                                   var_dir, local, queue, expected, action):
    config = mm3_config(var_dir=var_dir)
    result = run_mailer(run_handler, config, local)
    assert (result.code, result.stderr, result.stdout) == (0, "", ""), result
    msg, data = only_message(mm3, queue)
    assert data["listid"] == listid("test")
    for key, value in expected.items():
        assert data.get(key) == value, (key, data)
    if queue == "in" and action == "post":
        assert "subaddress" not in data and "to_owner" not in data
    assert msg["X-MailFrom"] == SENDER
    assert msg["Message-ID"] == "<test@example.org>"
    assert raw(msg._payload) == b"Hello list.\r\n"
    log, = delivery_logs(syslog_sink)
    assert (log["list"], log["action"], log["status"]) == ("test", action, "0")


# --------------------------------------------------------------------------
# unknown lists: 67, one line for the DSN, nothing queued

@pytest.mark.parametrize("var_dir", [False, True], ids=["lmtp-only", "var_dir"])
@pytest.mark.parametrize("local,name", [
    ("news-x", "news-x"),
    ("test-foo", "test-foo"),                       # no such suffix
    ("nosuchlist-request", "nosuchlist"),
    ("nosuchlist-bounces+bob=example.net", "nosuchlist"),
])
def test_unknown_list_is_refused(run_handler, mm3, mm3_config, syslog_sink,
                                 var_dir, local, name):
    config = mm3_config(var_dir=var_dir)
    result = run_mailer(run_handler, config, local)
    assert result.code == 67, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result
    assert lines[0].startswith('5.1.1 <%s@%s>: no list named "%s" here'
                               % (local, DOMAIN, name)), result
    assert not lines[0].endswith("kept for retry")
    assert mm3.queued() == {}
    log, = delivery_logs(syslog_sink)
    assert log["status"] == "67" and log["recipient"] == "%s@%s" % (local, DOMAIN)


def test_lmtp_has_the_last_word_over_a_lookalike_directory(run_handler, mm3,
                                                          mm3_config):
    """var/lists/test.lists.example.test also looks like test.lists@example.test."""
    assert (mm3.var_dir / "lists" / listid("test")).is_dir()
    config = mm3_config(var_dir=True)
    result = run_handler(["-r", SENDER, "example.test", "test.lists"],
                         stdin=sample_message(), config=config)
    assert result.code == 67, result
    assert result.stderr.startswith(
        '5.1.1 <test.lists@example.test>: no list named "test.lists" here'), result
    assert "550" in result.stderr           # the server's reply is quoted
    assert mm3.queued() == {}


def test_known_and_unknown_in_one_run(run_handler, mm3, mm3_config):
    result = run_mailer(run_handler, mm3_config(), "news-x", "test")
    assert result.code == 67, result
    assert result.stderr.startswith('5.1.1 <news-x@%s>: no list named "news-x"'
                                    % DOMAIN), result
    msg, data = only_message(mm3, "in")
    assert data["listid"] == listid("test")


# --------------------------------------------------------------------------
# hyphenated names, a list named like an action address, upper case

# (local part, queue, list id, Mailman's subaddress or None for a posting)
NAMES = [
    ("my-list", "in", "my-list", None),
    ("my-list-request", "command", "my-list", "request"),
    ("my-list-owner", "in", "my-list", "owner"),
    ("my-list-bounces+bob=example.net", "bounces", "my-list", "bounces"),
    ("owner-my-list", "in", "my-list", "owner"),
    # a list really named news-bounces wins (Mailman's own rule) ...
    ("news-bounces", "in", "news-bounces", None),
    # ... also with a +detail: Mailman cuts the detail off first
    ("news-bounces+bob=example.net", "in", "news-bounces", None),
    ("news-bounces-bounces", "bounces", "news-bounces", "bounces"),
    ("news-bounces-request", "command", "news-bounces", "request"),
    ("news", "in", "news", None),
    ("news-request", "command", "news", "request"),
    ("news-owner", "in", "news", "owner"),
    # upper case: Mailman folds the whole address
    ("TEST", "in", "test", None),
    ("Test-Request", "command", "test", "request"),
    ("OWNER-Test", "in", "test", "owner"),
    ("My-List-Bounces+Bob=Example.NET", "bounces", "my-list", "bounces"),
    ("News-Bounces", "in", "news-bounces", None),
    ("TEST@LISTS.EXAMPLE.TEST", "in", "test", None),
]


@pytest.mark.parametrize("var_dir", [False, True], ids=["lmtp-only", "var_dir"])
@pytest.mark.parametrize("local,queue,name,subaddress", NAMES,
                         ids=[n[0] for n in NAMES])
def test_list_names(run_handler, mm3, mm3_config, syslog_sink, var_dir, local,
                    queue, name, subaddress):
    result = run_mailer(run_handler, mm3_config(var_dir=var_dir), local)
    assert (result.code, result.stderr) == (0, ""), result
    msg, data = only_message(mm3, queue)
    assert data["listid"] == listid(name)
    assert data.get("subaddress") == subaddress
    assert data.get("to_list") is (True if subaddress is None else None)
    if var_dir:
        # with the on-disk view the log names the list Mailman used
        log, = delivery_logs(syslog_sink)
        assert log["list"] == name, log


# --------------------------------------------------------------------------
# the message arrives byte-exact

BODY = (b".\n"
        b"..\n"
        b".foo\n"
        b"...bar\n"
        b"From the start of a line\n"
        b">From an escaped one\n"
        b"From \n"
        b"8-bit: caf\xc3\xa9 \xe9\xff\x80\n"
        b"\tindented\n"
        b" \n"
        b"\n"
        b"a bare\rCR inside\n")


@pytest.mark.parametrize("last", [b"the last line has no end", b"ends\n", b"\n"],
                         ids=["unterminated", "terminated", "blank-line-last"])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_message_arrives_byte_exact(run_handler, mm3, mm3_config, eol, last):
    headers = [(b"From", b"Alice <alice@example.org>"),
               (b"To", b"test@" + DOMAIN.encode()),
               (b"Subject", b"caf\xc3\xa9 \xff 8-bit subject"),
               (b"Message-ID", b"<exact@example.org>"),
               (b"X-Folded", b"first\n\tsecond"),
               (b"Date", b"Sun, 22 Nov 2026 02:44:03 +0000")]
    head = b"".join(n + b": " + v + b"\n" for n, v in headers)
    message = head + b"\n" + BODY + last
    stdin = (FROM_LINE + message).replace(b"\n", eol)
    result = run_mailer(run_handler, mm3_config(), "test", stdin=stdin)
    assert (result.code, result.stderr) == (0, ""), result
    version = run_handler(["--version"]).stdout.split()[1]
    msg, data = only_message(mm3, "in")

    # the body: every line end CRLF, an unterminated last line given one
    # (and nothing more), dots, "From ", 8-bit bytes and the bare CR untouched
    body = (BODY + last).replace(b"\n", b"\r\n")
    if not last.endswith(b"\n"):
        body += b"\r\n"
    assert raw(msg._payload) == body

    # the headers: the trace header and Delivered-To first, ours as sent (a
    # folded value keeps its inner line end), then Mailman's three
    trace = "mm-handler " + version
    stored = [(n, raw(v)) for n, v in msg._headers]
    expected = [(b"X-Mailman-Handler", trace.encode()),
                (b"Delivered-To", b"test@" + DOMAIN.encode())] + [
        (n, v.replace(b"\n", b"\r\n")) for n, v in headers]
    assert [(n.encode(), v) for n, v in stored[:len(expected)]] == expected
    hashes = msg["Message-ID-Hash"]
    assert stored[len(expected):] == [
        ("Message-ID-Hash", hashes.encode()), ("X-Message-ID-Hash", hashes.encode()),
        ("X-MailFrom", SENDER.encode())]
    assert msg._unixfrom == SENDER      # Mailman's set_unixfrom(MAIL FROM)

    # what LMTP carried, byte for byte: Mailman records its size
    carried = (b"X-Mailman-Handler: " + trace.encode() + b"\r\n"
               + b"Delivered-To: test@" + DOMAIN.encode() + b"\r\n"
               + (head + b"\n").replace(b"\n", b"\r\n") + body)
    assert data["original_size"] == len(carried)


def test_trace_header_can_be_turned_off(run_handler, mm3, mm3_config):
    result = run_mailer(run_handler, mm3_config(trace_header="no"), "test")
    assert (result.code, result.stderr) == (0, ""), result
    msg, _ = only_message(mm3, "in")
    assert msg["X-Mailman-Handler"] is None
    assert msg._headers[0] == ("Delivered-To", "test@" + DOMAIN)
    assert msg._headers[1] == ("From", "Alice <alice@example.org>")


def test_delivered_to_carries_the_whole_envelope_recipient(run_handler, mm3,
                                                           mm3_config):
    """Mailman 3 drops +detail from the RCPT; Delivered-To keeps it, so its
    bounce runner can find the VERP address (issue 9)."""
    result = run_mailer(run_handler, mm3_config(), "Test-Bounces+bob=example.net")
    assert (result.code, result.stderr) == (0, ""), result
    msg, _ = only_message(mm3, "bounces")
    assert msg.get_all("Delivered-To") == ["Test-Bounces+bob=example.net@" + DOMAIN]
    mm3.clear_queues()
    result = run_mailer(run_handler, mm3_config(delivered_to="no"), "test")
    assert result.code == 0, result
    msg, _ = only_message(mm3, "in")
    assert msg["Delivered-To"] is None


def test_trace_header_is_on_by_default(run_handler, mm3, mm3_config):
    result = run_mailer(run_handler, mm3_config(), "test-request")
    assert result.code == 0, result
    msg, _ = only_message(mm3, "command")
    assert msg.get_all("X-Mailman-Handler") == [
        "mm-handler " + run_handler(["--version"]).stdout.split()[1]]


# --------------------------------------------------------------------------
# what Mailman refuses after the dot, answered ONCE for all recipients

LONGEST = 998       # RFC 5322's limit; Mailman (aiosmtpd) refuses 1000 and more


def test_longest_line_mailman_takes(run_handler, mm3, mm3_config):
    body = b"x" * LONGEST + b"\n"
    result = run_mailer(run_handler, mm3_config(), "test",
                        stdin=sample_message(body=body))
    assert (result.code, result.stderr) == (0, ""), result
    msg, _ = only_message(mm3, "in")
    assert raw(msg._payload) == b"x" * LONGEST + b"\r\n"


def test_longer_lines_are_folded_as_sendmail_does_and_delivered(run_handler, mm3,
                                                                mm3_config):
    """Mailman refuses a line of 1000 bytes ("500 Line too long"); Sendmail's
    own LMTP mailer folds long lines with a "!", and so do we (past 998)."""
    body = b"x" * 999 + b"\n" + b"." + b"y" * 2500 + b"\nshort"
    result = run_mailer(run_handler, mm3_config(), "test",
                        stdin=sample_message(body=body))
    assert (result.code, result.stderr) == (0, ""), result
    msg, _ = only_message(mm3, "in")
    assert raw(msg._payload) == (b"x" * 997 + b"!\r\n" + b"xx\r\n"
                                 + b"." + b"y" * 996 + b"!\r\n" + b"y" * 997 + b"!\r\n"
                                 + b"y" * 507 + b"\r\nshort\r\n")


@pytest.mark.parametrize("body,code,reply", [
    # over the 32 MiB that Mailman takes: "552 Error: Too much mail data"
    ((b"z" * 79 + b"\n") * ((32 << 20) // 80 + 100), 69, "552 "),
    # no blank line after the headers: "501 Message has defects"
    (None, 65, "501 Message has defects"),
], ids=["over-32MiB", "defective"])
def test_message_refusal_is_everyones_and_prompt(run_handler, mm3, mm3_config,
                                                 body, code, reply):
    """Mailman sends one reply after the dot, not one per recipient;
    waiting for a second one would hang until the timeout, then retry."""
    if body is None:
        stdin = sample_message(extra=b"This header line has no colon\n")
    else:
        stdin = sample_message(body=body)
    config = mm3_config(extra={"mailman3": {"timeout": "15"}})
    started = time.monotonic()
    result = run_mailer(run_handler, config, "test", "news-request", stdin=stdin)
    assert time.monotonic() - started < 10, result
    assert result.code == code, result
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result
    for line, rcpt in zip(lines, ("test", "news-request")):
        assert line.startswith("5.") and "<%s@%s>" % (rcpt, DOMAIN) in line, line
        assert reply in line and "kept for retry" not in line, line
    assert mm3.queued() == {}


# --------------------------------------------------------------------------
# several recipients: one LMTP transaction, each list gets it once

def test_several_recipients_each_get_the_message_once(run_handler, mm3,
                                                      mm3_config, syslog_sink):
    rcpts = ["test", "my-list", "news", "test-request", "news-bounces-bounces"]
    stdin = sample_message(subject="to many")
    result = run_mailer(run_handler, mm3_config(), *rcpts, stdin=stdin)
    assert (result.code, result.stderr) == (0, ""), result
    assert mm3.queued() == {"in": 3, "command": 1, "bounces": 1}
    posted = mm3.read_queue("in")
    assert sorted(d["listid"] for _, d in posted) == sorted(
        listid(n) for n in ("test", "my-list", "news"))
    (_, request), = mm3.read_queue("command")
    (_, bounce), = mm3.read_queue("bounces")
    assert request["listid"] == listid("test")
    assert bounce["listid"] == listid("news-bounces")
    everything = posted + mm3.read_queue("command") + mm3.read_queue("bounces")
    # one transaction each, each copy naming its own recipient in Delivered-To
    assert sorted(m["Delivered-To"] for m, _ in everything) == sorted(
        "%s@%s" % (r, DOMAIN) for r in rcpts)
    assert {m["Message-ID"] for m, _ in everything} == {"<to.many@example.org>"}
    assert all(m.get_all("X-Mailman-Handler") and len(m.get_all(
        "X-Mailman-Handler")) == 1 for m, _ in everything)
    logs = delivery_logs(syslog_sink)
    assert [l["recipient"] for l in logs] == ["%s@%s" % (r, DOMAIN) for r in rcpts]
    assert {l["status"] for l in logs} == {"0"}


# --------------------------------------------------------------------------
# the envelope sender

@pytest.mark.parametrize("sender", ["MAILER-DAEMON", "<>", "mailer-daemon"])
def test_null_sender(run_handler, mm3, mm3_config, syslog_sink, sender):
    result = run_mailer(run_handler, mm3_config(), "test-bounces", sender=sender)
    assert (result.code, result.stderr) == (0, ""), result
    msg, _ = only_message(mm3, "bounces")
    # MAIL FROM:<> -- aiosmtpd records the null path as the string "<>"
    # (a real sender as the bare address), and Mailman copies it
    assert msg.get_all("X-MailFrom") == ["<>"]
    assert msg._unixfrom == "<>"
    log, = delivery_logs(syslog_sink)
    assert log["sender"] == "<>"


def test_sender_from_the_from_line_without_r(run_handler, mm3, mm3_config,
                                             syslog_sink):
    from_line = b"From bob@example.net Sun Nov 22 02:44:03 2026\n"
    result = run_mailer(run_handler, mm3_config(), "test", sender=None,
                        stdin=sample_message(from_line=from_line))
    assert (result.code, result.stderr) == (0, ""), result
    msg, _ = only_message(mm3, "in")
    assert msg["X-MailFrom"] == "bob@example.net"
    assert msg._unixfrom == "bob@example.net"
    assert msg["From"] == "Alice <alice@example.org>"
    log, = delivery_logs(syslog_sink)
    assert log["sender"] == "<bob@example.net>"


# --------------------------------------------------------------------------
# the syslog line

def test_one_syslog_line_per_recipient(run_handler, mm3, mm3_config,
                                       syslog_sink):
    stdin = sample_message(subject="logged")
    result = run_mailer(run_handler, mm3_config(var_dir=True),
                        "test", "My-List-Request", "news-x", stdin=stdin)
    assert result.code == 67, result
    lines = syslog_sink.lines()
    deliveries = [l for l in lines if "recipient=" in l]
    assert len(deliveries) == 3, lines
    # facility mail (2): <22> info, <21> notice
    assert deliveries[0].startswith("<22>") and deliveries[1].startswith("<22>")
    assert deliveries[2].startswith("<21>")
    assert all(" mm-handler[" in l for l in deliveries)
    logs = [log_fields(l.split("]: ", 1)[1]) for l in deliveries]
    common = {"sender": "<%s>" % SENDER, "backend": "mailman3",
              "dry_run": "no", "size": str(len(stdin))}
    want = [
        {"recipient": "test@" + DOMAIN, "list": "test", "action": "post",
         "status": "0"},
        {"recipient": "My-List-Request@" + DOMAIN, "list": "my-list",
         "action": "request", "status": "0"},
        {"recipient": "news-x@" + DOMAIN, "list": "-", "action": "-",
         "status": "67"},
    ]
    for log, fields in zip(logs, want):
        fields.update(common)
        assert {k: log.get(k) for k in fields} == fields, log
        assert re.fullmatch(r"\d+", log["ms"]) and int(log["ms"]) < 60000, log
        assert log["reason"]
    assert "250" in logs[0]["reply"] and "127.0.0.1:%d" % mm3.port in logs[0]["reason"]
    assert mm3.queued() == {"in": 1, "command": 1}


# --------------------------------------------------------------------------
# --dry-run and --check

def test_dry_run_delivers_nothing_and_prints_the_rcpt(run_handler, mm3,
                                                      mm3_config, syslog_sink):
    config = mm3_config()
    result = run_mailer(run_handler, config, "test-request", "news-bounces+x",
                        options=["--dry-run"])
    assert result.code == 0, result
    out = result.stdout
    for rcpt in ("test-request", "news-bounces+x"):
        assert "RCPT TO:<%s@%s> via %s" % (rcpt, DOMAIN, mm3.endpoint) in out, out
    assert "exit status: 0" in out
    assert mm3.queued() == {}
    assert {l["dry_run"] for l in delivery_logs(syslog_sink)} == {"yes"}
    # the server is asked: an unknown list is refused in a dry run too
    result = run_mailer(run_handler, config, "news-x", options=["--dry-run"])
    assert result.code == 67, result
    assert "exit status: 67" in result.stdout
    assert mm3.queued() == {}


def test_check_reaches_the_runner(run_handler, mm3, mm3_config):
    result = run_handler(["--check"], config=mm3_config(var_dir=True))
    assert result.code == 0, result
    assert re.search(r"^LMTP %s: reachable: 220 .*GNU Mailman LMTP runner"
                     % re.escape(mm3.endpoint), result.stdout, re.M), result
    assert re.search(r"^lists in .*: 7: foo\.%s my-list\.%s news-admin\.%s "
                     r"news-bounces\.%s news\.%s owner-foo\.%s test\.%s$"
                     % ((re.escape(DOMAIN),) * 7), result.stdout, re.M), result
    assert "result: OK" in result.stdout


def test_check_reports_an_unreachable_port(run_handler, mm3, mm3_config):
    dead = "127.0.0.1:%d" % free_port()
    result = run_handler(["--check"],
                         config=mm3_config(lmtp="%s %s" % (dead, mm3.endpoint)))
    assert result.code == 78, result
    assert re.search(r"^FAIL LMTP %s: not reachable" % re.escape(dead),
                     result.stdout, re.M), result
    assert "LMTP %s: reachable" % mm3.endpoint in result.stdout
    assert mm3.queued() == {}


# --------------------------------------------------------------------------
# the runner down, fail-over

def test_runner_down_keeps_the_mail_for_retry(run_handler, mm3, mm3_config,
                                              syslog_sink):
    config = mm3_config()
    stdin = sample_message(subject="retry me")
    mm3.stop()
    try:
        result = run_mailer(run_handler, config, "test", stdin=stdin)
        assert result.code == 75, result
        line, = result.stderr.splitlines()
        assert line.endswith("kept for retry"), result
        assert line.startswith("4.3.0 <test@%s>: cannot connect to %s"
                               % (DOMAIN, mm3.endpoint)), result
        log, = delivery_logs(syslog_sink)
        assert log["status"] == "75"
    finally:
        mm3.start()
    assert mm3.queued() == {}
    # Sendmail's retry then delivers it, once
    result = run_mailer(run_handler, config, "test", stdin=stdin)
    assert (result.code, result.stderr) == (0, ""), result
    msg, _ = only_message(mm3, "in")
    assert msg["Message-ID"] == "<retry.me@example.org>"


def test_closed_port_is_a_temporary_failure(run_handler, mm3, mm3_config):
    dead = "127.0.0.1:%d" % free_port()
    result = run_mailer(run_handler, mm3_config(lmtp=dead), "test", "test-request")
    assert result.code == 75, result
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(l.endswith("kept for retry") for l in lines)
    assert mm3.queued() == {}


def test_first_endpoint_down_second_up_delivers_once(run_handler, mm3,
                                                     mm3_config):
    dead = "127.0.0.1:%d" % free_port()
    config = mm3_config(lmtp="%s %s" % (dead, mm3.endpoint))
    result = run_mailer(run_handler, config, "test", "test-owner")
    assert (result.code, result.stderr) == (0, ""), result
    assert mm3.queued() == {"in": 2}
    owners = [d.get("to_owner") for _, d in mm3.read_queue("in")]
    assert sorted(map(bool, owners)) == [False, True]
