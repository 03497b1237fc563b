"""The Mailman 2 wrapper path, end to end through the installed command.

The wrapper is tests/peers/mailman2_wrapper.py, a stand-in that answers as
the real Mailman 2 wrapper does (tests/test_mailman2_real.py compares them;
../shared/docs/mailman2-wrapper.md): a caller's gid without a name (exit 8),
group mismatch (2), illegal command (6), missing list (1), otherwise the
whole of stdin into qfiles/in/ (post, owner), qfiles/commands/ (request,
confirm, join, leave, subscribe, unsubscribe) or qfiles/bounces/ (bounces,
admin).

Every test runs three times: with the command as installed, and with the
command's interpreter lacking os.pidfd_open, then select.poll, as on
FreeBSD, macOS, NetBSD, illumos or an old Linux (mm_handler.child's
fallbacks).  The calls are deleted at interpreter start-up by a .pth file
in the venv: Debian's own sitecustomize.py comes first on sys.path and
would hide one of ours.
"""

import grp
import os
import re
import signal
import subprocess
import time

import pytest

from tests.conftest import FROM_LINE, SYSTEM_PYTHON, WHEELHOUSE, sample_message
from tests.peers.mailman2_wrapper import Installed

HOST = "lists.example.test"
TRACE = b"X-Mailman-Handler: mm-handler 0.1.0\n"
ALL_ACTIONS = "post admin bounces confirm join leave owner request subscribe unsubscribe"

# facts (../shared/docs/mailman2-wrapper.md, "Where each command queues"):
# command -> (queue, metadata flag or None)
QUEUE_OF = {"post": ("in", "tolist"), "owner": ("in", "toowner"),
            "request": ("commands", "torequest"), "confirm": ("commands", "toconfirm"),
            "join": ("commands", "tojoin"), "subscribe": ("commands", "tojoin"),
            "leave": ("commands", "toleave"), "unsubscribe": ("commands", "toleave"),
            "bounces": ("bounces", None), "admin": ("bounces", None)}


def nameless_gid(gid=54321):
    """A gid /etc/group has no name for."""
    while True:
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid
        gid += 1

FALLBACKS = {
    "installed": None,
    "no pidfd_open": "import os; os.__dict__.pop('pidfd_open', None)\n",
    "no select.poll": "import select; select.__dict__.pop('poll', None)\n",
}


@pytest.fixture(scope="module", params=list(FALLBACKS))
def handler(request, handler, public_tmp):
    """The installed command, or one in a venv whose interpreter lacks a call."""
    pth = FALLBACKS[request.param]
    if pth is None:
        return handler
    venv = public_tmp / ("venv-" + re.sub(r"[^a-z]+", "-", request.param))
    if not venv.exists():
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                        "--disable-pip-version-check", "--no-index",
                        "--find-links", str(WHEELHOUSE), "mm-handler"], check=True)
        [site] = venv.glob("lib/python3*/site-packages")
        (site / "mm_handler_test_fallback.pth").write_text(pth)
    lacks = subprocess.run(
        [str(venv / "bin" / "python3"), "-c", "import os, select; "
         "print(hasattr(os, 'pidfd_open'), hasattr(select, 'poll'))"],
        env={}, capture_output=True, check=True).stdout
    assert lacks == {"no pidfd_open": b"False True\n",
                     "no select.poll": b"%r False\n" % hasattr(os, "pidfd_open")
                     }[request.param]
    return venv / "bin" / "mm-handler"


@pytest.fixture
def mm2(tmp_path):
    return Installed(tmp_path / "mailman", lists=["test", "my-list", "news-bounces",
                                                  "x-owner", "other"])


@pytest.fixture
def config(make_config, mm2):
    def make(**mm_handler):
        return make_config({
            "mm-handler": dict({"backend": "mailman2"}, **mm_handler),
            "mailman2": {"wrapper": mm2.path, "lists_dir": mm2.lists_dir,
                         "timeout": "20"},
        })
    return make


def queued_bytes(mm2):
    return [data for _, data in mm2.queued()]


def delivered_to(rcpt="test"):
    """The Delivered-To line mm-handler adds: the envelope recipient as
    Sendmail had it (case, +detail), @ the lower-case domain."""
    return b"Delivered-To: %s\n" % (rcpt if "@" in rcpt else rcpt + "@" + HOST).encode()


def expected_queue_file(message, rcpt="test", trace=TRACE):
    """What lands in the queue file: the From_ line, the trace header,
    Delivered-To, the rest."""
    end = message.index(b"\n") + 1 if message.startswith(b"From ") else 0
    eol = b"\r\n" if message[:end].endswith(b"\r\n") else b"\n"
    added = b"".join(line[:-1] + eol for line in (trace, delivered_to(rcpt)) if line)
    return message[:end] + added + message[end:]


def delivery_lines(syslog_sink):
    return [m for m in syslog_sink.messages() if m.startswith("sender=")]


# --- every action lands once, byte-exact, with the right argv -------------------

@pytest.mark.parametrize("recipient, action, listname", [
    ("test", "post", "test"),
    ("test-admin", "admin", "test"),
    ("test-bounces", "bounces", "test"),
    ("test-confirm", "confirm", "test"),
    ("test-join", "join", "test"),
    ("test-leave", "leave", "test"),
    ("test-owner", "owner", "test"),
    ("test-request", "request", "test"),
    ("test-subscribe", "subscribe", "test"),
    ("test-unsubscribe", "unsubscribe", "test"),
    ("owner-test", "owner", "test"),
    ("test-bounces+alice=example.org", "bounces", "test"),
    ("test-confirm+0123abcd", "confirm", "test"),
    ("Test-Request", "request", "test"),
    ("TEST", "post", "test"),
    ("test@" + HOST, "post", "test"),
    ("my-list-request", "request", "my-list"),
    ("my-list", "post", "my-list"),
    ("news-bounces", "post", "news-bounces"),   # a list really named so wins
    ("x-owner", "post", "x-owner"),
])
def test_each_address_reaches_its_list_and_action(run_handler, config, mm2, syslog_sink,
                                                  recipient, action, listname):
    message = sample_message()
    r = run_handler(["-r", "alice@example.org", HOST, recipient], message, config())
    assert (r.code, r.stderr, r.stdout) == (0, "", "")
    assert queued_bytes(mm2) == [expected_queue_file(message, recipient)]
    runs = mm2.runs()
    assert [run["argv"] for run in runs] == [[action, listname]]
    assert runs[0]["outcome"] == "queued"
    queue, flag = QUEUE_OF[action]
    [(path, _)] = mm2.queued()
    assert os.path.basename(os.path.dirname(path)) == queue == runs[0]["queue"]
    assert sorted(k for k in runs[0]["metadata"] if k.startswith("to")) == \
        ([flag] if flag else [])
    [line] = delivery_lines(syslog_sink)
    assert re.fullmatch(
        r'sender=<alice@example\.org> recipient=%s list=%s action=%s '
        r'backend=mailman2 status=0 dry_run=no reason="accepted by the Mailman 2 '
        r'wrapper" reply=- size=%d ms=\d+'
        % (re.escape(recipient.lower() if "@" in recipient else recipient + "@" + HOST),
           re.escape(listname), action, len(message)), line), line


def test_the_from_line_comes_first_then_the_trace_header(run_handler, config, mm2):
    message = sample_message()
    r = run_handler(["-r", "alice@example.org", HOST, "test"], message, config())
    assert r.code == 0
    [data] = queued_bytes(mm2)
    lines = data.split(b"\n")
    assert lines[0] + b"\n" == FROM_LINE
    assert lines[1] + b"\n" == TRACE
    assert lines[2] + b"\n" == delivered_to()
    assert lines[3].startswith(b"From: Alice")
    assert data == FROM_LINE + TRACE + delivered_to() + message[len(FROM_LINE):]


def test_without_the_trace_header_only_delivered_to_is_added(run_handler, config, mm2):
    message = sample_message()
    r = run_handler([HOST, "test"], message, config(trace_header="no"))
    assert r.code == 0
    assert queued_bytes(mm2) == [expected_queue_file(message, trace=b"")]


@pytest.mark.parametrize("name, body", [
    ("8-bit", "Grüße, ça va? 日本語\n".encode("utf-8") + bytes(range(128, 256)) + b"\n"),
    ("latin-1", b"Gr\xfc\xdfe\n"),
    ("dot lines", b".\n..\n. \n.leading dot\n...\n"),
    ("From lines", b"From here to there\n>From quoted\nFrom \n"),
    ("no final newline", b"first line\nlast line without newline"),
    ("CRLF", b"line one\r\nline two\r\n.\r\n"),
    ("bare CR", b"a\rb\r\rc\n\r"),
    ("NUL bytes", b"nul\x00in\x00the middle\n\x00"),
    ("empty body", b""),
    ("long line", b"x" * 300000 + b"\n"),
])
def test_bytes_arrive_exactly_as_sent(run_handler, config, mm2, name, body):
    message = sample_message(body=body)
    r = run_handler([HOST, "test"], message, config())
    assert r.code == 0, r
    assert queued_bytes(mm2) == [expected_queue_file(message)]


def test_crlf_from_line_gets_a_crlf_trace_header(run_handler, config, mm2):
    message = (b"From alice@example.org Sun Nov 22 02:44:03 2026\r\n"
               b"Subject: crlf\r\n\r\nbody\r\n")
    r = run_handler([HOST, "test"], message, config())
    assert r.code == 0
    [data] = queued_bytes(mm2)
    assert data == (b"From alice@example.org Sun Nov 22 02:44:03 2026\r\n"
                    b"X-Mailman-Handler: mm-handler 0.1.0\r\n"
                    b"Delivered-To: test@lists.example.test\r\n"
                    b"Subject: crlf\r\n\r\nbody\r\n")


def test_a_message_without_from_line_is_passed_as_it_came(run_handler, config, mm2,
                                                          syslog_sink):
    message = b"Subject: no from line\n\nbody\n"
    r = run_handler(["-r", "bob@example.org", HOST, "test"], message, config())
    assert r.code == 0
    assert queued_bytes(mm2) == [TRACE + delivered_to() + message]
    [line] = delivery_lines(syslog_sink)
    assert line.startswith("sender=<bob@example.org> ")


def test_a_large_message_streams_through(run_handler, config, mm2):
    body = b"".join(b"%08d %s\n" % (i, b"y" * 90) for i in range(60000))   # ~6 MB
    message = sample_message(body=body)
    r = run_handler([HOST, "test"], message, config())
    assert r.code == 0
    assert queued_bytes(mm2) == [expected_queue_file(message)]


# --- senders in the log ------------------------------------------------------------

@pytest.mark.parametrize("args, logged", [
    (["-r", "bob@example.org"], "<bob@example.org>"),
    (["-r", "<bob@example.org>"], "<bob@example.org>"),
    (["-r", "MAILER-DAEMON"], "<>"),
    (["-r", "<>"], "<>"),
    (["-r", ""], "<>"),
    ([], "<alice@example.org>"),            # taken from the From_ line
    (["-fcarol@example.org"], "<carol@example.org>"),
])
def test_the_sender(run_handler, config, mm2, syslog_sink, args, logged):
    r = run_handler(args + [HOST, "test"], sample_message(), config())
    assert r.code == 0
    [line] = delivery_lines(syslog_sink)
    assert line.startswith("sender=%s recipient=test@%s " % (logged, HOST))


# --- several recipients: each gets the whole message once ---------------------------

def test_several_recipients_each_get_the_message_once(run_handler, config, mm2,
                                                      syslog_sink):
    message = sample_message(body=b"to three addresses\n")
    r = run_handler([HOST, "test", "my-list-request", "other-bounces+a=b.example"],
                    message, config())
    assert (r.code, r.stderr) == (0, "")
    assert queued_bytes(mm2) == [expected_queue_file(message, rcpt) for rcpt in (
        "test", "my-list-request", "other-bounces+a=b.example")]
    assert [run["argv"] for run in mm2.runs()] == [
        ["post", "test"], ["request", "my-list"], ["bounces", "other"]]
    lines = delivery_lines(syslog_sink)
    assert len(lines) == 3 and all(" status=0 " in l for l in lines)


@pytest.mark.parametrize("threshold, size", [
    (0, 10),                  # everything in the temp file
    (1024, 300 * 1024),       # past the threshold: memory, then the temp file
    (4 * 1024 * 1024, 300 * 1024),   # under it: memory only
    (65536, 65536 * 3 + 1),   # chunk boundaries
])
def test_spooling_for_several_recipients(run_handler, config, mm2, tmp_path,
                                         threshold, size):
    spool = tmp_path / "spool"
    spool.mkdir()
    body = (b"0123456789abcdef.\n" * (size // 18 + 1))[:size]
    message = sample_message(body=body)
    r = run_handler([HOST, "test", "other", "my-list"], message,
                    config(spool_dir=str(spool), spool_threshold=str(threshold)))
    assert (r.code, r.stderr) == (0, "")
    assert queued_bytes(mm2) == [expected_queue_file(message, rcpt)
                                 for rcpt in ("test", "other", "my-list")]
    assert os.listdir(spool) == []          # O_TMPFILE: nothing left behind


def test_a_missing_spool_directory_keeps_the_mail(run_handler, config, mm2, tmp_path):
    r = run_handler([HOST, "test", "other"], sample_message(body=b"z" * 5000),
                    config(spool_dir=str(tmp_path / "nowhere"), spool_threshold="100"))
    assert r.code == 75
    assert r.stderr == "".join(
        "4.3.0 <%s@%s>: cannot spool the message in %s: No such file or directory; "
        "kept for retry\n" % (name, HOST, tmp_path / "nowhere") for name in ("test", "other"))
    assert queued_bytes(mm2) == []


def test_one_unknown_recipient_among_several(run_handler, config, mm2):
    message = sample_message()
    r = run_handler([HOST, "test", "nope"], message, config())
    assert r.code == 67
    assert r.stderr == '5.1.1 <nope@%s>: no list named "nope" here\n' % HOST
    assert queued_bytes(mm2) == [expected_queue_file(message)]


def test_one_failing_recipient_keeps_the_mail_for_all(run_handler, config, mm2,
                                                      make_config, tmp_path):
    # "gone" exists in mm-handler's view of the lists but not in Mailman's
    view = tmp_path / "view"
    for name in ("test", "gone"):
        (view / name).mkdir(parents=True)
        (view / name / "config.pck").write_bytes(b"")
    cfg = make_config({"mm-handler": {"backend": "mailman2"},
                       "mailman2": {"wrapper": mm2.path, "lists_dir": str(view)}})
    message = sample_message()
    r = run_handler([HOST, "test", "gone"], message, cfg)
    assert r.code == 75
    assert r.stderr == ("4.3.0 <gone@%s>: wrapper exit 1: the Mailman script failed "
                        "(list missing or a Python error) (wrapper said: post script, "
                        "list not found: gone); kept for retry\n" % HOST)
    assert queued_bytes(mm2) == [expected_queue_file(message)]


# --- unknown lists and unapproved actions -------------------------------------------

@pytest.mark.parametrize("recipient, name", [
    ("nope", "nope"), ("nope-request", "nope"), ("test-foo", "test-foo"),
    ("owner-nope", "nope"), ("../test", "../test"), ("-test", "-test"),
])
def test_unknown_list_is_rejected(run_handler, config, mm2, syslog_sink, recipient, name):
    r = run_handler([HOST, recipient], sample_message(), config())
    assert r.code == 67
    assert r.stderr == '5.1.1 <%s@%s>: no list named "%s" here\n' % (recipient, HOST, name)
    assert mm2.runs() == [] and queued_bytes(mm2) == []
    [line] = delivery_lines(syslog_sink)
    assert " list=- action=- backend=mailman2 status=67 " in line


def test_unknown_list_discarded(run_handler, config, mm2, syslog_sink):
    r = run_handler([HOST, "nope"], sample_message(), config(unknown_list="discard"))
    assert (r.code, r.stderr) == (0, "")
    assert mm2.runs() == [] and queued_bytes(mm2) == []
    [line] = delivery_lines(syslog_sink)
    assert ' status=0 ' in line and 'reason="discarded: no list named \'nope\' here"' in line


def test_a_bounced_recipient_does_not_starve_the_others(run_handler, make_config, mm2,
                                                       tmp_path):
    # the bounce policy reads the whole message for its letter first
    letters = tmp_path / "letters"
    letters.mkdir()
    sendmail = tmp_path / "sendmail"
    sendmail.write_text('#!/bin/sh\nexec /bin/cat > "%s/$$"\n' % letters)
    sendmail.chmod(0o755)
    cfg = make_config({"mm-handler": {"backend": "mailman2", "unknown_list": "bounce"},
                       "mailman2": {"wrapper": mm2.path, "lists_dir": mm2.lists_dir},
                       "bounce": {"sendmail": str(sendmail)}})
    message = sample_message()
    r = run_handler(["-r", "alice@example.org", HOST, "nope", "test"], message, cfg)
    assert (r.code, r.stderr) == (0, "")
    assert queued_bytes(mm2) == [expected_queue_file(message)]
    assert len(os.listdir(letters)) == 1


def test_an_unapproved_action_is_rejected(run_handler, config, mm2):
    r = run_handler([HOST, "test-request"], sample_message(),
                    config(approved_actions="post bounces"))
    assert r.code == 67
    assert r.stderr == ('5.7.1 <test-request@%s>: list "test" takes no "request" '
                        'mail here\n' % HOST)
    assert mm2.runs() == [] and queued_bytes(mm2) == []


def test_a_list_with_only_config_db_exists(run_handler, config, mm2):
    mm2.add_list("old", filename="config.db")
    r = run_handler([HOST, "old"], sample_message(), config())
    assert r.code == 0 and len(queued_bytes(mm2)) == 1


# --- the stand-in on its own: the real wrapper's answers -------------------------------
# (what tests/test_mailman2_real.py checks against the real one, here without root
# or a Mailman build)

def run_stand_in(mm2, args, message=b"From a@b Sun Nov 22 02:44:03 2026\n\nx\n"):
    proc = subprocess.run([mm2.path] + args, input=message, capture_output=True,
                          env={}, cwd="/", timeout=30)
    return proc.returncode, proc.stderr.decode()


@pytest.mark.parametrize("command, script", [
    ("post", "post"), ("admin", "bounces"), ("bounces", "bounces"),
    ("confirm", "confirm"), ("join", "join"), ("leave", "leave"),
    ("owner", "mailowner"), ("request", "mailcmd"), ("subscribe", "join"),
    ("unsubscribe", "leave")])
def test_the_stand_in_names_its_script_as_the_real_one_does(mm2, command, script):
    assert run_stand_in(mm2, [command, "nolist"]) == (
        1, "%s script, list not found: nolist\n" % script)
    assert run_stand_in(mm2, [command]) == (
        1, "mailowner got no listname.\n" if script == "mailowner"
        else "%s script got no listname.\n" % script)
    assert mm2.queued() == []


@pytest.mark.parametrize("name", ["TEST", "x!y", "t\xe9st", "a/b"])
def test_the_stand_in_refuses_a_name_mailman2_does_not_accept(mm2, name):
    mm2.add_list(name)                      # config.pck there all the same
    assert run_stand_in(mm2, ["post", name]) == (
        1, "post script, list not found: %s\n" % name)
    assert mm2.queued() == []


@pytest.mark.parametrize("filename", ["config.pck", "config.pck.last", "config.db",
                                      "config.db.last"])
def test_the_stand_in_sees_a_list_by_any_of_its_four_files(mm2, filename):
    mm2.add_list("foo=bar.x+y_z", filename=filename)
    assert run_stand_in(mm2, ["post", "foo=bar.x+y_z"]) == (0, "")
    [(path, _)] = mm2.queued()
    assert os.path.basename(os.path.dirname(path)) == "in"


def test_the_stand_in_checks_the_callers_group_by_name(mm2):
    gid = nameless_gid()
    proc = subprocess.run([mm2.path, "post", "test"], input=b"x\n", capture_output=True,
                          env={}, cwd="/", timeout=30, group=gid, extra_groups=[])
    assert (proc.returncode, proc.stderr.decode()) == (8, (
        "Failure to find group name for GID %d.  Mailman\n"
        "expected the mail wrapper to be executed as group\n"
        "\"root\", but the system's mail server executed the\n"
        "wrapper as GID %d for which the name could not be\n"
        "found.  Try adding GID %d to your system as \"root\",\n"
        "or tweak your mail server to run the wrapper as group\n"
        "\"root\".\n" % (gid, gid, gid)))
    mm2.configure(group="0")                # configure makes a gid its name
    assert run_stand_in(mm2, ["post", "test"]) == (0, "")
    mm2.configure(group="mm-no-such-group")  # compiled in as given: a mismatch
    assert run_stand_in(mm2, ["post", "test"]) == (2, (
        'Group mismatch error.  Mailman expected the mail\n'
        'wrapper script to be executed as group "mm-no-such-group", but\n'
        'the system\'s mail server executed the mail script as\n'
        'group "root".  Try tweaking the mail server to run the\n'
        'script as group "mm-no-such-group", or re-run configure, \n'
        'providing the command line option `--with-mail-gid=root\'.\n'))
    assert len(mm2.queued()) == 1


# --- every wrapper status maps as issue 2 says; nothing is lost ----------------------

WRAPPER_STATUSES = [
    # (wrapper settings, reason in our line, the wrapper's words)
    ({"group": "nogroup"}, "wrapper exit 2: group mismatch: the mailer's U= group is "
     "not the group the wrapper was compiled for", "Group mismatch error."),
    # the real wrapper's exit 8: the mailer runs with a gid that has no name
    ({"mailer_gid": "nameless"}, "wrapper exit 8: the mailer's gid has no group name "
     "(check U= and /etc/group)", "Failure to find group name for GID %d.  Mailman "
     "expected the mail wrapper to be executed as group \"root\"" % nameless_gid()),
    ({"fault": "exit", "code": 1}, "wrapper exit 1: the Mailman script failed "
     "(list missing or a Python error)", "injected fault: exit 1"),
    ({"fault": "exit", "code": 3}, "wrapper exit 3: setregid() failed",
     "injected fault: exit 3"),
    ({"fault": "exit", "code": 4}, "wrapper exit 4: the wrapper could not exec its "
     "script", "injected fault: exit 4"),
    ({"fault": "exit", "code": 5}, "wrapper exit 5: the wrapper reports a usage error",
     "injected fault: exit 5"),
    ({"fault": "exit", "code": 6}, "wrapper exit 6: the wrapper reports an illegal "
     "command", "injected fault: exit 6"),
    ({"fault": "exit", "code": 7}, "wrapper exit 7: unexpected status",
     "injected fault: exit 7"),
    ({"fault": "exit", "code": 75}, "wrapper exit 75: unexpected status",
     "injected fault: exit 75"),
    ({"fault": "exit", "code": 255}, "wrapper exit 255: unexpected status",
     "injected fault: exit 255"),
    ({"fault": "exit", "code": 67, "after_read": True}, "wrapper exit 67: unexpected "
     "status", "injected fault: exit 67"),
    ({"fault": "signal", "signal": 9}, "wrapper killed by signal 9", None),
    ({"fault": "signal", "signal": 11}, "wrapper killed by signal 11", None),
    ({"fault": "signal", "signal": 15, "after_read": True},
     "wrapper killed by signal 15", None),
    ({"fault": "noread"}, "wrapper exited 0 without reading the whole message", None),
    ({"fault": "partial", "bytes": 10}, "wrapper exited 0 without reading the whole "
     "message", None),
]


@pytest.mark.parametrize("settings, reason, said", WRAPPER_STATUSES,
                         ids=[str(s) for s, _, _ in WRAPPER_STATUSES])
def test_every_wrapper_failure_keeps_the_mail(run_handler, handler, config, mm2,
                                              syslog_sink, settings, reason, said):
    settings = dict(settings)
    message = sample_message(body=b"q" * 200000)
    if settings.pop("mailer_gid", None):
        # as root, but with a real (and effective) gid that has no name
        from tests.conftest import Run
        r = Run(subprocess.run([str(handler), "-C", str(config()), HOST, "test"],
                               input=message, capture_output=True, env={}, cwd="/",
                               timeout=120, group=nameless_gid(), extra_groups=[]))
    else:
        mm2.configure(**settings)
        r = run_handler([HOST, "test"], message, config())
    assert r.code == 75, r
    line = "4.3.0 <test@%s>: %s" % (HOST, reason)
    assert r.stderr.startswith(line), r.stderr
    assert r.stderr.endswith("; kept for retry\n") and r.stderr.count("\n") == 1
    if said:
        assert "(wrapper said: %s" % said in r.stderr
    [log] = delivery_lines(syslog_sink)
    assert ' status=75 ' in log and 'reason="%s"' % reason in log
    if settings.get("fault") == "partial":
        # the truncated copy is Mailman's problem; the whole mail stays queued
        assert [len(d) for d in queued_bytes(mm2)] == [10]
    else:
        assert queued_bytes(mm2) == []


def test_the_list_missing_in_mailman_keeps_the_mail(run_handler, config, mm2,
                                                    syslog_sink, tmp_path):
    mm2.configure(lists_dir=str(tmp_path / "elsewhere"))
    r = run_handler([HOST, "test"], sample_message(), config())
    assert r.code == 75
    assert r.stderr == ("4.3.0 <test@%s>: wrapper exit 1: the Mailman script failed "
                        "(list missing or a Python error) (wrapper said: post script, "
                        "list not found: test); kept for retry\n" % HOST)
    assert queued_bytes(mm2) == []


def test_a_fault_then_a_retry_delivers_exactly_once(run_handler, config, mm2):
    message = sample_message()
    mm2.configure(group="nogroup")
    assert run_handler([HOST, "test"], message, config()).code == 75
    assert queued_bytes(mm2) == []
    mm2.configure(group="root")         # the admin fixes the group
    assert run_handler([HOST, "test"], message, config()).code == 0
    assert queued_bytes(mm2) == [expected_queue_file(message)]


def test_a_slow_wrapper_is_killed_and_the_mail_kept(run_handler, make_config, mm2):
    mm2.configure(fault="sleep", seconds=30)
    cfg = make_config({"mm-handler": {"backend": "mailman2"},
                       "mailman2": {"wrapper": mm2.path, "lists_dir": mm2.lists_dir,
                                    "timeout": "1"}})
    r = run_handler([HOST, "test"], sample_message(), cfg, timeout=20)
    assert r.code == 75
    assert r.stderr == ("4.3.0 <test@%s>: wrapper did not finish within 1 s and was "
                        "killed; kept for retry\n" % HOST)
    assert queued_bytes(mm2) == []


# --- one deadline, no partial hand-over (mm_handler.child) ------------------------------

def wait_for_pid(path, seconds=10):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if os.path.exists(path):
            return int(open(path).read())
        time.sleep(0.01)
    raise AssertionError("the wrapper never started")


def dead(pid, seconds=2):
    """No such process, or a zombie not yet reaped by init."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.01)
    return False


def test_a_wrapper_that_never_reads_is_killed_at_the_deadline(run_handler, make_config,
                                                              mm2, tmp_path):
    started = str(tmp_path / "started")
    mm2.configure(fault="sleep", seconds=60, started=started)
    cfg = make_config({"mm-handler": {"backend": "mailman2"},
                       "mailman2": {"wrapper": mm2.path, "lists_dir": mm2.lists_dir,
                                    "timeout": "1"}})
    begin = time.monotonic()
    r = run_handler([HOST, "test"], sample_message(body=b"z" * 240000), cfg, timeout=30)
    took = time.monotonic() - begin
    assert r.code == 75 and took < 4, (r, took)
    assert r.stderr == ("4.3.0 <test@%s>: wrapper did not finish within 1 s and was "
                        "killed; kept for retry\n" % HOST)
    assert dead(wait_for_pid(started))
    assert queued_bytes(mm2) == [] and mm2.runs() == []


def test_a_child_of_the_wrapper_holding_its_output_does_not_delay_success(
        run_handler, config, mm2):
    mm2.configure(fault="linger", seconds=60)
    message = sample_message(body=b"q" * 100000)
    begin = time.monotonic()
    r = run_handler([HOST, "test"], message, config(), timeout=30)
    took = time.monotonic() - begin
    [run] = mm2.runs()
    os.kill(run["lingering"], signal.SIGKILL)
    assert (r.code, r.stderr) == (0, "")
    assert took < 4, took
    assert queued_bytes(mm2) == [expected_queue_file(message)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_stream_kills_the_wrapper_before_its_stdin_closes(
        handler, config, mm2, tmp_path, signum):
    """Mailman 2 queues whatever it read up to a clean end of file: the
    wrapper, reading for sure, must die before mm-handler lets go of the pipe."""
    started = str(tmp_path / "started")
    mm2.configure(started=started)
    message = sample_message(body=b"0123456789abcdef\n" * 65536)      # ~1 MB
    proc = subprocess.Popen([str(handler), "-C", str(config()), HOST, "test"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={}, cwd="/")
    try:
        proc.stdin.write(message[:len(message) // 2])
        proc.stdin.flush()
        wrapper = wait_for_pid(started)
        time.sleep(0.3)                 # it has read what was sent
        proc.send_signal(signum)
        try:
            proc.stdin.write(message[len(message) // 2:])
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read().decode()
        assert proc.wait(30) == 75, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted by signal %d" % signum in err
    assert dead(wrapper)
    time.sleep(0.3)
    assert queued_bytes(mm2) == [] and mm2.runs() == []


# --- the manual pipe test --------------------------------------------------------------

def test_dry_run_prints_the_wrapper_argv_and_delivers_nothing(run_handler, config, mm2):
    r = run_handler(["--dry-run", HOST, "test-request", "nope"], sample_message(),
                    config())
    assert r.code == 67
    assert ("recipient test-request@%s: list test, action request, backend mailman2: "
            "%s request test\n" % (HOST, mm2.path)) in r.stdout
    assert "recipient test-request@%s: exit 0: dry run: wrapper is executable\n" % HOST \
        in r.stdout
    assert r.stdout.endswith("exit status: 67\n")
    assert mm2.runs() == [] and queued_bytes(mm2) == []
