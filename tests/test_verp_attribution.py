"""Issue 9: a VERP bounce reaches the member through Delivered-To.

Neither Mailman learns the envelope recipient from mm-handler: Mailman 2's
wrapper gets only ACTION and LIST, Mailman 3's LMTP runner drops the
``+detail`` of the RCPT.  Both bounce runners look for the VERP address
(``LIST-bounces+user=example.org@DOMAIN``) only in To:, Delivered-To:,
Envelope-To: and Apparently-To:.  A bounce whose own headers lack it and
whose DSN names a forwarded address (not the member) is attributed to the
member only because mm-handler writes ``Delivered-To:`` with the whole
envelope recipient ([mm-handler] delivered_to, default yes).

Shown with the real programs, for delivered_to = yes (attributed to
user@example.org) and = no (not attributed: the control that lets this
test fail):

- Mailman 2.1 (tests/peers/mailman2_real.py, in its private namespace):
  the VERP address is built with Mailman's own VERP_FORMAT as
  SMTPDirect.verpdeliver does; the DSN goes through the installed
  mm-handler and the real wrapper into qfiles/bounces; Mailman's own
  Switchboard.dequeue + BounceRunner.verp_bounce (mm_cfg.VERP_REGEXP) read
  the queued message; then Mailman's bounce runner runs once
  (``bin/qrunner -r Bounce -o``) and the list's bounce info for the member
  is read back.  Mailman's Python runs as Mailman runs it: /usr/bin/python3,
  its bin/paths.py, as the mailman user.
- Mailman 3.3.10, the whole of it (``mailman start``: all twelve runners,
  REST included) with its outgoing SMTP pointed at a sink of this test:
  the member's post goes in through mm-handler, Mailman VERPs it
  ([mta] verp_delivery_interval: 1) and the sink reads the VERP envelope
  sender; the DSN goes to that address through mm-handler; Mailman's bounce
  runner records the bounce event, and the bounce log and the member's
  bounce_score say to whom it was attributed.
"""

import json
import subprocess
import threading
import time

import pytest

from tests.peers.mailman3 import DOMAIN, Mailman3Site, free_port

pytest_plugins = ["tests.peers.mailman2_real"]

HOST = DOMAIN
MEMBER = "user@example.org"
FORWARDED = "forwarded-%s@elsewhere.example"    # where the member forwards to
FLAGS = ["yes", "no"]


def list_name(flag):
    return "verp-" + flag


def dsn(to, failed, message_id):
    """A DSN as the forwarding site's MTA sends it: To: is the list's plain
    -bounces address (not the VERP one), the failed recipient is the
    forwarded address; nothing in it names the member."""
    return ("From MAILER-DAEMON Sun Nov 22 02:50:00 2026\n"
            "From: Mail Delivery Subsystem <MAILER-DAEMON@mx.elsewhere.example>\n"
            "To: %(to)s\n"
            "Subject: Undelivered Mail Returned to Sender\n"
            "Message-ID: %(mid)s\n"
            "Date: Sun, 22 Nov 2026 02:50:00 +0000\n"
            "MIME-Version: 1.0\n"
            "Content-Type: multipart/report; report-type=delivery-status;\n"
            "\tboundary=\"b1\"\n"
            "\n"
            "--b1\n"
            "Content-Type: text/plain\n"
            "\n"
            "<%(failed)s>: user unknown\n"
            "--b1\n"
            "Content-Type: message/delivery-status\n"
            "\n"
            "Reporting-MTA: dns; mx.elsewhere.example\n"
            "\n"
            "Final-Recipient: rfc822; %(failed)s\n"
            "Action: failed\n"
            "Status: 5.1.1\n"
            "Diagnostic-Code: smtp; 550 5.1.1 <%(failed)s>: user unknown\n"
            "--b1--\n" % {"to": to, "failed": failed, "mid": message_id}).encode()


def wait_for(what, probe, timeout):
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(0.1)


# =====================================================================
# Mailman 2.1, the real code
# =====================================================================

# Run inside the namespace by /usr/bin/python3 as the mailman user.  Every
# Mailman call is Mailman's own code; only the JSON printing is ours.
MM2_SCRIPT = r'''
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "bin"))
import paths                    # Mailman's bin/paths.py, as bin/ scripts do
from Mailman import mm_cfg, Utils
from Mailman.MailList import MailList
from Mailman.Bouncers import BouncerAPI
from Mailman.Queue.BounceRunner import verp_bounce
from Mailman.Queue.Switchboard import Switchboard

command, listname = sys.argv[2:4]
mlist = MailList(listname, lock=0)
out = {}
if command == "verp-address":
    # SMTPDirect.verpdeliver's envelope sender for this member
    bmailbox, bdomain = Utils.ParseEmail(mlist.GetBouncesEmail())
    rmailbox, rdomain = Utils.ParseEmail(sys.argv[4])
    d = {"bounces": bmailbox, "mailbox": rmailbox, "host": ".".join(rdomain)}
    out = {"address": "%s@%s" % (mm_cfg.VERP_FORMAT % d, ".".join(bdomain)),
           "VERP_FORMAT": mm_cfg.VERP_FORMAT, "VERP_REGEXP": mm_cfg.VERP_REGEXP,
           "member": bool(mlist.isMember(sys.argv[4]))}
elif command == "verp":
    # the queued bounces as BounceRunner gets them (Switchboard.dequeue),
    # put back afterwards for the runner
    sb = Switchboard(mm_cfg.BOUNCEQUEUE_DIR)
    out = []
    for filebase in sb.files():
        msg, data = sb.dequeue(filebase)
        base = os.path.join(mm_cfg.BOUNCEQUEUE_DIR, filebase)
        os.rename(base + ".bak", base + ".pck")
        scanned = BouncerAPI.ScanMessages(mlist, msg)
        out.append({"listname": data.get("listname"),
                    "to": msg.get_all("to", []),
                    "delivered_to": msg.get_all("delivered-to", []),
                    "verp_bounce": verp_bounce(mlist, msg),
                    "scan": scanned if isinstance(scanned, list) else repr(scanned)})
elif command == "info":
    info = mlist.getBounceInfo(sys.argv[4])
    out = {"member": bool(mlist.isMember(sys.argv[4])),
           "score": None if info is None else info.score}
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def mm2(mailman2_real, public_tmp):
    directory = public_tmp / "verp-mm2"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    script = directory / "mm2_verp.py"
    script.write_text(MM2_SCRIPT)
    script.chmod(0o644)
    mm2 = mailman2_real
    for flag in FLAGS:
        name = list_name(flag)
        mm2.ensure_list(name)
        proc = mm2.run([mm2.prefix / "bin" / "add_members", "-r", "-", "-w", "n",
                        "-a", "n", name], input=(MEMBER + "\n").encode(),
                       user="mailman", group="mailman")
        assert proc.returncode == 0, proc
    mm2.verp_script = script
    mm2.verp_dir = directory
    return mm2


def mm2_python(mm2, *args):
    proc = mm2.run(["/usr/bin/python3", mm2.verp_script, mm2.prefix] + list(args),
                   user="mailman", group="mailman")
    assert proc.returncode == 0, proc
    return json.loads(proc.stdout)


@pytest.mark.parametrize("flag", FLAGS)
def test_mailman2_bounce_runner_finds_the_member(mm2, flag):
    mm2.clear_queues()
    name = list_name(flag)
    verp = mm2_python(mm2, "verp-address", name, MEMBER)
    assert verp["member"] is True
    local = verp["address"].partition("@")[0]
    assert local == name + "-bounces+user=example.org"
    config = mm2.write_config(mm2.verp_dir / ("%s.cfg" % flag), delivered_to=flag)
    failed = FORWARDED % flag
    message = dsn("%s-bounces@%s" % (name, HOST), failed, "<dsn.mm2.%s@elsewhere.example>" % flag)

    run = mm2.deliver(config, ["-r", "<>", HOST, local], stdin=message)
    assert run.code == 0, run

    [entry] = mm2.queue()
    assert entry.queue == "bounces" and entry.listname == name
    [found] = mm2_python(mm2, "verp", name)
    # the DSN alone names only the forwarded address
    assert found["to"] == ["%s-bounces@%s" % (name, HOST)]
    assert found["scan"] == [failed]
    if flag == "yes":
        assert found["delivered_to"] == ["%s@%s" % (local, HOST)]
        assert found["verp_bounce"] == [MEMBER]
    else:
        assert found["delivered_to"] == []
        # no match: the function falls off its loop (None); the runner
        # then scans the DSN, which names only the forwarded address
        assert found["verp_bounce"] in (None, [])

    # Mailman's bounce runner, once through its loop, then registers
    assert mm2_python(mm2, "info", name, MEMBER)["score"] is None
    proc = mm2.run([mm2.prefix / "bin" / "qrunner", "-r", "Bounce", "-o"],
                   user="mailman", group="mailman")
    assert proc.returncode == 0, proc
    assert [e for e in mm2.queue() if e.queue == "bounces"] == []
    info = mm2_python(mm2, "info", name, MEMBER)
    log = (mm2.files / "logs" / "bounce").read_text(errors="replace") \
        if (mm2.files / "logs" / "bounce").exists() else ""
    scored = "%s: %s bounce score: 1.0" % (name, MEMBER)
    if flag == "yes":
        assert info == {"member": True, "score": 1.0}
        assert scored in log, log
    else:
        assert info == {"member": True, "score": None}
        assert scored not in log, log


# =====================================================================
# Mailman 3.3.10, all of it
# =====================================================================

class SmtpSink:
    """Mailman's outgoing SMTP server: aiosmtpd on 127.0.0.1, keeps
    (envelope sender, recipients, content) of every message."""

    def __init__(self, port):
        from aiosmtpd.controller import Controller
        self.messages = []
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                with sink.lock:
                    sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.content))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        self.controller.start()

    def find(self, predicate):
        with self.lock:
            return [m for m in self.messages if predicate(m)]

    def close(self):
        self.controller.stop()


MM3_QUERY = r'''
import json, sys
from mailman.core.initialize import initialize
initialize(sys.argv[1])
from zope.component import getUtility
from mailman.interfaces.bounce import IBounceProcessor
from mailman.interfaces.listmanager import IListManager
mlist = getUtility(IListManager).get(sys.argv[2])
member = mlist.members.get_member(sys.argv[3])
print(json.dumps({
    "events": sorted([e.email, e.message_id, e.processed, e.context.name]
                     for e in getUtility(IBounceProcessor).events
                     if e.list_id == mlist.list_id),
    "member": member is not None,
    "bounce_score": member.bounce_score if member else None}))
'''


@pytest.fixture(scope="module")
def mm3_site(public_tmp):
    from tests.conftest import MAILMAN_VENV
    assert (MAILMAN_VENV / "bin" / "master").exists(), \
        "no Mailman 3 in %s: run `make test`" % MAILMAN_VENV
    sink = SmtpSink(free_port())
    site = Mailman3Site(MAILMAN_VENV, public_tmp / "verp-mailman3", free_port(),
                        smtp_port=sink.controller.port,
                        extra={"mta": {"verp_delivery_interval": "1"}})
    try:
        site.create_lists(*("%s@%s" % (list_name(f), DOMAIN) for f in FLAGS))
        for flag in FLAGS:
            site.add_members("%s@%s" % (list_name(flag), DOMAIN), MEMBER)
        site.start()
        site.sink = sink
        site.query_script = site.workdir / "query.py"
        site.query_script.write_text(MM3_QUERY)
        yield site
    finally:
        site.stop()
        sink.close()


def mm3_state(site, fqdn):
    proc = subprocess.run([str(site.venv / "bin" / "python"), str(site.query_script),
                           str(site.config_path), fqdn, MEMBER],
                          capture_output=True, text=True, env=site._env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("flag", FLAGS)
def test_mailman3_bounce_runner_attributes_to_the_member(mm3_site, flag, make_config,
                                                         run_handler):
    site = mm3_site
    name = list_name(flag)
    fqdn = "%s@%s" % (name, DOMAIN)
    config = make_config({"mm-handler": {"backend": "mailman3", "delivered_to": flag},
                          "mailman3": {"lmtp": site.endpoint, "timeout": "20"}})

    # the member posts; Mailman delivers it VERPed: the address a bounce comes back to
    post = ("From %s Sun Nov 22 02:44:03 2026\n"
            "From: %s\nTo: %s\nSubject: post %s\nMessage-ID: <post.%s@example.org>\n"
            "Date: Sun, 22 Nov 2026 02:44:03 +0000\n\nHello list.\n"
            % (MEMBER, MEMBER, fqdn, flag, flag)).encode()
    run = run_handler(["-r", MEMBER, HOST, name], stdin=post, config=config)
    assert run.code == 0, run
    [(verp, rcpts, _)] = wait_for(
        "Mailman's VERPed delivery to %s" % MEMBER,
        lambda: site.sink.find(lambda m: m[1] == [MEMBER]
                               and m[0].startswith(name + "-bounces")), 30)
    assert verp == "%s-bounces+user=example.org@%s" % (name, DOMAIN)

    # the bounce comes back to that address; its headers do not carry it
    failed = FORWARDED % flag
    message_id = "<dsn.mm3.%s@elsewhere.example>" % flag
    local = verp.partition("@")[0]
    assert mm3_state(site, fqdn)["events"] == []
    run = run_handler(["-r", "<>", HOST, local], config=config,
                      stdin=dsn("%s-bounces@%s" % (name, DOMAIN), failed, message_id))
    assert run.code == 0, run

    list_id = "%s.%s" % (name, DOMAIN)
    scored = "Member %s on list %s, bounce score = 1." % (MEMBER, list_id)
    stranger = "Email %s is not a subcriber of %s" % (failed, list_id)   # sic
    line = wait_for("the bounce runner's verdict in bounce.log", lambda: [
        x for x in site.log("bounce").splitlines() if scored in x or stranger in x], 30)
    state = mm3_state(site, fqdn)
    if flag == "yes":
        assert [scored in x for x in line] == [True], line
        assert state == {"events": [[MEMBER, message_id, True, "normal"]],
                         "member": True, "bounce_score": 1}
    else:
        assert [stranger in x for x in line] == [True], line
        assert state == {"events": [[failed, message_id, True, "normal"]],
                         "member": True, "bounce_score": 0}
    assert site.queued().get("bounces", 0) == 0
