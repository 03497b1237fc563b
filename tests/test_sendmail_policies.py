"""Refusal policies and transient faults, through the real Sendmail 8.17.

Everything runs inside the private namespace of tests/peers/sendmail.py:
Sendmail built from the kit, the real Mailman 3 LMTP runner (or the
Mailman 2 wrapper stand-in), and, for the ``bounce`` policy, the path a
real site has for mm-handler's letter: ``/usr/sbin/sendmail`` (the default
[bounce] sendmail, Debian's setgid-smmsp binary) run as the mailer's user
``list`` is a mail submission program; it reads Debian's own submit.cf and
hands the letter over SMTP to the MTA daemon on 127.0.0.1:25, which routes
the sender's domain to the capture mailer.

1. unknown list, issue 3: ``bounce`` sends our RFC 3464 letter with a null
   envelope sender and no Sendmail DSN; ``discard`` sends nothing, exit 0;
   ``bounce`` for a null-sender original sends nothing.
2. transient faults, issue 5: the message stays in Sendmail's queue with
   no DSN, and once the fault is cleared one ``sendmail -qf`` delivers it
   exactly once.
"""

import configparser
import email
import email.policy
import grp
import os
import re
import signal
import subprocess
import time

import pytest

from tests.peers.mailman3 import free_port, listening
from tests.conftest import dsn_message
from tests.peers.sendmail import LIST_DOMAIN, SENDMAIL, Mailman3Site, mailman2_host

SENDER = "alice@example.org"
HOST = LIST_DOMAIN
LIST = "test@" + HOST
UNKNOWN = "nolist@" + HOST
BODY = b"Hello list.\nFrom the start of a line\n8-bit: caf\xc3\xa9\n\nlast line\n"


def message(subject, to=LIST):
    return (b"From: Alice <alice@example.org>\n"
            b"To: " + to.encode() + b"\n"
            b"Subject: " + subject.encode() + b"\n"
            b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@example.org>\n"
            b"Date: Sun, 22 Nov 2026 02:44:03 +0000\n"
            b"\n" + BODY)


# -- configuration edits, undone after each test ---------------------------------

def edit_config(path, changes):
    """Set {section: {key: value}} in mm-handler's config file (None deletes)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    for section, keys in changes.items():
        if not parser.has_section(section):
            parser.add_section(section)
        for key, value in keys.items():
            if value is None:
                parser.remove_option(section, key)
            else:
                parser.set(section, key, str(value))
    with open(path, "w") as f:
        parser.write(f)
    os.chmod(path, 0o644)


class restored_config:
    """Keep the config text (and mode) and put it back afterwards."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.text = self.path.read_bytes()
        return self

    def __exit__(self, *exc):
        self.path.write_bytes(self.text)
        os.chmod(self.path, 0o644)


# -- the mail submission program and the MTA daemon (for the bounce letter) -------

def install_msp(sm):
    """Debian's own submit.mc -> /etc/mail/submit.cf, and the client queue
    root:smmsp 2770, as the sendmail-bin package leaves them."""
    with open("/etc/mail/submit.mc") as f:
        (sm.etc_mail / "submit.mc").write_text(f.read())
    proc = sm.ns.run(["m4", "/etc/mail/submit.mc"], check=True)
    assert not proc.stderr.strip(), proc.stderr
    sm.submit_cf = proc.stdout
    client_queue = sm.root / "mqueue-client"
    os.chown(client_queue, 0, grp.getgrnam("smmsp").gr_gid)
    client_queue.chmod(0o2770)
    # what mm-handler's default [bounce] sendmail is inside, too
    assert os.path.realpath("/usr/sbin/sendmail") == SENDMAIL


class Daemon:
    """`sendmail -bD` inside the namespace: the MTA listening on port 25,
    with /etc/mail/submit.cf in place for the submission program.

    submit.cf is there only meanwhile: with it, root's own command-line
    submissions would go through the MSP too (the tests use -Am then)."""

    def __init__(self, sm):
        self.submit_cf = sm.etc_mail / "submit.cf"
        self.submit_cf.write_bytes(sm.submit_cf)
        self.submit_cf.chmod(0o644)
        self.proc = sm.ns.popen([SENDMAIL, "-bD"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not listening(25, self.proc.pid):
            assert self.proc.poll() is None, "sendmail -bD exited"
            assert time.monotonic() < deadline, "sendmail -bD not listening"
            time.sleep(0.05)

    def stop(self):
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        finally:
            self.submit_cf.unlink()


def wait_for(predicate, timeout=15, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def client_queue_files(sm):
    return [p for p in (sm.root / "mqueue-client").iterdir()
            if p.name.startswith(("qf", "df"))]


def sendmail_lines(log, queue_id):
    return [line for line in log if " %s: " % queue_id in line]


# -- fixtures: Sendmail + Mailman 3, and Sendmail + the Mailman 2 wrapper -----------

@pytest.fixture(scope="module")
def site(public_tmp, handler, sendmail_binary):
    from tests.conftest import MAILMAN_VENV
    site = Mailman3Site(public_tmp / "sendmail-policies-mm3", handler, MAILMAN_VENV,
                        lists=("test",))
    try:
        site.start()
        install_msp(site.sendmail)
        yield site
    finally:
        site.stop()


@pytest.fixture
def mta(site):
    site.reset()
    for path in client_queue_files(site.sendmail):
        path.unlink()
    with restored_config(site.config):
        yield site
    site.sendmail.reset()


@pytest.fixture(scope="module")
def mm2_host(public_tmp, handler, sendmail_binary):
    with mailman2_host(public_tmp / "sendmail-policies-mm2", handler, ["test"],
                       mailman2={"timeout": "60"}) as host:
        yield host


@pytest.fixture
def mm2(mm2_host):
    mm2_host.reset()
    mm2_host.wrapper.clear()
    mm2_host.wrapper.configure(group="list", fault=None, after_read=False)
    open(mm2_host.wrapper.log_path, "a").close()
    os.chmod(mm2_host.wrapper.log_path, 0o666)     # the wrapper runs as "list"
    with restored_config(mm2_host.config):
        yield mm2_host
    mm2_host.wrapper.configure(group="list", fault=None, after_read=False)


# =================================================================================
# 1. unknown list: the bounce and discard policies (issue 3)
# =================================================================================

def submit_to_unknown_list(mta, sender, data):
    """-odi submission to nolist@ with the SMTP-time maps out of the way
    (the -o map is skipped when missing), so that mm-handler decides."""
    vt = mta.maps_dir / "virtusertable.db"
    hidden = mta.maps_dir / "virtusertable.db.hidden"
    vt.rename(hidden)
    try:
        # -Am: as the MTA, not through the submission program
        result = mta.sendmail.sendmail("-Am", "-odi", "-oi", "-f", sender, UNKNOWN,
                                       input=data)
    finally:
        hidden.rename(vt)
    assert result.returncode == 0, result
    # the original is not queued (the daemon's queue may hold our letter)
    sm = mta.sendmail
    assert UNKNOWN not in sm.mailq(), sm.mailq()
    assert mta.mailman.queued() == {}
    return result


def letter_submitted(log):
    """Syslog lines of Sendmail taking a letter with mm-handler's Message-ID."""
    return [l for l in log if re.search(r"from=<>, .*msgid=<[^>]*mm-handler@", l)]


def queues_empty(sm):
    return wait_for(lambda: not client_queue_files(sm) and not sm.queue_ids())


def mailman_mailer_line(log, rcpt=UNKNOWN):
    lines = [l for l in log if re.search(r"to=<?%s>?," % re.escape(rcpt), l)
             and "mailer=mailman" in l]
    assert len(lines) == 1, "\n".join(log)
    return lines[0]


def test_bounce_policy_sends_our_report_with_a_null_envelope_sender(mta, handler):
    edit_config(mta.config, {"mm-handler": {"unknown_list": "bounce"}})
    sm = mta.sendmail
    daemon = Daemon(sm)
    try:
        submit_to_unknown_list(mta, SENDER, message("bounce me", to=UNKNOWN))
        assert wait_for(lambda: sm.captured()), "\n".join(sm.log())
        time.sleep(0.5)     # anything else (a Sendmail DSN) would come now too
        assert queues_empty(sm), (client_queue_files(sm), sm.mailq())
    finally:
        daemon.stop()
    letters = sm.captured()
    assert len(letters) == 1, letters        # ours, and no Sendmail DSN
    letter = letters[0]
    assert letter.recipient == "alice" and letter.host == "example.org", letter
    # the envelope sender the capture mailer got: the null path, which
    # Sendmail hands a mailer as -r MAILER-DAEMON
    assert letter.argv[:2] == ["-r", "MAILER-DAEMON"], letter.argv

    msg = email.message_from_bytes(letter.data, policy=email.policy.compat32)
    assert "Transcript of session follows" not in letter.text     # not Sendmail's
    # From: MAILER-DAEMON@mx.example.test, masqueraded by the kit's .mc
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@%s>" % HOST
    # (the capture mailer's R=EnvToL strips the domain in headers too)
    assert msg["To"] in ("<%s>" % SENDER, "<alice>"), msg["To"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert "@mx.example.test>" in msg["Message-ID"] and "mm-handler" in msg["Message-ID"]
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    text, status, original = msg.get_payload()
    # the template, as `mm-handler --render-template` renders it in there
    assert text.get_content_type() == "text/plain"
    rendered = sm.ns.run([handler, "-C", mta.config, "--render-template", UNKNOWN],
                         check=True).stdout.decode()
    body = text.get_payload(decode=True).decode()
    lines = [line.strip() for line in rendered.splitlines() if line.strip()]
    assert len(lines) > 3 and 'no list named "nolist" here' in rendered
    for line in lines:
        assert line in body, (line, body)
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_recipient["Final-Recipient"] == "rfc822; " + UNKNOWN
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert original.get_content_type() == "message/rfc822"
    inner = original.get_payload(0)
    assert inner["Subject"] == "bounce me"
    assert inner["Message-ID"] == "<bounce.me@example.org>"
    assert BODY.decode("utf-8") in letter.text

    log = sm.log()
    joined = "\n".join(log)
    # the original: handed to the mailman mailer, delivered (exit 0)
    assert "stat=Sent" in mailman_mailer_line(log), joined
    assert re.search(r"mm-handler\[\d+\]: sender=<%s> recipient=%s .*status=0 .*"
                     r"bounce sent to <%s>" % (re.escape(SENDER), re.escape(UNKNOWN),
                                               re.escape(SENDER)), joined), joined
    # the letter: submitted by the list user with a null sender, and the
    # daemon's copy too went out with from=<>
    submitted = letter_submitted(log)
    assert len(submitted) == 2, joined     # the submission program, the daemon
    msp, mta_from = submitted
    assert "relay=root@localhost" in msp, joined      # the mailer: real uid 0
    assert "daemon=MTA-v4" in mta_from and "[127.0.0.1]" in mta_from, joined
    daemon_id = re.search(r"sendmail\[\d+\]: (\w+): from=<>,", mta_from).group(1)
    assert any(re.search(r"to=<?%s>?," % re.escape(SENDER), l) and "mailer=capture" in l and "stat=Sent" in l
               for l in sendmail_lines(log, daemon_id)), joined
    # no DSN of Sendmail's anywhere
    assert "DSN:" not in joined and "return to sender" not in joined, joined


def submit_expecting_no_letter(mta, sender, data):
    """Submit to the unknown list with the daemon up (a letter, if one were
    sent, would arrive); assert none did; return Sendmail's log lines."""
    sm = mta.sendmail
    daemon = Daemon(sm)
    try:
        submit_to_unknown_list(mta, sender, data)
        time.sleep(1.0)
        assert queues_empty(sm), (client_queue_files(sm), sm.mailq())
    finally:
        daemon.stop()
    assert sm.captured() == []
    log = sm.log()
    return log, "\n".join(log)


def test_discard_policy_sends_nothing_and_exits_0(mta):
    edit_config(mta.config, {"mm-handler": {"unknown_list": "discard"}})
    log, joined = submit_expecting_no_letter(
        mta, SENDER, message("discard me", to=UNKNOWN))
    assert "stat=Sent" in mailman_mailer_line(log), joined
    assert re.search(r"mm-handler\[\d+\]: sender=<%s> recipient=%s .*status=0 "
                     r".*discarded: no list named ['\"]nolist['\"] here"
                     % (re.escape(SENDER), re.escape(UNKNOWN)), joined), joined
    assert letter_submitted(log) == [], joined     # nothing submitted
    assert "DSN:" not in joined


def test_bounce_policy_sends_nothing_for_a_null_sender_original(mta):
    edit_config(mta.config, {"mm-handler": {"unknown_list": "bounce"}})
    log, joined = submit_expecting_no_letter(
        mta, "<>", dsn_message(UNKNOWN, "<dsn.policies@mx.example.net>"))
    assert "stat=Sent" in mailman_mailer_line(log), joined
    assert re.search(r"mm-handler\[\d+\]: no bounce for %s: null or unusable "
                     r"envelope sender" % re.escape(UNKNOWN), joined), joined
    assert re.search(r"mm-handler\[\d+\]: sender=<> recipient=%s .*status=0"
                     % re.escape(UNKNOWN), joined), joined
    assert letter_submitted(log) == [], joined
    assert "DSN:" not in joined


# =================================================================================
# 2. transient faults: queued, no DSN; fixed + one -qf: exactly one delivery (issue 5)
# =================================================================================

def deferred_then_delivered_once(sm, delivered, subject, break_, fix, reason):
    """Submit with the fault on; check the deferral; fix; -qf twice."""
    break_()
    try:
        result = sm.submit(SENDER, LIST, message(subject))
        assert result.returncode == 0, result   # 0 even when deferred: look closer
        ids = sm.queue_ids()
        assert len(ids) == 1, sm.mailq()
        mailq = sm.mailq()
        assert ids[0] in mailq and LIST in mailq, mailq
        assert sm.captured() == []              # no DSN, no warning
        assert delivered() == 0
        log = sm.log()
        joined = "\n".join(log)
        # Sendmail's verdict on the mailer's exit status 75
        to_lines = [l for l in sendmail_lines(log, ids[0])
                    if re.search(r"to=<?%s>?," % re.escape(LIST), l)
                    and "mailer=mailman" in l]
        assert len(to_lines) == 1, joined
        assert "dsn=4.0.0, stat=Deferred: mailman mailer (%s) exited with " \
            "EX_TEMPFAIL" % sm.handler in to_lines[0], to_lines
        # and mm-handler's own account: exit 75, the reason
        assert re.search(reason, joined), (reason, joined)
        assert re.search(r"(status=75|exit 75)", joined), joined
    finally:
        fix()
    sm.syslog.clear()
    run = sm.run_queue()
    assert run.returncode == 0, run
    assert sm.queue_ids() == [], sm.mailq()
    assert delivered() == 1
    log = "\n".join(sm.log())
    assert re.search(r"%s: to=<?%s>?,.*mailer=mailman.*stat=Sent" % (ids[0], re.escape(LIST)),
                     log), log
    # a second queue run finds nothing: exactly one delivery
    sm.run_queue()
    assert delivered() == 1
    assert sm.queue_ids() == []
    # no DSN at any point, so mm-handler's stderr line ("...; kept for
    # retry") never reached the sender
    assert sm.captured() == []
    return ids[0]


def mm3_delivered(mta):
    return lambda: sum(mta.mailman.queued().values())


def test_fault_config_unreadable_by_the_mailer_user(mta):
    def break_():
        mta.config.chmod(0o600)

    def fix():
        mta.config.chmod(0o644)
    deferred_then_delivered_once(
        mta.sendmail, mm3_delivered(mta), "config unreadable", break_, fix,
        r"mm-handler\[\d+\]: site fault, exit 75: .*not readable by uid")
    (msg, data), = mta.mailman.read_queue("in")
    assert msg["Subject"] == "config unreadable"


def test_fault_lmtp_endpoint_closed_then_config_corrected(mta):
    closed = free_port()
    edit_config(mta.config, {"mailman3": {"lmtp": "127.0.0.1:%d" % closed}})

    def fix():
        edit_config(mta.config, {"mailman3": {"lmtp": mta.mailman.endpoint}})
    deferred_then_delivered_once(
        mta.sendmail, mm3_delivered(mta), "lmtp closed", lambda: None, fix,
        r"mm-handler\[\d+\]: sender=<%s> recipient=%s .*status=75 .*127\.0\.0\.1:%d"
        % (re.escape(SENDER), re.escape(LIST), closed))
    (msg, data), = mta.mailman.read_queue("in")
    assert msg["Subject"] == "lmtp closed"
    assert data["listid"] == "test." + HOST


MM2_FAULTS = [
    # (id, wrapper configuration while broken, config changes, mm-handler's reason)
    ("group-mismatch-exit-2", {"group": "root"}, {},
     r"status=75 .*exit 2"),
    ("exit-1", {"fault": "exit", "code": 1}, {},
     r"status=75 .*exit 1"),
    ("killed-by-signal-9", {"fault": "signal", "signal": 9}, {},
     r"status=75 .*killed by signal 9"),
    ("timeout", {"fault": "sleep", "seconds": 2.5}, {"mailman2": {"timeout": "1"}},
     r"status=75 .*did not finish within 1 s"),
]


@pytest.mark.parametrize("wrapper_fault,config_change,reason",
                         [row[1:] for row in MM2_FAULTS],
                         ids=[row[0] for row in MM2_FAULTS])
def test_fault_mailman2_wrapper(mm2, wrapper_fault, config_change, reason):
    def break_():
        mm2.wrapper.configure(**wrapper_fault)
        if config_change:
            edit_config(mm2.config, config_change)

    def fix():
        mm2.wrapper.configure(group="list", fault=None)
        if config_change:
            edit_config(mm2.config, {"mailman2": {"timeout": "60"}})
    started = time.monotonic()
    deferred_then_delivered_once(
        mm2, lambda: len(mm2.wrapper.queued()), "mm2 fault",
        break_, fix,
        r"mm-handler\[\d+\]: sender=<%s> recipient=%s .*%s"
        % (re.escape(SENDER), re.escape(LIST), reason))
    if wrapper_fault.get("fault") == "sleep":
        # the wrapper mm-handler gave up on was killed: had it lived, it
        # would have enqueued a second copy by now
        time.sleep(max(0.0, started + wrapper_fault["seconds"] + 0.5
                       - time.monotonic()))
    (path, data), = mm2.wrapper.queued()
    assert data.startswith(b"From %s " % SENDER.encode())
    assert data.endswith(b"\n\n" + BODY)
    outcomes = [r["outcome"] for r in mm2.wrapper.runs()]
    assert outcomes[-1] == "queued" and outcomes.count("queued") == 1, outcomes
