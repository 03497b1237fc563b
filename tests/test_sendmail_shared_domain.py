"""A domain shared by people and lists (README.sendmail section 1), end to end.

example.test is this host's own mail domain (class w): alice has her
mailbox here, and Mailman 3 has the lists test@ and news@example.test.  As
section 1 says, mm-handler's configuration names the domain with no
catch-all ([maps] domains = example.test, reject = empty), the mailertable
has no line for it, and the Mailman 3 plug-in writes the maps.

Real Sendmail 8.17 from the kit (tests/peers/sendmail.py, with a private
copy of /etc so that alice exists inside the namespace only), a real
Mailman 3 LMTP runner, and Sendmail's own mail.local as the local mailer
(Debian's sensible-mda is not installed here): list addresses reach
Mailman, people's addresses their mailbox in /var/mail, and anything else
gets what Sendmail gives it without mm-handler, 550 5.1.1 User unknown at
RCPT.
"""

import pwd
import re

import pytest

from tests.peers.mailman3 import read_queue_file
from tests.peers.sendmail import KIT, Mailman3Site, copy_etc

SHARED = "example.test"
SENDER = "bob@example.org"
ALICE_UID = 4242

# test-only: the local mailer is mail.local over LMTP (a mailbox in the
# namespace's private /var/mail), defined before MAILER(`local')
LOCAL_MAILER = ("FEATURE(`local_lmtp', `/usr/libexec/sendmail/mail.local')dnl\n"
                "MAILER_DEFINITIONS\n")


def message(subject, to):
    return ("From: Bob <bob@example.org>\nTo: %s\nSubject: %s\n"
            "Message-ID: <%s@example.org>\n\nHello, %s.\n"
            % (to, subject, subject.replace(" ", "."), to)).encode()


@pytest.fixture(scope="module")
def site(public_tmp, handler, sendmail_binary):
    from tests.conftest import MAILMAN_VENV
    root = public_tmp / "sendmail-shared"
    root.mkdir()
    root.chmod(0o755)
    etc = copy_etc(root / "etc")
    site = Mailman3Site(root / "site", handler, MAILMAN_VENV, lists=(),
                        handler_sections={"maps": {"domains": SHARED, "reject": ""}},
                        etc=etc)
    with open(etc / "passwd", "a") as f:             # alice lives here only
        f.write("alice:x:%d:%d:Alice:/nonexistent:/usr/sbin/nologin\n"
                % (ALICE_UID, ALICE_UID))
    mc = site.sendmail.kit_mc()
    assert mc.count("MAILER_DEFINITIONS\n") == 1
    try:
        site.start(mc_text=mc.replace("MAILER_DEFINITIONS\n", LOCAL_MAILER))
        # the shared domain is this host's own (class w), as for people
        lhn = site.sendmail.etc_mail / "local-host-names"
        lhn.write_text(lhn.read_text() + SHARED + "\n")
        site.mailman.create_lists("test@" + SHARED, "news@" + SHARED)
        yield site
    finally:
        site.stop()


def mailbox(site, user="alice"):
    path = site.sendmail.root / "var-mail" / user
    return path.read_bytes() if path.exists() else b""


def test_the_maps_hold_the_lists_and_no_catch_all(site):
    rows = (site.maps_dir / "virtusertable").read_text().splitlines()
    assert "test@%s\ttest%%3@%s.mailman.invalid" % (SHARED, SHARED) in rows
    assert "news-request@%s\tnews-request%%3@%s.mailman.invalid" % (SHARED, SHARED) in rows
    assert not [r for r in rows if r.startswith("@")], rows           # no catch-all
    # the kit's mailertable, unchanged: nothing routes example.test itself
    assert SHARED not in (KIT / "mailertable").read_text()


def test_lists_reach_mailman_people_their_mailbox_the_rest_what_sendmail_says(site):
    site.reset()
    people = ["alice"]
    lists = ["test", "test-request", "news-bounces+carol=example.net", "owner-news"]
    unknown = ["nosuchperson", "test-foo", "owner-nolist"]
    out = site.sendmail.smtp(SENDER, ["%s@%s" % (l, SHARED)
                                      for l in people + lists + unknown])
    codes = {r: reply.code for r, reply in zip(people + lists + unknown, out["rcpt"])}
    assert codes == {**{l: 250 for l in people + lists},
                     **{l: 550 for l in unknown}}, out
    for reply in out["rcpt"][-len(unknown):]:
        # Sendmail's own answer for an unknown local user, not the maps'
        assert reply.lines[0].startswith("5.1.1 ") and "User unknown" in reply.text, reply

    # one message to a person and a list: each gets it its own way
    out = site.sendmail.smtp(SENDER, ["alice@" + SHARED, "test@" + SHARED],
                             data=message("shared", "alice@%s, test@%s" % (SHARED,
                                                                         SHARED)))
    assert out["data"].code == 250, out
    assert site.sendmail.queue_ids() == [], site.sendmail.mailq()
    box = mailbox(site)
    assert b"Subject: shared" in box and b"Hello, alice@example.test" in box, box
    st = (site.sendmail.root / "var-mail" / "alice").stat()
    assert st.st_uid == ALICE_UID
    assert site.mailman.queued() == {"in": 1}, site.mailman.log_tail()
    (msg, meta), = site.mailman.read_queue("in")
    assert meta["listid"] == "test." + SHARED and msg["Subject"] == "shared"
    assert msg.get_all("Delivered-To") == ["test@" + SHARED]
    log = "\n".join(site.sink.lines())
    # mm-handler saw the list address only; the person's went to mail.local
    assert re.search(r"mm-handler\[\d+\]: .*recipient=test@%s .*status=0"
                     % re.escape(SHARED), log), log
    assert not re.search(r"mm-handler\[\d+\]: .*recipient=alice@", log), log
    assert re.search(r"to=<?alice@%s>?, .*mailer=local, .*stat=Sent" % re.escape(SHARED),
                     log), log


def test_a_new_list_is_served_at_once_and_people_stay_untouched(site):
    site.reset()
    assert site.sendmail.smtp(SENDER, ["fresh@" + SHARED])["rcpt"][0].code == 550
    site.mailman.create_list("fresh@" + SHARED)
    try:
        out = site.sendmail.smtp(SENDER, ["fresh@" + SHARED, "fresh-leave@" + SHARED,
                                          "alice@" + SHARED, "nosuchperson@" + SHARED])
        assert [r.code for r in out["rcpt"]] == [250, 250, 250, 550], out
    finally:
        site.mailman.mailman("remove", "fresh@" + SHARED)
    assert site.sendmail.smtp(SENDER, ["fresh@" + SHARED])["rcpt"][0].code == 550
