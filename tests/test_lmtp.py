"""lmtp: the DATA stream (CRLF, dot-stuffing, folding wherever the chunks
fall) and the LMTP conversation, in-process, against the scripted server
(tests/peers/scripted_lmtp.py) and the real Mailman 3 LMTP runner."""

import random
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_handler import lmtp
from mm_handler.lmtp import LINE_LIMIT, data_stream
from mm_handler.status import (EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL,
                               EX_UNAVAILABLE, STAGE_DOT, STAGE_RCPT)
from tests.peers.mailman3 import DOMAIN
from tests.peers.scripted_lmtp import (CLOSE, NOTHING, Delay, Raw, ScriptedLMTP,
                                       Trickle, refused_endpoint)

LIST = "test@" + DOMAIN
SENDER = "alice@example.org"
MESSAGE = (b"From: Alice <alice@example.org>\nTo: " + LIST.encode() + b"\n"
           b"Subject: hello\nMessage-ID: <lmtp.1@example.org>\n\nBody.\n.dot\n")
UTF8_SENDER = "j\u00f6rg@b\u00fccher.example"
UTF8_NOTE = "(UTF-8 sender passed as X-Original-Envelope-From, envelope sender <>)"


def whole(chunks, header=()):
    return b"".join(data_stream(list(header), chunks))


def endpoint(server):
    return ("inet", (server.host, server.port))


def deliver(server, recipients=((LIST,),), message=MESSAGE, header=(),
            sender=SENDER, timeout=5, chunks=None, dry_run=False,
            endpoints=None):
    """lmtp.deliver against `server`; the message in one chunk by default."""
    if chunks is None and not dry_run:
        chunks = [message]
    return lmtp.deliver(endpoints or [endpoint(server)], timeout, sender,
                        [list(r) for r in recipients], list(header), chunks,
                        "client.test")


def codes(outcomes):
    return [o.code for o in outcomes]


def unstuffed(payload):
    """The DATA payload without its end line and dot-stuffing, CRLF lines."""
    assert payload.endswith(b"\r\n.\r\n") or payload == b".\r\n"
    lines = payload[:-3].split(b"\r\n")[:-1]
    return [l[1:] if l[:1] == b"." else l for l in lines]


def header_block(lines):
    """Output lines up to the first empty one, unfolded: one per header."""
    out = []
    for line in lines:
        if not line:
            break
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += line         # unfolding = removing the CRLF
        else:
            out.append(line)
    return out


# --------------------------------------------------------------------------
# the DATA stream: body lines

@pytest.mark.parametrize("message,expected", [
    (b"", b".\r\n"),
    (b"a\n", b"a\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),                             # unterminated last line
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),               # CRLF stays CRLF
    (b".\n..\n.x\nx.\n", b"..\r\n...\r\n..x\r\nx.\r\n.\r\n"),
    (b"From me\n", b"From me\r\n.\r\n"),               # no From_ escaping
    (b"a\rb\n", b"a\rb\r\n.\r\n"),                     # bare CR passes
    (b"\xff\x00\n", b"\xff\x00\r\n.\r\n"),             # 8-bit and NUL untouched
    (b"\n" + b"x" * LINE_LIMIT + b"\n",
     b"\r\n" + b"x" * LINE_LIMIT + b"\r\n.\r\n"),
    # in the body a long line is folded as Sendmail folds it
    (b"\n" + b"x" * (LINE_LIMIT + 1),
     b"\r\n" + b"x" * (LINE_LIMIT - 1) + b"!\r\nxx\r\n.\r\n"),
    (b"\n" + b"x y" * 400,
     b"\r\n" + (b"x y" * 400)[:LINE_LIMIT - 1] + b"!\r\n"
     + (b"x y" * 400)[LINE_LIMIT - 1:] + b"\r\n.\r\n"),
])
def test_examples(message, expected):
    assert whole([message]) == expected
    assert whole([message[i:i + 1] for i in range(len(message))]) == expected


def test_header_lines_come_first():
    assert whole([b"Subject: x\n\nbody\n"], [b"X-H: 1", b"X-I: 2"]) == \
        b"X-H: 1\r\nX-I: 2\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
    assert whole([b"Subject: x\n\nbody\n"], []) == \
        b"Subject: x\r\n\r\nbody\r\n.\r\n"


# --------------------------------------------------------------------------
# the DATA stream: header lines are folded as headers

SUBJECT = b"Subject: " + b" ".join(b"word%04d" % i for i in range(140))  # 1,268 bytes
REFERENCES = b"References: " + b" ".join(
    b"<%040d.%d@host%d.example.org>" % (i, i, i) for i in range(100))


def test_a_long_header_line_is_folded_at_whitespace():
    out = whole([SUBJECT + b"\n\nbody\n"])
    lines = unstuffed(out)
    first, second = lines[0], lines[1]
    assert len(first) <= LINE_LIMIT and first.startswith(b"Subject: word0000")
    assert second[:1] == b" "                   # a continuation, not a header
    assert first + second == SUBJECT            # unfolds to the original
    # the break is at the last whitespace at or before the limit
    assert SUBJECT.rfind(b" ", 1, LINE_LIMIT + 1) == len(first)
    assert lines[2:] == [b"", b"body"]


def test_tabs_are_kept_where_they_were():
    line = b"X-T: " + b"\t".join(b"t" * 50 for _ in range(60))
    lines = unstuffed(whole([line + b"\n\nb\n"]))
    assert all(l[:1] == b"\t" for l in lines[1:lines.index(b"")])
    assert header_block(lines) == [line]


def test_a_header_line_without_whitespace_gains_one_space():
    line = b"X-Token:" + b"z" * 2500
    lines = unstuffed(whole([line + b"\n\nb\n"]))
    hdr = lines[:lines.index(b"")]
    assert [len(l) for l in hdr] == [LINE_LIMIT, LINE_LIMIT, 2508 - 2 * LINE_LIMIT + 2]
    assert all(l[:1] == b" " for l in hdr[1:])
    unfolded, = header_block(lines)
    assert unfolded == line[:LINE_LIMIT] + b" " + line[LINE_LIMIT:2 * LINE_LIMIT - 1] \
        + b" " + line[2 * LINE_LIMIT - 1:]


def test_the_header_block_ends_at_the_first_empty_line():
    long_body = b"q" * 1500
    out = whole([b"A: b\n\n" + long_body + b"\n" + SUBJECT + b"\n"])
    lines = unstuffed(out)
    assert lines[2] == b"q" * (LINE_LIMIT - 1) + b"!"        # body rule
    assert lines[-2].endswith(b"!")                          # also a header-like body line


def test_a_message_without_an_empty_line_is_all_header():
    out = whole([SUBJECT])
    assert unstuffed(out)[1][:1] == b" "


def test_our_header_lines_are_folded_too():
    lines = unstuffed(whole([b"\nbody\n"], [SUBJECT]))
    assert header_block(lines) == [SUBJECT] and len(lines[0]) <= LINE_LIMIT


def fold_reference(line):
    """Header folding written out by positions, for comparison."""
    out = []
    while len(line) > LINE_LIMIT:
        spaces = [i for i in range(1, LINE_LIMIT + 1) if line[i:i + 1] in (b" ", b"\t")]
        if spaces:
            out.append(line[:spaces[-1]])
            line = line[spaces[-1]:]
        else:
            out.append(line[:LINE_LIMIT])
            line = b" " + line[LINE_LIMIT:]
    return out + [line]


def reference(message, header=()):
    """The whole transformation done on the whole message at once."""
    text = b"".join(h + b"\n" for h in header) + message
    body = text.replace(b"\r\n", b"\n")
    if body.endswith(b"\n"):
        body = body[:-1]
    out = []
    in_header = True
    for line in body.split(b"\n") if text else []:
        in_header = in_header and line != b""
        if in_header:
            out += fold_reference(line)
            continue
        while len(line) > LINE_LIMIT:
            out.append(line[:LINE_LIMIT - 1] + b"!")
            line = line[LINE_LIMIT - 1:]
        out.append(line)
    return b"".join((b"." + l if l[:1] == b"." else l) + b"\r\n" for l in out) + b".\r\n"


def cut(message, points):
    points = sorted(set(p % (len(message) + 1) for p in points))
    return [message[a:b] for a, b in zip([0] + points, points + [len(message)])]


def test_any_chunking_gives_the_whole_message_result():
    rng = random.Random(2026)
    pieces = [b"\n", b"\r\n", b".", b"x", b" ", b"\t", b"\r\n.", b"From ", b"\r",
              b"\n\n", b"\r\n\r\n"]
    for _ in range(3000):
        message = b"".join(rng.choice(pieces + [b"a" * rng.randint(0, 2500)])
                           for _ in range(rng.randint(0, 12)))
        chunks = cut(message, rng.sample(range(len(message) + 1),
                                         min(len(message) + 1, rng.randint(0, 6))))
        out = whole(chunks)
        assert out == reference(message)
        assert max(map(len, out.split(b"\r\n"))) < 1000   # Mailman's limit


# header lines: words of at most 900 bytes leave whitespace in every window,
# so unfolding must give back the original exactly
word = st.binary(min_size=1, max_size=900).map(
    lambda b: bytes(c for c in b if c not in b" \t\r\n") or b"w")
header_line = st.builds(
    lambda name, words, seps: name + b":" + b"".join(
        s + w for s, w in zip(seps, words)),
    st.sampled_from([b"Subject", b"References", b"X-A", b"To"]),
    st.lists(word, min_size=0, max_size=12),
    st.lists(st.sampled_from([b" ", b"\t", b"  ", b" \t"]), min_size=12, max_size=12))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ours=st.lists(header_line, max_size=2),
       theirs=st.lists(header_line, max_size=6),
       line_end=st.sampled_from([b"\n", b"\r\n"]),
       body=st.binary(max_size=3000),
       points=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=8))
def test_header_folding_whatever_the_chunks(ours, theirs, line_end, body, points):
    message = b"".join(h + line_end for h in theirs) + line_end + body
    expected = whole([message], ours)
    assert whole(cut(message, points), ours) == expected
    assert whole([message[i:i + 1] for i in range(min(len(message), 400))]
                 + [message[400:]], ours) == expected
    assert expected == reference(message, ours)
    lines = unstuffed(expected)
    assert max(map(len, lines)) <= LINE_LIMIT
    assert header_block(lines) == list(ours) + list(theirs)


@settings(max_examples=200, deadline=None)
@given(header=st.lists(st.binary(max_size=3000).map(
           lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), max_size=4),
       body=st.binary(max_size=2000),
       points=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=8))
def test_hostile_headers_whatever_the_chunks(header, body, points):
    message = b"".join(h + b"\n" for h in header if h) + b"\n" + body
    out = whole(cut(message, points))
    assert out == reference(message)
    assert max(map(len, out.split(b"\r\n"))) < 1000


# --------------------------------------------------------------------------
# candidate readings: the first address the server takes wins

def by_address(replies, default="550 5.1.1 no such list"):
    return lambda address: replies.get(address.strip("<>"), default)


def test_the_next_reading_is_tried_after_550():
    script = {"rcpt": by_address({"news-bounces@d": "250 2.1.5 Ok"})}
    with ScriptedLMTP(script) as server:
        out, = deliver(server, [["news-admin@d", "news-bounces@d"]])
        server.wait_idle()
    assert (out.code, out.rcpt, out.stage) == (EX_OK, "news-bounces@d", STAGE_DOT)
    session, = server.sessions
    assert [c for c in session.commands if c.startswith(b"RCPT")] == [
        b"RCPT TO:<news-admin@d>", b"RCPT TO:<news-bounces@d>"]
    assert server.delivered() == [(["<news-bounces@d>"], session.message)]


def test_the_first_reading_accepted_stops_the_search():
    with ScriptedLMTP() as server:
        out, = deliver(server, [["news-bounces@d", "news@d"]])
        server.wait_idle()
    assert (out.code, out.rcpt) == (EX_OK, "news-bounces@d")
    assert sum(c.startswith(b"RCPT") for c in server.sessions[0].commands) == 1


@pytest.mark.parametrize("refusal", ["550 5.1.1 no", "551 5.1.6 moved", "553 5.1.3 bad"])
def test_every_reading_refused(refusal):
    with ScriptedLMTP({"rcpt": refusal}) as server:
        out, = deliver(server, [["a@d", "b@d", "c@d"]])
        server.wait_idle()
    assert (out.code, out.rcpt, out.stage, out.reply) == (
        EX_NOUSER, "c@d", STAGE_RCPT, refusal)
    assert not server.delivered()
    assert "DATA" not in server.sessions[0].command_names()


@pytest.mark.parametrize("reply,code", [("450 4.2.1 busy", EX_TEMPFAIL),
                                        ("554 5.7.1 no", EX_UNAVAILABLE)])
def test_any_other_refusal_ends_the_search(reply, code):
    with ScriptedLMTP({"rcpt": by_address({"a@d": reply}, "250 ok")}) as server:
        out, = deliver(server, [["a@d", "b@d"]])
    assert (out.code, out.rcpt, out.stage) == (code, "a@d", STAGE_RCPT)
    assert sum(c.startswith(b"RCPT") for c in server.sessions[0].commands) == 1


def test_several_recipients_each_with_its_readings():
    script = {"rcpt": by_address({"x-bounces@d": "250 ok", "y@d": "250 ok"})}
    with ScriptedLMTP(script) as server:
        outs = deliver(server, [["x-admin@d", "x-bounces@d"], ["y@d"],
                                ["z-admin@d", "z-bounces@d"]])
        server.wait_idle()
    assert [(o.code, o.rcpt) for o in outs] == [
        (EX_OK, "x-bounces@d"), (EX_OK, "y@d"), (EX_NOUSER, "z-bounces@d")]
    assert server.sessions[0].rcpts == ["<x-bounces@d>", "<y@d>"]
    assert len(server.delivered()) == 1


def test_a_dry_run_names_the_reading():
    with ScriptedLMTP({"rcpt": by_address({"b@d": "250 ok"})}) as server:
        out, = deliver(server, [["a@d", "b@d"]], dry_run=True)
        server.wait_idle()
    assert (out.code, out.rcpt, out.stage) == (EX_OK, "b@d", STAGE_RCPT)
    assert "DATA" not in server.sessions[0].command_names()


def test_a_2xx_other_than_250_to_rcpt_sends_no_data():
    """251 may mean the server holds the recipient: out of step, keep it."""
    with ScriptedLMTP({"rcpt": ["250 ok", "251 2.1.5 forwarded"]}) as server:
        outs = deliver(server, [["a@d"], ["b@d"]])
        server.wait_idle()
    assert [(o.code, o.rcpt) for o in outs] == [(EX_TEMPFAIL, "a@d"),
                                                (EX_TEMPFAIL, "b@d")]
    assert "DATA" not in server.sessions[0].command_names()


def test_every_outcome_names_an_address_when_no_server_answers():
    holder, refused = refused_endpoint()
    with holder:
        host, port = refused.split(":")
        outs = lmtp.deliver([("inet", (host, int(port)))], 2, SENDER,
                            [["a@d", "a-x@d"], ["b@d"]], [], [MESSAGE], "c.test")
    assert [(o.code, o.rcpt) for o in outs] == [(EX_TEMPFAIL, "a@d"),
                                                (EX_TEMPFAIL, "b@d")]


def test_recipients_must_be_lists_of_readings():
    with pytest.raises(ValueError):
        lmtp.deliver([("unix", "/nonexistent")], 1, SENDER, ["a@d"], [], None, "c")
    with pytest.raises(ValueError):
        lmtp.deliver([("unix", "/nonexistent")], 1, SENDER, [[]], [], None, "c")


def test_next_server_only_while_no_rcpt_was_sent():
    with ScriptedLMTP({"greeting": "421 4.3.2 busy"}) as busy, \
            ScriptedLMTP() as healthy:
        out, = deliver(healthy, endpoints=[endpoint(busy), endpoint(healthy)])
        assert out.code == EX_OK and len(healthy.delivered()) == 1
    with ScriptedLMTP({"rcpt": CLOSE}) as broken, ScriptedLMTP() as healthy:
        out, = deliver(healthy, endpoints=[endpoint(broken), endpoint(healthy)])
        assert out.code == EX_TEMPFAIL and healthy.sessions == []


# --------------------------------------------------------------------------
# reply hygiene

@pytest.mark.parametrize("garbled", ["2", "25", "2500 ok", "250x", "25 ok",
                                     "650 ok", "150 ok", "\u00b2\u00b50 ok",
                                     "250-a\n251 b", ""])
@pytest.mark.parametrize("stage", ["greeting", "dot"])
def test_a_garbled_reply_is_75(garbled, stage):
    if stage == "greeting":
        garbled = garbled.replace("250", "220", 1)
    with ScriptedLMTP({stage: garbled}) as server:
        out, = deliver(server, timeout=2)
    assert out.code == EX_TEMPFAIL and "garbled" in out.reason, out


def test_a_trickling_server_gets_one_deadline_per_reply():
    with ScriptedLMTP({"greeting": Trickle("220 slow.test GNU Mailman", 0.8)}) as server:
        started = time.monotonic()
        out, = deliver(server, timeout=1)
        took = time.monotonic() - started
    assert out.code == EX_TEMPFAIL and "timed out" in out.reason, out
    assert 0.9 < took < 1.5, took


def test_trickling_after_the_dot_is_bounded_too():
    with ScriptedLMTP({"dot": Trickle("250 2.0.0 Ok", 0.4)}) as server:
        started = time.monotonic()
        out, = deliver(server, timeout=1)
        took = time.monotonic() - started
    assert out.code == EX_TEMPFAIL and "timed out" in out.reason, out
    assert took < 1.6, took


@pytest.mark.parametrize("stage,raw", [
    ("greeting", b"220 a GNU Mailman\r\n220 again\r\n"),
    ("lhlo", b"250-a\r\n250 8BITMIME\r\n250 more\r\n"),
    ("mail", b"250 ok\r\n250 ok\r\n"),
    ("rcpt", b"250 ok\r\n550 no\r\n"),
])
def test_more_than_the_reply_is_a_protocol_error(stage, raw):
    with ScriptedLMTP({stage: Raw(raw)}) as server:
        out, = deliver(server, timeout=2)
        server.wait_idle()
    assert out.code == EX_TEMPFAIL and "more than" in out.reason, out
    assert not server.delivered()


def test_354_and_an_early_250_in_one_packet_then_close():
    script = {"data": Raw(b"354 go ahead\r\n250 2.0.0 Ok\r\n", then=CLOSE)}
    with ScriptedLMTP(script) as server:
        out, = deliver(server, timeout=2)
        server.wait_idle()
    assert out.code == EX_TEMPFAIL and "more than the reply" in out.reason, out


def test_a_reply_during_data_stops_the_final_dot():
    """The server answers before the dot: we must not take that as the reply."""
    arrived = threading.Event()
    first = b"Subject: early\n\n" + b"x" * 100 + b"\n" * 1000

    def chunks():
        yield first * 100                   # > 64 KiB: sent at once
        for _ in range(200):                # wait for the early reply
            if server.sessions and server.sessions[0].said_during_data:
                break
            time.sleep(0.01)
        time.sleep(0.1)
        arrived.set()
        yield b"last line\n"

    with ScriptedLMTP({"during_data": (1000, "250 2.0.0 early")}) as server:
        out, = deliver(server, chunks=chunks(), timeout=2)
        server.wait_idle()
    assert arrived.is_set()
    assert out.code == EX_TEMPFAIL and "spoke before the end of DATA" in out.reason, out
    assert not server.sessions[0].data_complete and not server.delivered()


def test_connect_is_bounded_by_the_timeout(monkeypatch):
    """A listener whose backlog is full never completes a connect; with two
    addresses for one host the whole connect still takes one timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    host, port = listener.getsockname()
    real = lmtp._socket.getaddrinfo
    monkeypatch.setattr(lmtp._socket, "getaddrinfo",
                        lambda *a: real(*a) * 2)
    try:
        started = time.monotonic()
        out, = lmtp.deliver([("inet", (host, port))], 0.5, SENDER, [["a@d"]],
                            [], [MESSAGE], "c.test")
        took = time.monotonic() - started
    finally:
        monkeypatch.undo()
        filler.close()
        listener.close()
    assert out.code == EX_TEMPFAIL and "timed out" in out.reason, out
    assert took < 0.8, took


# --------------------------------------------------------------------------
# replies after the dot: Mailman's one reply vs one per recipient

TWO = [[LIST], ["my-list@" + DOMAIN]]


def test_mailman_answers_a_defective_message_once():
    script = {"dot": ["501 Message has defects", NOTHING]}
    with ScriptedLMTP(script) as server:
        started = time.monotonic()
        outs = deliver(server, TWO, timeout=5)
        took = time.monotonic() - started
        server.wait_idle()
    assert codes(outs) == [EX_DATAERR, EX_DATAERR]
    assert [o.rcpt for o in outs] == [LIST, "my-list@" + DOMAIN]
    assert took < 1, took
    assert server.sessions[0].command_names()[-1] == "QUIT"


DOVECOT = "220 mx.example.net Dovecot ready."


def test_another_server_answers_each_recipient():
    script = {"greeting": DOVECOT, "dot": ["552 5.2.2 Mailbox full", "250 2.0.0 Ok"]}
    with ScriptedLMTP(script) as server:
        outs = deliver(server, TWO)
        server.wait_idle()
    assert codes(outs) == [EX_UNAVAILABLE, EX_OK]
    assert outs[0].reply == "552 5.2.2 Mailbox full"


def test_each_reply_after_the_dot_has_its_own_deadline():
    script = {"greeting": DOVECOT,
              "dot": [Delay(0.6, "250 2.0.0 a"), Delay(0.6, "250 2.0.0 b")]}
    with ScriptedLMTP(script) as server:
        outs = deliver(server, TWO, timeout=1)
    assert codes(outs) == [EX_OK, EX_OK], outs


def test_replies_for_several_recipients_in_one_packet():
    script = {"greeting": DOVECOT,
              "dot": [Raw(b"250 2.0.0 a\r\n451 4.3.0 b\r\n"), NOTHING]}
    with ScriptedLMTP(script) as server:
        outs = deliver(server, TWO)
    assert codes(outs) == [EX_OK, EX_TEMPFAIL]


# --------------------------------------------------------------------------
# a UTF-8 envelope sender

def mail_line(server):
    return [c for c in server.sessions[0].commands if c.startswith(b"MAIL")][0]


def test_utf8_sender_with_smtputf8():
    lhlo = "250-x.test\n250-8BITMIME\n250-SMTPUTF8\n250 SIZE 1000000"
    with ScriptedLMTP({"lhlo": lhlo}) as server:
        out, = deliver(server, sender=UTF8_SENDER)
        server.wait_idle()
    assert out.code == EX_OK and UTF8_NOTE not in out.reason
    assert mail_line(server) == ("MAIL FROM:<%s> SMTPUTF8 BODY=8BITMIME"
                                 % UTF8_SENDER).encode("utf-8")
    assert b"X-Original-Envelope-From" not in server.sessions[0].message


def test_utf8_sender_without_smtputf8():
    with ScriptedLMTP() as server:
        out, = deliver(server, sender=UTF8_SENDER, header=[b"X-H: 1"])
        server.wait_idle()
    assert out.code == EX_OK and out.reason.endswith(UTF8_NOTE), out
    assert mail_line(server) == b"MAIL FROM:<> BODY=8BITMIME"
    assert server.sessions[0].message.startswith(
        b"X-H: 1\r\nX-Original-Envelope-From: <"
        + UTF8_SENDER.encode("utf-8") + b">\r\nFrom: Alice")


def test_a_sender_that_is_not_utf8_goes_into_the_header_as_it_came():
    """argv decoded with surrogateescape: the original bytes, never MAIL."""
    sender = b"j\xf6rg@example.org".decode("utf-8", "surrogateescape")
    with ScriptedLMTP({"lhlo": "250-x\n250 SMTPUTF8"}) as server:
        out, = deliver(server, sender=sender)
        server.wait_idle()
    assert out.code == EX_OK and out.reason.endswith(UTF8_NOTE), out
    assert mail_line(server) == b"MAIL FROM:<>"
    assert server.sessions[0].message.startswith(
        b"X-Original-Envelope-From: <j\xf6rg@example.org>\r\n")


def test_an_ascii_sender_is_unchanged():
    with ScriptedLMTP({"lhlo": "250-x\n250 SMTPUTF8"}) as server:
        out, = deliver(server)
        server.wait_idle()
    assert mail_line(server) == b"MAIL FROM:<alice@example.org>"
    assert out.code == EX_OK and "X-Original" not in out.reason


@pytest.mark.parametrize("sender", ["a\r\nRCPT TO:<x@d>", "a\nb", "a\0b",
                                    "a>b", "<a", "j\u00f6rg\r\n@x"])
def test_no_line_break_reaches_a_protocol_line(sender):
    with ScriptedLMTP() as server:
        out, = deliver(server, sender=sender)
        server.wait_idle()
    assert out.code == EX_TEMPFAIL and out.rcpt == LIST
    assert not server.delivered()
    for session in server.sessions:
        assert all(b"\r" not in c and b"x@d" not in c for c in session.commands)


# --------------------------------------------------------------------------
# aborting: the final dot is never sent when the message cannot be read

class Interrupted(Exception):
    pass


@pytest.mark.parametrize("after", [0, 10, 200 * 1024])
def test_a_failing_reader_never_ends_the_data(after):
    def chunks():
        sent = 0
        while sent < after:
            yield b"line of the message\n" * 500
            sent += 10000
        raise Interrupted("stdin went away")

    with ScriptedLMTP() as server:
        with pytest.raises(Interrupted):
            deliver(server, chunks=chunks())
        server.wait_idle()
    session, = server.sessions
    assert "DATA" in session.command_names()
    assert not session.data_complete and not server.delivered()
    assert b"QUIT" not in session.raw_data
    assert session.closed_by == "client"


def test_quit_is_sent_after_a_finished_transaction():
    with ScriptedLMTP() as server:
        deliver(server)
        server.wait_idle()
    assert server.sessions[0].command_names()[-1] == "QUIT"


# --------------------------------------------------------------------------
# what stays: batched sends, TCP_NODELAY

def test_one_send_per_64_kib_and_nodelay(monkeypatch):
    sent, nodelay = [], []
    real_send = lmtp.Connection.send

    def send(self, data):
        nodelay.append(self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        sent.append(data)
        return real_send(self, data)

    monkeypatch.setattr(lmtp.Connection, "send", send)
    message = b"Subject: big\n\n" + (b"z" * 99 + b"\n") * 3000
    with ScriptedLMTP() as server:
        out, = deliver(server, chunks=[message[i:i + 4096]
                                       for i in range(0, len(message), 4096)])
        server.wait_idle()
    assert out.code == EX_OK and all(nodelay)
    data_sends = [len(d) for d in sent[sent.index(b"DATA\r\n") + 1:]]
    assert sum(data_sends) == len(message) + message.count(b"\n") + 3
    assert all(65536 <= n < 65536 + 2 * 4096 for n in data_sends[:-1]), data_sends
    assert len(data_sends) == sum(data_sends) // 65536 + 1
    assert sent[-1].endswith(b"\r\n.\r\n")        # the dot goes with the last batch
    assert server.sessions[0].command_names()[-1] == "QUIT"
    assert server.delivered()[0][1].replace(b"\r\n", b"\n") == message


# --------------------------------------------------------------------------
# the real Mailman 3 LMTP runner

def mm3_deliver(mm3, message, sender=SENDER, header=(), recipients=((LIST,),)):
    return lmtp.deliver([("inet", ("127.0.0.1", mm3.port))], 20, sender,
                        [list(r) for r in recipients], list(header), [message],
                        "client.test")


def raw(text):
    return text.encode("ascii", "surrogateescape")


def raw_header(msg, name):
    """The value as received (a non-ASCII one comes back as a Header object)."""
    value, = [v for k, v in msg._headers if k.lower() == name.lower()]
    return raw(value)


def unfold(value):
    return raw(value).replace(b"\r\n", b"")


def test_mailman3_takes_long_header_lines(mm3):
    nospace = b"X-Long-Token:" + b"t" * 1500
    message = (b"From: alice@example.org\nTo: " + LIST.encode() + b"\n"
               + SUBJECT + b"\n" + REFERENCES + b"\n" + nospace + b"\n"
               b"Message-ID: <long.headers@example.org>\n\nBody.\n")
    assert len(SUBJECT) - len(b"Subject: ") >= 1200 and REFERENCES.count(b"<") == 100
    out, = mm3_deliver(mm3, message)
    assert (out.code, out.reply) == (EX_OK, "250 Ok"), out
    (msg, data), = mm3.read_queue("in")
    assert unfold(msg["Subject"]) == SUBJECT[len(b"Subject: "):]
    assert unfold(msg["References"]) == REFERENCES[len(b"References: "):]
    # no whitespace to break at: the value gains one space at the break
    assert unfold(msg["X-Long-Token"]) == b"t" * (LINE_LIMIT - 13) + b" " \
        + b"t" * (1500 - LINE_LIMIT + 13)
    assert not msg.defects


def test_mailman3_takes_a_utf8_sender_as_a_header(mm3):
    out, = mm3_deliver(mm3, MESSAGE, sender=UTF8_SENDER)
    assert (out.code, out.reply) == (EX_OK, "250 Ok"), out
    assert out.reason.endswith(UTF8_NOTE)
    (msg, data), = mm3.read_queue("in")
    assert raw_header(msg, "X-Original-Envelope-From") == \
        b"<" + UTF8_SENDER.encode() + b">"
    assert msg["X-MailFrom"] == "<>"
    assert not msg.defects


@pytest.mark.parametrize("sender,said", [
    (UTF8_SENDER, "500 Error: strict ASCII mode"),
    (SENDER, "501 Error: SMTPUTF8 disabled"),
])
def test_mailman3_refuses_smtputf8(mm3, sender, said):
    """What Mailman 3.3.10 says to MAIL ... SMTPUTF8 (why we fall back)."""
    conn = lmtp.Connection(("inet", ("127.0.0.1", mm3.port)), 10)
    try:
        assert "GNU Mailman" in conn.reply().text
        lhlo = conn.command("LHLO client.test")
        assert "SMTPUTF8" not in lhlo.text.upper().split()
        reply = conn.command("MAIL FROM:<%s> SMTPUTF8" % sender, utf8=True)
    finally:
        conn.close()
    assert str(reply) == said
