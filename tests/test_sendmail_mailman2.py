"""The same Sendmail kit delivering to Mailman 2's mail wrapper (a stand-in).

Sendmail is built from sendmail/mailman.mc exactly as for Mailman 3; only
mm-handler's configuration differs (backend mailman2).  The wrapper is
tests/peers/mailman2_wrapper.py, which follows Mailman 2's contract
(../shared/docs/mailman2-wrapper.md): it checks the caller's group against
its compiled-in mail group ("list" here, the kit's U= group), and enqueues
stdin, From_ line included, into qfiles/in/.  The SMTP-time maps are written
by `mm-handler maps --makemap` run as the list user, as a cron job or
Mailman 2's mm_cfg hook would.
"""

import os
import pwd
import re

import pytest

from tests.peers.sendmail import LIST_DOMAIN, mailman2_host

SENDER = "alice@example.org"
HOST = LIST_DOMAIN
BODY = (b"Hello list.\n"
        b".\n"
        b"From the start of a line\n"
        b"8-bit: caf\xc3\xa9 \xe9\xff\n"
        b"\n"
        b"last line\n")


def message(subject, to):
    return (b"From: Alice <alice@example.org>\n"
            b"To: " + to.encode() + b"\n"
            b"Subject: " + subject.encode() + b"\n"
            b"Message-ID: <" + subject.encode() + b"@example.org>\n"
            b"Date: Sun, 22 Nov 2026 02:44:03 +0000\n"
            b"\n" + BODY)


@pytest.fixture(scope="module")
def mm2(public_tmp, handler, sendmail_binary):
    with mailman2_host(public_tmp / "sendmail-mm2", handler, ["test", "news"]) as host:
        yield host


@pytest.fixture
def mta(mm2):
    mm2.reset()
    mm2.wrapper.clear()
    open(mm2.wrapper.log_path, "a").close()
    os.chmod(mm2.wrapper.log_path, 0o666)     # the wrapper runs as "list"
    yield mm2


def make_maps_as_list_user(host, handler):
    return host.ns.run(["setpriv", "--reuid=list", "--regid=list", "--clear-groups",
                        handler, "maps", "-C", host.config, "--makemap"], env={})


CASES = [
    # (recipient, envelope sender, the wrapper's argv)
    ("test@" + HOST, SENDER, ["post", "test"]),
    ("test-request@" + HOST, SENDER, ["request", "test"]),
    ("test-bounces+bob=example.net@" + HOST, "<>", ["bounces", "test"]),
    ("owner-test@" + HOST, SENDER, ["owner", "test"]),
    ("test-admin@" + HOST, SENDER, ["admin", "test"]),
]


@pytest.mark.parametrize("rcpt,sender,argv", CASES,
                         ids=["post", "request", "bounces-verp-dsn", "owner-LIST", "admin"])
def test_list_address_reaches_the_wrapper(mta, rcpt, sender, argv):
    result = mta.submit(sender, rcpt, message("mm2-" + argv[0], rcpt))
    assert result.returncode == 0, result
    assert mta.queue_ids() == [], mta.mailq() + "\n".join(mta.log())
    runs = mta.wrapper.runs()
    assert [r["argv"] for r in runs] == [argv], runs
    assert runs[0]["gid"] == pwd.getpwnam("list").pw_gid   # the U= group
    (path, data), = mta.wrapper.queued()
    # the From_ line first, with the envelope sender (MAILER-DAEMON for <>)
    from_line = data.split(b"\n", 1)[0]
    assert re.match(rb"From %s \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$"
                    % (b"MAILER-DAEMON" if sender == "<>" else SENDER.encode()),
                    from_line), from_line
    head, body = data.split(b"\n\n", 1)
    assert body == BODY                               # byte-exact, LF as given
    assert b"\nX-Mailman-Handler: mm-handler " in head
    assert b"\nSubject: mm2-" + argv[0].encode() + b"\n" in head
    log = "\n".join(mta.log())
    assert "mailer=mailman" in log and "stat=Sent" in log, log


def test_unknown_list_is_refused_with_a_dsn(mta):
    db = mta.maps_dir / "virtusertable.db"
    if db.exists():             # without the SMTP-time maps
        db.unlink()
    out = mta.smtp(SENDER, ["nolist@" + HOST], data=message("nolist", "nolist@" + HOST))
    assert out["data"].code == 250, out            # accepted by Sendmail...
    assert mta.wrapper.runs() == []                # ...and refused by mm-handler
    dsn, = [c.text for c in mta.captured() if c.recipient == "alice"]
    assert '5.1.1 <nolist@%s>: no list named "nolist" here' % HOST in dsn
    assert "Status: 5.1.1" in dsn


def test_wrapper_group_mismatch_keeps_mail_queued(mta):
    mta.wrapper.configure(group="root")
    try:
        result = mta.submit(SENDER, "test@" + HOST, message("mismatch", "test@" + HOST))
        assert result.returncode == 0
        assert len(mta.queue_ids()) == 1            # kept, no bounce
        assert mta.captured() == []
        assert [r["outcome"] for r in mta.wrapper.runs()] == ["exit 2"]
    finally:
        mta.wrapper.configure(group="list")
    mta.run_queue()
    assert mta.queue_ids() == []
    assert len(mta.wrapper.queued()) == 1


def test_maps_written_by_the_list_user_refuse_at_rcpt(mta, handler):
    made = make_maps_as_list_user(mta, handler)
    assert made.returncode == 0, made
    assert b"2 lists in 1 domain" in made.stdout
    for name in ("virtusertable.db", "mailertable.db"):
        st = os.stat(mta.maps_dir / name)
        assert st.st_uid == pwd.getpwnam("list").pw_uid and st.st_mode & 0o004
    valid = ["test", "test-admin", "test-bounces+bob=example.net",
             "test-confirm+0123abcd", "owner-news", "news-request", "News"]
    invalid = ["nolist", "test-foo", "owner-nolist"]
    out = mta.smtp(SENDER, ["%s@%s" % (l, HOST) for l in valid + invalid])
    codes = [r.code for r in out["rcpt"]]
    assert codes == [250] * len(valid) + [550] * len(invalid), out
    # a new list: one more `mm-handler maps` run and it is accepted
    mta.wrapper.add_list("fresh")
    try:
        assert mta.smtp(SENDER, ["fresh@" + HOST])["rcpt"][0].code == 550
        assert make_maps_as_list_user(mta, handler).returncode == 0
        out = mta.smtp(SENDER, ["fresh@" + HOST], data=message("fresh", "fresh@" + HOST))
        assert out["rcpt"][0].code == 250 and out["data"].code == 250, out
        assert [r["argv"] for r in mta.wrapper.runs()] == [["post", "fresh"]]
    finally:
        import shutil
        shutil.rmtree(os.path.join(mta.wrapper.lists_dir, "fresh"))
        make_maps_as_list_user(mta, handler)
