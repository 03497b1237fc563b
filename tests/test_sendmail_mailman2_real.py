"""End to end: real Sendmail 8.17 -> mm-handler -> the REAL Mailman 2 wrapper.

Sendmail is built from the kit (sendmail/mailman.mc, U=list:list) in its
private namespace (tests/peers/sendmail.py); the real Mailman 2 of
tests/peers/mailman2_real.py is bind-mounted into that namespace at the
prefix compiled into its wrapper.  A post and a -request land in their
queues with the right flag and the right bytes; an unknown list is
answered 5.1.1 in a DSN and nothing reaches Mailman.
"""

import re

import pytest

from tests.peers.sendmail import LIST_DOMAIN, SendmailHost
from tests.peers.syslog import SyslogSink

pytest_plugins = ["tests.peers.mailman2_real"]

SENDER = "alice@example.org"
HOST = LIST_DOMAIN
BODY = (b"Hello list.\n"
        b".\n"
        b"..two dots\n"
        b"From the start of a line\n"
        b"8-bit: caf\xc3\xa9 \xe9\xff\n"
        b"\n"
        + b"L" * 2000 + b"\n"
        b"last line\n")


def message(subject, to):
    return (b"From: Alice <alice@example.org>\n"
            b"To: " + to.encode() + b"\n"
            b"Subject: " + subject.encode() + b"\n"
            b"Message-ID: <" + subject.encode() + b"@example.org>\n"
            b"Date: Sun, 22 Nov 2026 02:44:03 +0000\n"
            b"MIME-Version: 1.0\n"
            b"Content-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: 8bit\n"
            b"\n" + BODY)


@pytest.fixture(scope="module")
def site(mailman2_real, public_tmp, handler, sendmail_binary):
    mailman2_real.ensure_list("test")
    root = public_tmp / "sendmail-mm2real"
    root.mkdir()
    root.chmod(0o755)
    config = mailman2_real.write_config(root / "mm-handler.cfg")
    sink = SyslogSink(root / "log.sock")
    host = SendmailHost(root / "sendmail", handler, config, syslog=sink)
    # the real Mailman 2 at the prefix its wrapper was compiled for
    host.ns.binds.extend((str(s), str(t)) for s, t in mailman2_real.binds)
    try:
        host.start()
        yield host
    finally:
        host.stop()
        sink.close()


@pytest.fixture
def mta(site, mailman2_real):
    site.reset()
    mailman2_real.clear_queues()
    return site


FROM_LINE = re.compile(rb"From %s \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n"
                       % re.escape(SENDER.encode()))
# what Sendmail itself puts before the message's own headers
RECEIVED = re.compile(rb"(Received: [^\n]*\n(?:[ \t][^\n]*\n)*)+")


@pytest.mark.parametrize("local, queue, flags", [
    ("test", "in", ["tolist"]),
    ("test-request", "commands", ["torequest"]),
], ids=["post", "request"])
def test_a_message_through_sendmail_lands_in_the_real_queue(mta, mailman2_real,
                                                            local, queue, flags):
    rcpt = "%s@%s" % (local, HOST)
    sent = message("mm2real-" + local, rcpt)
    result = mta.submit(SENDER, rcpt, sent)
    assert result.returncode == 0, result
    assert mta.queue_ids() == [], mta.mailq() + "\n".join(mta.log())
    log = "\n".join(mta.log())
    assert "mailer=mailman" in log and "stat=Sent" in log, log
    [entry] = mailman2_real.queue()
    assert (entry.queue, entry.flags, entry.listname) == (queue, flags, "test")
    data = entry.data
    # the From_ line Sendmail wrote, mm-handler's header(s), Sendmail's
    # Received:, then the message exactly as submitted
    from_line = FROM_LINE.match(data)
    assert from_line, data[:200]
    rest = data[from_line.end():]
    added = b"".join(h + b"\n" for h in mailman2_real.added_headers(rcpt.encode()))
    assert rest.startswith(added), rest[:300]
    rest = rest[len(added):]
    received = RECEIVED.match(rest)
    assert received and b"by mx.example.test (8.17" in received.group(0), rest[:300]
    assert rest[received.end():] == sent


def test_an_unknown_list_is_answered_5_1_1(mta, mailman2_real):
    rcpt = "nolist@" + HOST
    out = mta.smtp(SENDER, [rcpt], data=message("nolist", rcpt))
    assert out["data"].code == 250, out          # accepted by Sendmail ...
    assert mailman2_real.queue() == []           # ... refused by mm-handler
    assert mta.queue_ids() == []
    dsn, = [c.text for c in mta.captured() if c.recipient == "alice"]
    assert '5.1.1 <%s>: no list named "nolist" here' % rcpt in dsn
    assert "Status: 5.1.1" in dsn
