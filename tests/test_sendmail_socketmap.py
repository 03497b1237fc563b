"""The live lookup with the real parts: Sendmail 8.17 built from the kit's
mailman.mc with the one switch on (define MAILMAN_SOCKETMAP), asking
`mm-handler socketmap` over a unix socket, in front of a real Mailman 3
LMTP runner and the real Mailman 2; all inside the private namespace.

- every address form of a list is accepted at RCPT and delivered, every
  other address of the list domain refused 550 5.1.1 at RCPT;
- a list made with `mailman create` (Mailman 2: `newlist`) is accepted at
  the next RCPT and refused again after `mailman remove` (`rmlist`), and
  no map is written anywhere;
- the server down, restarting or slow: 451 at RCPT, never a 5xx, nothing
  accepted to be bounced later;
- Mailman 3 on "another host" (no var_dir): the server asks the LMTP
  runner, and answers what the generated table would.
"""

import os
import pwd
import signal
import subprocess
import time

import pytest

from mm_handler.config import validate
from tests.conftest import dsn_message, render_config
from tests.peers.sendmail import (LIST_DOMAIN, SENDMAIL, Mailman3Site, SendmailHost,
                                  write_handler_config)
from tests.peers.syslog import SyslogSink
from tests.test_socketmap import Client, assert_same_as_the_table

pytest_plugins = ["tests.peers.mailman2_real"]

SENDER = "alice@example.org"
HOST = LIST_DOMAIN
RUN = "/run/sendmail/mm-handler"           # inside; the test's run-sendmail
LISTEN = "unix:%s/socketmap" % RUN
MAP_TIMEOUT = 2                             # the map's -d, seconds
LISTS = ("test", "news-bounces", "owner-foo", "foo")

VALID = ["test", "test-request", "test-owner", "owner-test", "test-bounces",
         "test-bounces+bob=example.net", "test-confirm+0123abcdef", "test-join",
         "test-leave", "test-subscribe", "test-unsubscribe", "test-admin", "Test",
         "TEST-Request", "test+anything"]
# where Mailman 3 puts VALID: Test and TEST-Request are test and test-request
# again (the same mailer, host and user), delivered once
QUEUE = {"in": 4, "command": 6, "bounces": 3}
INVALID = ["nolist", "test-foo", "test-", "tes", "owner-nolist",
           "nolist-bounces+bob=example.net"]


def live_mc(sendmail, timeout=MAP_TIMEOUT):
    """The kit's mailman.mc with the switch on: one define before MAILER."""
    text = sendmail.kit_mc()
    line = "\nMAILER(`mailman')dnl\n"
    assert text.count(line) == 1
    return text.replace(line, (
        "\ndefine(`MAILMAN_SOCKETMAP', `%s')dnl\n"
        "define(`MAILMAN_SOCKETMAP_TIMEOUT', `%d')dnl" + line) % (LISTEN, timeout))


def message(subject, to):
    return (b"From: Alice <alice@example.org>\nTo: " + to.encode() + b"\n"
            b"Subject: " + subject.encode() + b"\n"
            b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@example.org>\n"
            b"Date: Sun, 22 Nov 2026 02:44:03 +0000\n\nHello list.\n")


class LiveServer:
    """`mm-handler socketmap` inside the Sendmail namespace, as `user`."""

    def __init__(self, sendmail, handler, config, user="root"):
        self.sendmail = sendmail
        self.argv = [str(handler), "socketmap", "-C", str(config)]
        if user != "root":
            self.argv = ["setpriv", "--reuid=" + user, "--regid=" + user,
                         "--clear-groups"] + self.argv
        self.run_dir = sendmail.root / "run-sendmail" / "mm-handler"
        self.run_dir.mkdir(exist_ok=True)
        owner = pwd.getpwnam(user)
        os.chown(self.run_dir, owner.pw_uid, owner.pw_gid)
        self.run_dir.chmod(0o755)
        self.path = self.run_dir / "socketmap"     # as the host sees it
        self.proc = None

    def start(self, timeout=10):
        self.proc = self.sendmail.ns.popen(self.argv, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "socketmap server exited"
            try:
                Client(self.path).close()
                return self
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.02)

    def stop(self):
        """SIGTERM by PID (nsenter and setpriv exec it: the PID is its)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
            proc.wait(15)

    def signal(self, signum):
        self.proc.send_signal(signum)

    def client(self):
        return Client(self.path)


class Session:
    """`sendmail -bs`, one command at a time."""

    def __init__(self, sendmail):
        self.proc = sendmail.ns.popen([SENDMAIL, "-odi", "-bs"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.reply()[0] == 220
        assert self.say("EHLO client.example.org")[0] == 250
        assert self.say("MAIL FROM:<%s>" % SENDER)[0] == 250

    def reply(self):
        lines = []
        while True:
            line = self.proc.stdout.readline().decode("utf-8", "replace")
            assert line, "sendmail -bs closed: %r" % lines
            lines.append(line[4:].rstrip("\r\n"))
            if line[3:4] != "-":
                return int(line[:3]), " ".join(lines)

    def say(self, line):
        self.proc.stdin.write(line.encode() + b"\r\n")
        self.proc.stdin.flush()
        return self.reply()

    def rcpt(self, local):
        return self.say("RCPT TO:<%s@%s>" % (local, HOST))

    def close(self):
        try:
            self.say("QUIT")
        finally:
            self.proc.stdin.close()
            self.proc.wait(20)
            self.proc.stdout.close()


# -- Mailman 3 -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(public_tmp, handler, sendmail_binary):
    from tests.conftest import MAILMAN_VENV
    root = public_tmp / "sendmail-socketmap"
    # Mailman's [mta] is its NullMTA: nothing writes any map
    site = Mailman3Site(root, handler, MAILMAN_VENV, lists=LISTS, plugin=False)
    site.server_config = write_handler_config(root / "socketmap.cfg", {
        "mm-handler": {"backend": "mailman3", "syslog_socket": "/dev/log"},
        "mailman3": {"var_dir": str(root / "mailman" / "var")},
        "maps": {"domains": LIST_DOMAIN},
        "socketmap": {"listen": LISTEN}})
    try:
        site.start()
        site.sendmail.build_cf(live_mc(site.sendmail))
        site.live = LiveServer(site.sendmail, handler, site.server_config).start()
        yield site
    finally:
        if getattr(site, "live", None):
            site.live.stop()
        site.stop()


@pytest.fixture
def mta(site):
    site.reset()
    if site.live.proc is None:
        site.live.start()
    yield site
    site.sendmail.reset()


def rcpt_codes(sendmail, locals_, data=None):
    out = sendmail.smtp(SENDER, ["%s@%s" % (l, HOST) for l in locals_], data=data)
    assert out["mail"].code == 250, out
    return {l: r.code for l, r in zip(locals_, out["rcpt"])}, out


def nothing_left_behind(mta):
    assert mta.sendmail.queue_ids() == [], mta.sendmail.mailq()
    assert [c for c in mta.sendmail.captured() if c.recipient != "postmaster"] == []


def no_map_anywhere(mta):
    assert list(mta.maps_dir.iterdir()) == []
    assert not [p for p in mta.sendmail.etc_mail.rglob("virtuser*")], \
        list(mta.sendmail.etc_mail.rglob("*"))


def test_every_form_accepted_at_rcpt_and_delivered_unknown_refused(mta):
    codes, out = rcpt_codes(mta.sendmail, VALID + INVALID,
                            data=message("every form", "test@" + HOST))
    assert codes == {**{l: 250 for l in VALID}, **{l: 550 for l in INVALID}}, out
    for reply in out["rcpt"][len(VALID):]:
        assert reply.lines[0].startswith("5.1.1 ") and \
            "No such list address here" in reply.text, reply
    assert out["data"].code == 250, out
    nothing_left_behind(mta)
    # one delivery per recipient, each into its queue
    assert mta.mailman.queued() == QUEUE, mta.mailman.log_tail()
    assert {data["listid"] for q in QUEUE for _, data in mta.mailman.read_queue(q)} \
        == {"test." + HOST}
    log = "\n".join(mta.sink.lines())
    assert log.count("mailer=mailman") == sum(QUEUE.values()) and "stat=Sent" in log
    # the role addresses still go to people
    codes, out = rcpt_codes(mta.sendmail, ["postmaster", "abuse", "root"])
    assert set(codes.values()) == {250}, out
    assert "postmaster@capture.test" in mta.sendmail.verify("postmaster@" + HOST)
    no_map_anywhere(mta)


def test_mailman_create_answered_at_once_remove_refused_no_map(mta):
    fresh = ["fresh", "fresh-request", "fresh-bounces+x=y.example"]
    assert set(rcpt_codes(mta.sendmail, fresh)[0].values()) == {550}
    mta.mailman.mailman("create", "fresh@" + HOST)
    try:
        codes, out = rcpt_codes(mta.sendmail, fresh + ["test", "nolist"])
        assert codes == {"fresh": 250, "fresh-request": 250,
                         "fresh-bounces+x=y.example": 250, "test": 250,
                         "nolist": 550}, out
        out = mta.sendmail.smtp(SENDER, ["fresh@" + HOST],
                                data=message("fresh list", "fresh@" + HOST))
        assert out["data"].code == 250, out
        nothing_left_behind(mta)
        [(msg, data)] = mta.mailman.read_queue("in")
        assert data["listid"] == "fresh." + HOST and msg["Subject"] == "fresh list"
    finally:
        mta.mailman.mailman("remove", "fresh@" + HOST)
    codes, out = rcpt_codes(mta.sendmail, fresh + ["test"])
    assert codes == {"fresh": 550, "fresh-request": 550,
                     "fresh-bounces+x=y.example": 550, "test": 250}, out
    no_map_anywhere(mta)


def test_server_down_is_451_at_rcpt_never_5xx_nor_a_bounce(mta):
    mta.live.stop()
    assert not mta.live.path.exists()
    codes, out = rcpt_codes(mta.sendmail, ["test", "nolist", "test-bounces+b=x.example"],
                            data=message("while down", "test@" + HOST))
    assert set(codes.values()) == {451}, out
    for reply in out["rcpt"]:
        assert reply.lines[0].startswith("4.3.0 "), reply
    assert out["data"] is None
    # a DSN from a remote MTA (null sender) too
    out = mta.sendmail.smtp("", ["test-bounces+bob=example.net@" + HOST],
                            data=dsn_message("test@" + HOST))
    assert out["rcpt"][0].code == 451, out
    nothing_left_behind(mta)
    assert mta.mailman.queued() == {}
    assert not [line for line in mta.sink.lines()
                if "mm-handler[" in line and "recipient=" in line]
    mta.live.start()
    assert rcpt_codes(mta.sendmail, ["test", "nolist"])[0] == {"test": 250,
                                                               "nolist": 550}


def test_server_restarting(mta):
    """A restart costs the sessions under way a 451 for each RCPT left (in
    an SMTP session Sendmail reports the broken connection with syserr,
    which ends the command before the map is closed: the process keeps its
    broken connection); a new session is answered again."""
    session = Session(mta.sendmail)
    try:
        assert session.rcpt("test")[0] == 250
        mta.live.stop()                 # the kept connection is closed
        mta.live.start()
        for local in ("test-request", "nolist"):
            code, text = session.rcpt(local)
            assert code == 451 and text.startswith("4.3.0 "), text
    finally:
        session.close()
    codes, out = rcpt_codes(mta.sendmail, ["test-request", "nolist"],
                            data=message("restart", "test@" + HOST))
    assert codes == {"test-request": 250, "nolist": 550}, out
    assert out["data"].code == 250
    nothing_left_behind(mta)
    assert mta.mailman.queued() == {"command": 1}


def test_a_late_answer_is_never_taken_for_the_next_one(mta):
    """Stopped past the map's -d, then running again: Sendmail gave up on
    the first request (451) and keeps the connection; the server must not
    answer it now, or the next RCPT would read that answer as its own
    (here: nolist accepted with test's route)."""
    session = Session(mta.sendmail)
    try:
        mta.live.signal(signal.SIGSTOP)
        try:
            code, text = session.rcpt("test")
        finally:
            mta.live.signal(signal.SIGCONT)
        assert code == 451 and "read timeout" in text, text
        time.sleep(0.5)                 # the server reads the stale request
        code, text = session.rcpt("nolist")
        assert code in (451, 550) and code != 250, text
    finally:
        session.close()
    assert "rather than answered late" in "\n".join(mta.sink.lines())
    time.sleep(1)
    assert rcpt_codes(mta.sendmail, ["test", "nolist"])[0] == {"test": 250,
                                                               "nolist": 550}


def test_server_slow_is_451_after_the_map_timeout(mta):
    mta.live.signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        codes, out = rcpt_codes(mta.sendmail, ["test", "nolist"],
                                data=message("slow", "test@" + HOST))
        took = time.monotonic() - start
    finally:
        mta.live.signal(signal.SIGCONT)
    assert codes == {"test": 451, "nolist": 451}, out
    assert out["rcpt"][0].lines[0].startswith("4.3.0 "), out
    assert MAP_TIMEOUT <= took < 4 * MAP_TIMEOUT + 5, took
    assert "read timeout" in "\n".join(mta.sink.lines())
    nothing_left_behind(mta)
    time.sleep(1)       # what is read just after a hold-up is not answered
    assert rcpt_codes(mta.sendmail, ["test", "nolist"])[0] == {"test": 250,
                                                               "nolist": 550}


def test_mailman3_elsewhere_asked_over_lmtp(mta, handler):
    """No var_dir: the server asks the LMTP runner; the same answers as the
    generated table of the real lists, and Sendmail acts on them."""
    from tests.peers.sendmail import LMTP_PORT
    config = write_handler_config(mta.root / "lmtp-socketmap.cfg", {
        "mm-handler": {"backend": "mailman3", "syslog_socket": "/dev/log"},
        "mailman3": {"lmtp": "127.0.0.1:%d" % LMTP_PORT},
        "maps": {"domains": LIST_DOMAIN},
        "socketmap": {"listen": LISTEN}})
    mta.live.stop()
    over_lmtp = LiveServer(mta.sendmail, handler, config).start()
    try:
        settings = validate({"maps": {"domains": LIST_DOMAIN}})
        assert_same_as_the_table(over_lmtp, settings,
                                 [(name, LIST_DOMAIN) for name in LISTS])
        codes, out = rcpt_codes(mta.sendmail, ["news-bounces", "news-bounces-request",
                                               "owner-foo", "foo-owner", "nolist"])
        assert codes == {"news-bounces": 250, "news-bounces-request": 250,
                         "owner-foo": 250, "foo-owner": 250, "nolist": 550}, out
    finally:
        over_lmtp.stop()


# -- the real Mailman 2 ----------------------------------------------------------------

def test_real_mailman2_newlist_answered_at_once_rmlist_refused(
        mailman2_real, public_tmp, handler, sendmail_binary):
    mailman2_real.ensure_list("test")
    root = public_tmp / "sendmail-socketmap-mm2"
    root.mkdir()
    root.chmod(0o755)
    config = mailman2_real.write_config(root / "mm-handler.cfg")
    server_config = root / "socketmap.cfg"
    server_config.write_text(render_config({
        "mm-handler": {"backend": "mailman2", "syslog_socket": "/dev/log"},
        "mailman2": {"lists_dir": str(mailman2_real.lists_dir)},
        "maps": {"domains": HOST},
        "socketmap": {"listen": LISTEN}}))
    server_config.chmod(0o644)
    sink = SyslogSink(root / "log.sock")
    host = SendmailHost(root / "sendmail", handler, config, syslog=sink)
    host.ns.binds.extend((str(s), str(t)) for s, t in mailman2_real.binds)
    live = None
    try:
        host.start(mc_text=None)
        host.build_cf(live_mc(host))
        # as the systemd unit runs it: Mailman 2's list user
        live = LiveServer(host, handler, server_config, user="list").start()
        fresh = ["fresh2", "fresh2-request", "fresh2-bounces+x=y.example",
                 "owner-fresh2", "fresh2-admin"]
        codes, out = rcpt_codes(host, fresh + ["test"])
        assert codes == {**{l: 550 for l in fresh}, "test": 250}, out
        mailman2_real.newlist("fresh2")
        try:
            codes, out = rcpt_codes(host, fresh + ["test", "nolist"])
            assert codes == {**{l: 250 for l in fresh}, "test": 250,
                             "nolist": 550}, out
            mailman2_real.clear_queues()
            out = host.smtp(SENDER, ["fresh2@" + HOST],
                            data=message("fresh2 post", "fresh2@" + HOST))
            assert out["data"].code == 250, out
            assert host.queue_ids() == [], host.mailq()
            [entry] = mailman2_real.queue()
            assert entry.listname == "fresh2" and b"fresh2 post" in entry.data
        finally:
            mailman2_real.rmlist("fresh2")
        codes, out = rcpt_codes(host, fresh + ["test"])
        assert codes == {**{l: 550 for l in fresh}, "test": 250}, out
        assert not [p for p in host.etc_mail.rglob("virtuser*")]
        assert not list(host.maps_dir.iterdir())
    finally:
        if live is not None:
            live.stop()
        host.stop()
        sink.close()


# -- the same routing as the generated maps, address by address ------------------------

SITE = ("info@%(d)s\tpeople@capture.test\n"
        "test-owner@%(d)s\tthe-owner@capture.test\n"       # wins over the list's
        "special+vip@%(d)s\tvip%%3@capture.test\n"          # keys Sendmail asks
        "news++@%(d)s\tdetail-%%2@capture.test\n"           # for a +detail
        "+*@other.%(d)s\tcatch-%%1@capture.test\n"
        "@other.%(d)s\terror:5.1.1:550 Not here either\n")


def test_live_lookup_routes_exactly_as_the_generated_maps(public_tmp, handler,
                                                           sendmail_binary):
    """`sendmail -bv` for addresses of every kind, once with the kit's .mc
    reading the maps `mm-handler maps` wrote, once with the switch on: the
    same mailer, host and user (the +detail as sent), the same refusals."""
    from tests.peers.sendmail import MAKEMAP
    root = public_tmp / "socketmap-same-routing"
    root.mkdir()
    root.chmod(0o755)
    lists_dir = root / "lists"
    for name in ("test", "news", "news-bounces", "owner-foo", "foo"):
        (lists_dir / name).mkdir(parents=True)
        (lists_dir / name / "config.pck").write_bytes(b"")
    (root / "site").write_text(SITE % {"d": HOST})
    config = write_handler_config(root / "mm-handler.cfg", {
        "mm-handler": {"backend": "mailman2", "syslog_socket": "/dev/log"},
        "mailman2": {"lists_dir": str(lists_dir)},
        "maps": {"domains": "%s other.%s" % (HOST, HOST), "output_dir": str(root / "maps"),
                 "makemap": MAKEMAP, "site_virtusertable": str(root / "site")},
        "socketmap": {"listen": LISTEN}})
    (root / "maps").mkdir()
    host = SendmailHost(root / "sendmail", handler, config, maps_dir=root / "maps")
    live = None
    addresses = ["%s@%s" % (local, domain) for domain in (HOST, "other." + HOST)
                 for local in (
        "test", "Test", "test-request", "TEST-Bounces+Bob=Example.NET",
        "test-confirm+0123ABCDEF", "owner-test", "test-owner", "test-admin",
        "test+x", "test+", "+test", "news-bounces", "news-bounces+x",
        "news-bounces-bounces", "owner-foo", "foo-owner", "owner-foo-request",
        "news+detail", "news+", "special+vip", "special+other", "special",
        "info", "Info+x", "nolist", "nolist+x", "test-foo", "postmaster",
        "abuse+x", "root")] + ["someone@elsewhere.example", "root@" + HOSTNAME_W]
    try:
        host.start()
        run = host.ns.run([str(handler), "maps", "-C", str(config), "--makemap"])
        assert run.returncode == 0, run
        host.build_cf()
        with_maps = [host.verify(a) for a in addresses]
        host.build_cf(live_mc(host))
        live = LiveServer(host, handler, config).start()
        with_live = [host.verify(a) for a in addresses]
    finally:
        if live is not None:
            live.stop()
        host.stop()
    assert with_live == with_maps
    # and the comparison covers every kind of outcome
    said = dict(zip(addresses, with_live))
    for address, end in (
            ("TEST-Bounces+Bob=Example.NET@" + HOST,
             "mailer mailman, host %s, user test-bounces+Bob=Example.NET" % HOST),
            ("test-owner@" + HOST, "mailer capture, host capture.test, user the-owner"),
            ("news+detail@" + HOST, "user detail-detail"),         # news++@ and %2
            ("special+vip@" + HOST, "user vip"),                    # exact key, %3 empty
            ("Info+x@other." + HOST, "user catch-Info"),            # +*@ and %1
            ("nolist+x@" + HOST, "No such list address here"),
            ("info@other." + HOST, "Not here either"),
            ("postmaster@" + HOST, "user postmaster"),
            ("+test@" + HOST, "No such list address here")):
        assert said[address].strip().endswith(end), (address, said[address])


HOSTNAME_W = "mx.example.test"
