"""The shipped Sendmail kit, end to end, with real Sendmail 8.17 and Mailman 3.3.10.

One private namespace (tests/peers/sendmail.py) holds Sendmail, built from
sendmail/mailman.mc and sendmail/mailman.m4 with only the mm-handler path
and its configuration path substituted, and Mailman 3's LMTP runner on the
namespace's loopback.  Mailman's [mta] incoming is the plug-in
mm_handler.mailman3_mta.Sendmail, so the maps of /etc/mail/mm-handler are
written by `mailman create` itself.  Mail is submitted with the real
sendmail command; what Mailman made of it is read from its queue files,
DSNs from a capture mailer.
"""

import re

import pytest

from tests.conftest import dsn_message
from tests.peers.sendmail import LIST_DOMAIN, Mailman3Site

SENDER = "alice@example.org"
HOST = LIST_DOMAIN

# the body of every test message: what Sendmail and LMTP must not touch
BODY = (b"Hello list.\n"
        b".\n"
        b"..double dot\n"
        b"From the start of a line\n"
        b">From an escaped one\n"
        b"8-bit: caf\xc3\xa9 \xe9\xff\n"
        b"\tindented and trailing space \n"
        b"\n"
        b"last line\n")


def message(subject, to="test@" + HOST, body=BODY, extra=b""):
    return (b"From: Alice <alice@example.org>\n"
            b"To: " + to.encode() + b"\n"
            b"Subject: " + subject.encode() + b"\n"
            b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@example.org>\n"
            b"Date: Sun, 22 Nov 2026 02:44:03 +0000\n"
            + extra + b"\n" + body)


def raw(text):
    """A payload as the email package keeps it -> bytes."""
    return text.encode("ascii", "surrogateescape")


@pytest.fixture(scope="module")
def site(public_tmp, handler, sendmail_binary):
    from tests.conftest import MAILMAN_VENV
    site = Mailman3Site(public_tmp / "sendmail-mm3", handler, MAILMAN_VENV,
                        lists=("test",))
    try:
        site.start()
        yield site
    finally:
        site.stop()


@pytest.fixture
def mta(site):
    site.reset()
    yield site
    site.sendmail.reset()


def submit_ok(sendmail, sender, rcpt, data):
    result = sendmail.submit(sender, rcpt, data)
    assert result.returncode == 0, result
    assert sendmail.queue_ids() == [], sendmail.mailq()
    return result


def only_message(mailman, queue):
    assert mailman.queued() == {queue: 1}, (mailman.queued(), mailman.log_tail())
    (msg, data), = mailman.read_queue(queue)
    return msg, data


# -- 1. every kind of list address lands in its queue, body byte-exact ------------

CASES = [
    # (recipient, envelope sender, queue, msgdata Mailman must have set)
    ("test@" + HOST, SENDER, "in", {"to_list": True}),
    ("test-request@" + HOST, SENDER, "command",
     {"subaddress": "request", "to_request": True}),
    ("test-bounces+bob=example.net@" + HOST, "<>", "bounces",
     {"subaddress": "bounces"}),
    ("owner-test@" + HOST, SENDER, "in", {"subaddress": "owner", "to_owner": True}),
]


@pytest.mark.parametrize("rcpt,sender,queue,meta", CASES,
                         ids=["post", "request", "bounces-verp-dsn", "owner-LIST"])
def test_list_address_lands_in_its_queue(mta, rcpt, sender, queue, meta):
    is_dsn = sender == "<>"
    data = dsn_message(rcpt) if is_dsn else message("kit " + queue, to=rcpt)
    submit_ok(mta.sendmail, sender, rcpt, data)
    msg, msgdata = only_message(mta.mailman, queue)
    for key, value in meta.items():
        assert msgdata.get(key) == value, (key, msgdata)
    assert msgdata["listid"] == "test." + HOST
    # the envelope sender as Mailman saw it: the null path for the DSN
    # (Sendmail passes it to the mailer as -r MAILER-DAEMON)
    assert msg.get_all("X-MailFrom") == ["<>" if is_dsn else SENDER]
    # Sendmail handed the message to the mailman mailer, which gave it to LMTP
    log = "\n".join(mta.sink.lines())
    assert "mailer=mailman" in log and "stat=Sent" in log, log
    assert re.search(r"mm-handler\[\d+\]: sender=<%s> recipient=%s .*status=0"
                     % ("" if is_dsn else re.escape(SENDER), re.escape(rcpt)), log), log
    if is_dsn:
        assert [p.get_content_type() for p in msg.walk()][:3] == [
            "multipart/report", "text/plain", "message/delivery-status"]
        text_part = msg.get_payload(0)
        assert raw(text_part._payload) == b"bob@example.net: User unknown"
        status = msg.get_payload(1).get_payload()
        assert [dict(block.items()) for block in status] == [
            {"Reporting-MTA": "dns; mx.example.net"},
            {"Final-Recipient": "rfc822; bob@example.net", "Action": "failed",
             "Status": "5.1.1"}]
    else:
        # every byte of the body, line ends CRLF as LMTP carried them
        assert raw(msg._payload) == BODY.replace(b"\n", b"\r\n")
        assert msg["Subject"] == "kit " + queue


def test_message_id_and_headers_survive(mta):
    submit_ok(mta.sendmail, SENDER, "test@" + HOST,
              message("headers", extra=b"X-Custom: kept as is\n"))
    msg, _ = only_message(mta.mailman, "in")
    assert msg["Message-ID"] == "<headers@example.org>"
    assert msg["X-Custom"] == "kept as is"
    # Sendmail's Received: line names the mailer's host, mm-handler's trace header
    assert msg["Received"] and "mx.example.test" in msg["Received"]
    assert msg["X-Mailman-Handler"].startswith("mm-handler ")


# -- 2. unknown list, policy reject: a DSN with our words ---------------------------

def test_unknown_list_gets_a_dsn_with_the_reason_and_the_template(mta, handler):
    vt = mta.maps_dir / "virtusertable.db"
    hidden = mta.maps_dir / "virtusertable.db.hidden"
    # without the SMTP-time maps (the -o map is skipped when missing), the
    # address reaches mm-handler, which refuses it
    vt.rename(hidden)
    try:
        # as from the Internet: over SMTP, delivered before the final reply
        out = mta.sendmail.smtp(SENDER, ["nolist@" + HOST],
                                data=message("unknown", to="nolist@" + HOST))
    finally:
        hidden.rename(vt)
    assert out["rcpt"][0].code == 250 and out["data"].code == 250, out
    assert mta.sendmail.queue_ids() == [], mta.sendmail.mailq()
    assert mta.mailman.queued() == {}
    dsns = [c for c in mta.sendmail.captured() if c.recipient == "alice"]
    assert len(dsns) == 1, mta.sendmail.captured()
    dsn = dsns[0].text
    assert "Transcript of session follows" in dsn
    # our one line on stderr...
    assert '5.1.1 <nolist@%s>: no list named "nolist" here' % HOST in dsn, dsn
    # ...the template's text on stdout, as the sender's own words would render it
    # (rendered inside the namespace: $server is the host name there)
    rendered = mta.sendmail.ns.run([handler, "-C", mta.config, "--render-template",
                                    "nolist@" + HOST], check=True).stdout.decode()
    lines = [line.strip() for line in rendered.splitlines() if line.strip()]
    assert len(lines) > 3
    for line in lines:
        assert line in dsn, (line, dsn)
    # Sendmail's own verdict: user unknown, 5.1.1, the mailman mailer
    assert "Status: 5.1.1" in dsn
    assert "Diagnostic-Code: X-Unix; 67" in dsn or "X-Unix" in dsn
    log = "\n".join(mta.sink.lines())
    assert "dsn=5.1.1" in log and "mailer=mailman" in log, log


# -- 3. runner down: queued, no DSN; back up + -qf: delivered exactly once ---------

def test_runner_down_keeps_mail_queued_then_one_delivery(mta):
    mta.mailman.stop()
    result = mta.sendmail.submit(SENDER, "test@" + HOST, message("while down"))
    assert result.returncode == 0, result
    ids = mta.sendmail.queue_ids()
    assert len(ids) == 1, mta.sendmail.mailq()
    mailq = mta.sendmail.mailq()
    assert ids[0] in mailq and "test@" + HOST in mailq, mailq
    assert mta.sendmail.captured() == []            # no DSN, no warning
    log = "\n".join(mta.sink.lines())
    assert "stat=Deferred" in log, log
    assert re.search(r"mm-handler\[\d+\]: .*recipient=test@%s .*status=75"
                     % re.escape(HOST), log), log
    assert mta.mailman.queued() == {}

    mta.mailman.start()
    run = mta.sendmail.run_queue()
    assert run.returncode == 0, run
    assert mta.sendmail.queue_ids() == [], mta.sendmail.mailq()
    msg, _ = only_message(mta.mailman, "in")
    assert msg["Subject"] == "while down"
    assert raw(msg._payload) == BODY.replace(b"\n", b"\r\n")
    # a second queue run finds nothing to do: exactly one delivery
    mta.sendmail.run_queue()
    assert mta.mailman.queued() == {"in": 1}
    assert mta.sendmail.captured() == []


def test_config_unreadable_by_the_mailer_user_keeps_mail_queued(mta):
    """README.sendmail's troubleshooting: U= must reach the configuration."""
    mta.config.chmod(0o600)
    try:
        result = mta.sendmail.submit(SENDER, "test@" + HOST, message("no config"))
        assert result.returncode == 0
        assert len(mta.sendmail.queue_ids()) == 1
        assert mta.sendmail.captured() == []
        log = "\n".join(mta.sink.lines())
        assert "not readable by uid" in log and "exit 75" in log, log
    finally:
        mta.config.chmod(0o644)
    mta.sendmail.run_queue()
    assert mta.sendmail.queue_ids() == []
    only_message(mta.mailman, "in")


# -- 4. SMTP-time maps, kept current by the plug-in ---------------------------------

VALID = ["test", "test-request", "test-owner", "owner-test", "test-bounces",
         "test-bounces+bob=example.net", "test-confirm+0123abcdef",
         "test-join", "test-leave", "test-subscribe", "test-unsubscribe",
         "test-admin", "Test", "TEST-Request", "test+anything"]
INVALID = ["nolist", "test-foo", "test-", "tes", "owner-nolist",
           "nolist-bounces+bob=example.net"]


def rcpt_codes(sendmail, locals_):
    out = sendmail.smtp(SENDER, ["%s@%s" % (l, HOST) for l in locals_])
    assert out["mail"].code == 250, out
    return {l: r.code for l, r in zip(locals_, out["rcpt"])}, out


def test_rcpt_time_answers_from_the_generated_maps(mta):
    codes, out = rcpt_codes(mta.sendmail, VALID + INVALID)
    assert codes == {**{l: 250 for l in VALID}, **{l: 550 for l in INVALID}}, out
    for reply in out["rcpt"]:
        if reply.code == 550:
            assert reply.lines[0].startswith("5.1.1 "), reply
            assert "No such list address here" in reply.text
    # the role addresses still go to people (captured via the aliases)
    codes, out = rcpt_codes(mta.sendmail, ["postmaster", "abuse", "root"])
    assert set(codes.values()) == {250}, out
    assert "postmaster@capture.test" in mta.sendmail.verify("postmaster@" + HOST)


def test_mailman_create_and_remove_update_the_maps_with_no_manual_step(mta):
    assert rcpt_codes(mta.sendmail, ["fresh", "fresh-bounces+x=y.example"])[0] == {
        "fresh": 550, "fresh-bounces+x=y.example": 550}
    mta.mailman.create_list("fresh@" + HOST)
    try:
        codes, out = rcpt_codes(mta.sendmail, ["fresh", "fresh-request",
                                               "fresh-bounces+x=y.example",
                                               "test", "nolist"])
        assert codes == {"fresh": 250, "fresh-request": 250,
                         "fresh-bounces+x=y.example": 250, "test": 250,
                         "nolist": 550}, out
        # and mail to it is delivered over SMTP, into Mailman
        out = mta.sendmail.smtp(SENDER, ["fresh@" + HOST],
                                data=message("fresh list", to="fresh@" + HOST))
        assert out["data"].code == 250, out
        assert mta.sendmail.queue_ids() == [], mta.sendmail.mailq()
        msg, data = only_message(mta.mailman, "in")
        assert data["listid"] == "fresh." + HOST
        assert raw(msg._payload) == BODY.replace(b"\n", b"\r\n")
    finally:
        mta.mailman.mailman("remove", "fresh@" + HOST)
    assert rcpt_codes(mta.sendmail, ["fresh", "test"])[0] == {"fresh": 550,
                                                              "test": 250}
    source = (mta.maps_dir / "virtusertable").read_text()
    assert "fresh" not in source and "test@" + HOST in source
    assert not list(mta.maps_dir.glob("*.new*"))


def test_command_line_submission_to_unknown_list_is_refused_by_the_maps(mta):
    result = mta.sendmail.submit(SENDER, "nolist@" + HOST, message("refused"))
    # sendmail itself refuses (the maps), mm-handler never runs
    assert result.returncode == 67, result
    assert b"No such list address here" in result.stderr + result.stdout
    assert "mm-handler[" not in "\n".join(mta.sink.lines())
    assert mta.mailman.queued() == {}


REMOTE_CLIENT = r"""
import json, smtplib, sys
rcpts = json.loads(sys.argv[1])
s = smtplib.SMTP("127.0.0.1", 25, local_hostname="client.example.net",
                 source_address=("127.0.0.2", 0), timeout=30)
s.ehlo()
out = {"mail": s.mail("alice@example.org"), "rcpt": {}}
assert out["mail"][0] == 250, out
for r in rcpts:
    code, text = s.rcpt(r)
    out["rcpt"][r] = (code, text.decode())
s.rset()
s.quit()
print(json.dumps(out["rcpt"]))
"""


def test_remote_smtp_client_gets_550_and_250_without_relaying_denied(mta):
    """The daemon, as the Internet sees it: a client from another address."""
    import json
    import signal
    import time
    from tests.peers.mailman3 import listening
    from tests.peers.sendmail import SENDMAIL
    daemon = mta.sendmail.ns.popen([SENDMAIL, "-bD"])
    try:
        deadline = time.monotonic() + 20
        while not listening(25, daemon.pid):
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        addresses = ["test@" + HOST, "test-bounces+bob=example.net@" + HOST,
                     "owner-test@" + HOST, "postmaster@" + HOST,
                     "nolist@" + HOST, "test-foo@" + HOST,
                     "x@%s.mailman.invalid" % HOST, "someone@elsewhere.example"]
        proc = mta.sendmail.ns.run(["/usr/bin/python3", "-I", "-c", REMOTE_CLIENT,
                                    json.dumps(addresses)], check=True)
        replies = json.loads(proc.stdout)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
    codes = {r: code for r, (code, text) in replies.items()}
    assert codes == {
        "test@" + HOST: 250, "test-bounces+bob=example.net@" + HOST: 250,
        "owner-test@" + HOST: 250, "postmaster@" + HOST: 250,
        "nolist@" + HOST: 550, "test-foo@" + HOST: 550,
        # the pseudo-domain is no back door, and we relay for nobody
        "x@%s.mailman.invalid" % HOST: 550, "someone@elsewhere.example": 550}, replies
    assert "No such list address here" in replies["nolist@" + HOST][1]
    assert "Relaying denied" in replies["x@%s.mailman.invalid" % HOST][1]


def test_mailman_aliases_regenerates_into_a_directory(mta, public_tmp):
    where = public_tmp / "sendmail-mm3" / "aliases-out"
    where.mkdir(exist_ok=True)
    mta.mailman.mailman("aliases", "--directory", str(where))
    rows = (where / "virtusertable").read_text()
    assert ("test-request@%s\ttest-request%%3@%s.mailman.invalid" % (HOST, HOST)
            in rows.splitlines())
    assert (where / "virtusertable.db").exists()
    assert (where / "virtuser-domains").read_text() == HOST + "\n"


def test_plugin_failure_rolls_the_new_list_back(mta):
    text = mta.config.read_text()
    assert "\nmakemap = " in text
    mta.config.write_text(text.replace("\nmakemap = ", "\nmakemap = /nonexistent/makemap\n#"))
    before = (mta.maps_dir / "virtusertable").read_bytes()
    try:
        with pytest.raises(RuntimeError) as info:
            mta.mailman.create_list("broken@" + HOST)
        assert "cannot run /nonexistent/makemap" in str(info.value)
    finally:
        mta.config.write_text(text)
    names = mta.mailman.mailman("lists", "--quiet").stdout.split()
    assert "broken@" + HOST not in names and "test@" + HOST in names
    assert (mta.maps_dir / "virtusertable").read_bytes() == before
    assert rcpt_codes(mta.sendmail, ["broken"])[0] == {"broken": 550}
