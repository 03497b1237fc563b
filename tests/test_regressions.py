"""Issue 8's reproduced defects, each as the adversary ran it, through the
installed command against the real Mailman 3 runner or the Mailman 2
stand-in.  Every test here failed before its fix.
"""

import email
import email.policy
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import FROM_LINE, sample_message
from tests.peers.mailman2_wrapper import Installed
from tests.peers.mailman3 import DOMAIN
from tests.test_bounce import CAPTURE, sent

HOST = DOMAIN
SENDER = "alice@example.org"
TRACE = b"X-Mailman-Handler: mm-handler 0.1.0\n"


@pytest.fixture
def capture(tmp_path):
    path = tmp_path / "fake-sendmail"
    path.write_text(CAPTURE)
    path.chmod(0o755)
    return path


@pytest.fixture
def mm2(tmp_path):
    return Installed(tmp_path / "mailman", lists=["test", "other"])


@pytest.fixture
def mm2_config(make_config, mm2, capture):
    def make(**mm_handler):
        return make_config({
            "mm-handler": dict({"backend": "mailman2"}, **mm_handler),
            "mailman2": {"wrapper": mm2.path, "lists_dir": mm2.lists_dir,
                         "timeout": "20"},
            "bounce": {"sendmail": str(capture)},
        })
    return make


def big_message(size=2 * 1024 * 1024, **kw):
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuv\n"
    return sample_message(body=line * (size // len(line)), **kw)


# -- 1. a spool failure hands nothing over ------------------------------------

@pytest.mark.parametrize("threshold", ["1048576", "0"])
def test_mailman3_spool_failure_hands_nothing_over(run_handler, mm3_config, mm3,
                                                   capture, threshold):
    config = mm3_config(unknown_list="bounce", spool_dir="/nonexistent",
                        spool_threshold=threshold,
                        extra={"bounce": {"sendmail": str(capture)}})
    run = run_handler(["-r", SENDER, HOST, "test", "nope"], big_message(), config)
    assert run.code == 75, run
    assert "cannot spool the message in /nonexistent" in run.stderr
    assert mm3.queued() == {}
    assert sent(capture) == []


def test_mailman2_spool_failure_beside_a_bounce_hands_nothing_over(
        run_handler, mm2_config, mm2, capture):
    config = mm2_config(unknown_list="bounce", spool_dir="/nonexistent",
                        spool_threshold="0")
    run = run_handler(["-r", SENDER, HOST, "nope", "test"], big_message(), config)
    assert run.code == 75, run
    assert mm2.queued() == []
    assert sent(capture) == []


def test_a_spool_without_o_tmpfile_leaves_nothing_behind(run_handler, mm2_config,
                                                         mm2, tmp_path):
    """The fallback for systems without O_TMPFILE: a random name, unlinked."""
    from mm_handler import envelope
    spool = tmp_path / "spool"
    spool.mkdir()
    real = getattr(os, "O_TMPFILE", None)
    try:
        if real is not None:
            del os.O_TMPFILE
        fd = envelope.unnamed_file(str(spool))
    finally:
        if real is not None:
            os.O_TMPFILE = real
    try:
        os.write(fd, b"kept")
        assert os.listdir(spool) == []
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.read(fd, 10) == b"kept"
    finally:
        os.close(fd)


# -- 2. the whole-name reading is asked first (no var_dir) ----------------------

@pytest.mark.parametrize("local, listid", [
    ("news-admin", "news-admin"),     # not news's -bounces
    ("owner-foo", "owner-foo"),       # not foo's owners
    ("news-bounces", "news-bounces"),
])
def test_without_var_dir_a_list_named_like_a_role_gets_its_own_mail(
        run_handler, mm3_config, mm3, local, listid):
    run = run_handler(["-r", SENDER, HOST, local], sample_message(), mm3_config())
    assert run.code == 0, run
    assert mm3.queued() == {"in": 1}, mm3.queued()
    (msg, data), = mm3.read_queue("in")
    assert data["listid"] == "%s.%s" % (listid, DOMAIN)
    assert data.get("to_list") and not data.get("subaddress")


def test_without_var_dir_the_suffix_reading_follows_a_refused_whole_name(
        run_handler, mm3_config, mm3):
    run = run_handler(["-r", SENDER, HOST, "test-admin", "foo-owner"],
                      sample_message(), mm3_config())
    assert run.code == 0, run
    assert mm3.queued() == {"bounces": 1, "in": 1}, mm3.queued()
    (_, bounces), = mm3.read_queue("bounces")
    (_, owner), = mm3.read_queue("in")
    assert bounces["listid"] == "test." + DOMAIN
    assert owner["listid"] == "foo." + DOMAIN and owner.get("to_owner")


# -- 6. list headers are list mail: no letter ------------------------------------

def test_list_mail_to_an_unknown_list_gets_no_letter(run_handler, mm2_config,
                                                     capture, syslog_sink):
    extra = (b"List-Id: <other.lists.example.org>\n"
             b"List-Unsubscribe: <mailto:other-leave@lists.example.org>\n")
    run = run_handler(["-r", "other-bounces@lists.example.org", HOST, "nope"],
                      sample_message(extra=extra), mm2_config(unknown_list="bounce"))
    assert run.code == 0, run
    assert sent(capture) == []
    assert any("no bounce" in m and "list mail" in m for m in syslog_sink.messages())


# -- 8. dry run says what a real run does ----------------------------------------

def test_dry_run_under_bounce_says_what_a_real_run_exits(run_handler, mm2_config,
                                                         capture):
    config = mm2_config(unknown_list="bounce")
    dry = run_handler(["--dry-run", "-r", SENDER, HOST, "nope"], b"", config)
    real = run_handler(["-r", SENDER, HOST, "nope"], sample_message(), config)
    assert (dry.code, real.code) == (0, 0), (dry, real)
    assert "exit status: 0" in dry.stdout and "bounce letter would go" in dry.stdout
    assert len(sent(capture)) == 1


# -- 10. non-blocking stdin, signals ---------------------------------------------

def test_a_non_blocking_stdin_is_read_whole(handler, mm2_config, mm2):
    message = big_message(size=600 * 1024)
    r, w = os.pipe()
    os.set_blocking(r, False)
    proc = subprocess.Popen([str(handler), "-C", str(mm2_config()), "-r", SENDER,
                             HOST, "test"], stdin=r, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={}, cwd="/")
    os.close(r)
    with os.fdopen(w, "wb") as pipe:
        for i in range(0, len(message), 7000):
            pipe.write(message[i:i + 7000])
            pipe.flush()
            if i % 70000 == 0:
                time.sleep(0.02)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    [queued] = [data for _, data in mm2.queued()]
    assert queued == FROM_LINE + TRACE + b"Delivered-To: test@" + HOST.encode() + b"\n" + message[len(FROM_LINE):]


def signalled_mid_stream(handler, config, signum):
    """Run the command on half of a 1 MiB message, send `signum` while it
    streams, then the rest: (exit status, stderr)."""
    message = big_message(size=1024 * 1024)
    proc = subprocess.Popen([str(handler), "-C", str(config), "-r", SENDER,
                             HOST, "test"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={}, cwd="/")
    proc.stdin.write(message[:len(message) // 2])
    proc.stdin.flush()
    time.sleep(0.5)         # the delivery runs and has read what was sent
    proc.send_signal(signum)
    try:
        proc.stdin.write(message[len(message) // 2:])
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read()
    return proc.wait(30), err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_stream_queues_nothing_in_mailman2(handler, mm2_config, mm2,
                                                        signum):
    """Sendmail kills a mailer on its timeout: the wrapper must not read a
    clean end of file after half the message."""
    code, err = signalled_mid_stream(handler, mm2_config(), signum)
    assert code == 75, err
    assert b"interrupted by signal %d" % signum in err
    time.sleep(0.3)
    assert mm2.queued() == []


def test_a_signal_mid_data_sends_no_final_dot_to_mailman3(handler, mm3_config, mm3):
    code, err = signalled_mid_stream(handler, mm3_config(), signal.SIGTERM)
    assert code == 75, err
    time.sleep(0.5)
    assert mm3.queued() == {}


# -- 11. one letter per message ---------------------------------------------------

def test_one_letter_names_every_refused_recipient(run_handler, mm2_config, capture):
    unknown = ["nope%d" % i for i in range(30)]
    run = run_handler(["-r", SENDER, HOST] + unknown + ["test"],
                      big_message(size=100 * 1024), mm2_config(unknown_list="bounce"))
    assert run.code == 0, run
    [letter] = sent(capture)
    msg = email.message_from_bytes(letter["letter"].encode(),
                                   policy=email.policy.default)
    text, status, returned = msg.get_payload()
    finals = [block["Final-Recipient"] for block in status.get_payload()
              if "Final-Recipient" in block]
    assert finals == ["rfc822; %s@%s" % (u, HOST) for u in unknown]
    for u in unknown:
        assert "<%s@%s>" % (u, HOST) in text.get_content()


# -- 12. argv hardening and the 8-bit header part ----------------------------------

def test_an_option_looking_host_is_never_obeyed(run_handler, make_config, tmp_path,
                                                mm2):
    evil = tmp_path / "evil.cfg"
    marker = tmp_path / "ran"
    script = tmp_path / "evil-wrapper"
    script.write_text("#!/bin/sh\ntouch %s\ncat >/dev/null\n" % marker)
    script.chmod(0o755)
    evil.write_text("[mm-handler]\nbackend = mailman2\n[mailman2]\nwrapper = %s\n"
                    "lists_dir = %s\n" % (script, mm2.lists_dir))
    good = make_config({"mm-handler": {"backend": "mailman2"},
                        "mailman2": {"wrapper": mm2.path, "lists_dir": mm2.lists_dir}})
    run = run_handler(["-r", SENDER, "-C" + str(evil), "test"], sample_message(), good)
    assert run.code == 75, run
    assert "HOST" in run.stderr
    assert not marker.exists()
    assert mm2.queued() == []


@pytest.mark.parametrize("args", [["-r", SENDER, "", "test"],
                                  ["-r", SENDER, HOST, "test@"],
                                  ["-r", SENDER, HOST, ""]])
def test_an_empty_host_or_domain_is_a_setup_fault(run_handler, mm2_config, args):
    run = run_handler(args, sample_message(), mm2_config())
    assert run.code == 75, run
    assert run.stderr.strip().endswith("kept for retry")


def test_headers_only_original_with_8bit_bytes_declares_8bit(run_handler, mm2_config,
                                                             capture):
    config = mm2_config(unknown_list="bounce")
    config.write_text(config.read_text().replace("[bounce]",
                                                 "[bounce]\nmax_original = 100"))
    message = sample_message(subject="Grüße", message_id="<g@example.org>",
                             body=b"x" * 500 + b"\n")
    run = run_handler(["-r", SENDER, HOST, "nope"], message, config)
    assert run.code == 0, run
    [letter] = sent(capture)
    msg = email.message_from_bytes(letter["letter"].encode(),
                                   policy=email.policy.compat32)
    returned = msg.get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Transfer-Encoding"] == "8bit"


# -- 9. a UTF-8 envelope sender is neither dropped nor lost -----------------------

def test_a_utf8_sender_reaches_mailman3_without_smtputf8(run_handler, mm3_config, mm3,
                                                         syslog_sink):
    sender = "jöran@exämple.org"
    run = run_handler(["-r", sender, HOST, "test"], sample_message(), mm3_config())
    assert run.code == 0, run
    (msg, data), = mm3.read_queue("in")
    kept = msg["X-Original-Envelope-From"]
    assert kept is not None
    if isinstance(kept, str):
        raw = kept.encode("ascii", "surrogateescape")
    else:       # non-ASCII bytes: an email.header.Header of unknown-8bit
        from email.header import decode_header
        raw = b"".join(part for part, _ in decode_header(kept))
    assert raw == b"<" + sender.encode() + b">"
    assert any("X-Original-Envelope-From" in m for m in syslog_sink.messages())


def test_a_utf8_sender_reaches_mailman2_in_the_from_line(run_handler, mm2_config, mm2):
    sender = "jöran@exämple.org"
    message = ("From %s Sun Nov 22 02:44:03 2026\n" % sender).encode() \
        + sample_message(from_line=b"")
    run = run_handler(["-r", sender, HOST, "test"], message, mm2_config())
    assert run.code == 0, run
    [queued] = [data for _, data in mm2.queued()]
    assert queued.startswith(("From %s " % sender).encode())


# -- review A (after the fixes above): each reproduced, then fixed -----------------

@pytest.mark.parametrize("local", ["test-owner", "test-request", "test-join",
                                   "Test-Bounces+bob=example.org"])
def test_without_var_dir_an_unapproved_action_is_never_sent_as_a_post(
        run_handler, mm3_config, mm3, local):
    """Mailman 3 reads "test-owner" as test's owner when no list of that
    name exists: the whole-name reading must not smuggle it in."""
    run = run_handler(["-r", SENDER, HOST, local], sample_message(),
                      mm3_config(approved_actions="post"))
    assert run.code == 67, run
    assert 'takes no "' in run.stderr
    assert mm3.queued() == {}


def test_no_letter_while_another_recipient_is_kept_for_retry(run_handler, make_config,
                                                             mm2, capture, tmp_path):
    """The message comes back: a letter per retry would be backscatter."""
    failing = tmp_path / "failing-wrapper"
    failing.write_text("#!/bin/sh\ncat >/dev/null\nexit 1\n")
    failing.chmod(0o755)
    config = make_config({
        "mm-handler": {"backend": "mailman2", "unknown_list": "bounce"},
        "mailman2": {"wrapper": str(failing), "lists_dir": mm2.lists_dir},
        "bounce": {"sendmail": str(capture)}})
    for _ in range(2):
        run = run_handler(["-r", SENDER, HOST, "nope", "test"], sample_message(), config)
        assert run.code == 75, run
    assert sent(capture) == []


def test_a_header_block_too_long_to_read_gets_no_letter(run_handler, mm2_config,
                                                        capture, syslog_sink):
    extra = b"X-Big: " + b"y" * 600000 + b"\nList-Unsubscribe: <mailto:u@x>\n"
    run = run_handler(["-r", SENDER, HOST, "nope"], sample_message(extra=extra),
                      mm2_config(unknown_list="bounce"))
    assert run.code == 0, run
    assert sent(capture) == []
    assert any("header block over" in m for m in syslog_sink.messages())


def test_a_recipient_that_case_folds_into_ascii_is_no_list(run_handler, mm2_config, mm2):
    run = run_handler(["-r", SENDER, HOST, "\u212aest"], sample_message(), mm2_config())
    assert run.code == 67, run          # never the list "test", never a crash
    assert "internal error" not in run.stderr
    assert mm2.queued() == []


def test_a_closed_stdin_never_hangs(handler, mm2_config, syslog_sink):
    proc = subprocess.run(
        [str(handler), "-C", str(mm2_config()), "-r", SENDER, HOST, "test"],
        stdin=subprocess.DEVNULL, capture_output=True, env={}, cwd="/",
        timeout=20, pass_fds=(), preexec_fn=lambda: os.close(0))
    assert proc.returncode == 75, proc
    assert b"no message on standard input" in proc.stderr


# -- review B: each reproduced, then fixed ----------------------------------------

def test_a_wrapper_that_exits_leaving_a_reader_never_gives_it_end_of_file(
        run_handler, make_config, mm2, tmp_path):
    """The wrapper forks a helper into its process group and exits 0: the
    helper must not read a clean end of file after a fragment."""
    got = tmp_path / "fragment"
    forking = tmp_path / "forking-wrapper"
    forking.write_text("#!/bin/sh\n(sleep 0.3; cat > %s.tmp && mv %s.tmp %s) &\n"
                       "exit 0\n" % (got, got, got))
    forking.chmod(0o755)
    config = make_config({"mm-handler": {"backend": "mailman2"},
                          "mailman2": {"wrapper": str(forking),
                                       "lists_dir": mm2.lists_dir}})
    run = run_handler(["-r", SENDER, HOST, "test"], big_message(size=1024 * 1024),
                      config)
    assert run.code == 75, run
    time.sleep(1.0)
    assert not got.exists()


def test_a_stalled_sendmail_after_the_outcome_holds_us_for_a_bounded_time(
        handler, mm2_config, mm2):
    """After the outcome, stdin is drained for Sendmail's sake, for a while."""
    from mm_handler import envelope
    r, w = os.pipe()
    start = time.monotonic()
    envelope.drain(r, seconds=0.5)
    assert 0.4 < time.monotonic() - start < 2
    os.close(r)
    os.close(w)


def test_an_empty_wrapper_path_is_a_configuration_error(run_handler, make_config, mm2):
    config = make_config({"mm-handler": {"backend": "mailman2"},
                          "mailman2": {"wrapper": "", "lists_dir": mm2.lists_dir}})
    run = run_handler(["-r", SENDER, HOST, "test"], sample_message(), config)
    assert run.code == 75, run
    assert "wrapper" in run.stderr and "internal error" not in run.stderr


def test_a_signal_while_the_wrapper_starts_never_leaves_it_reading(handler, mm2_config,
                                                                   mm2, tmp_path):
    """strace delivers SIGTERM during the second pipe2() of the spawn, while
    signals are blocked: the handler runs as they are unblocked, and the
    wrapper (already started) must be killed before its stdin closes."""
    message = big_message(size=200 * 1024)
    src = tmp_path / "msg"
    src.write_bytes(message)
    with open(src, "rb") as stdin:
        proc = subprocess.run(
            ["strace", "-qq", "-o", "/dev/null", "-e", "trace=pipe2",
             "-e", "inject=pipe2:signal=SIGTERM:when=2",
             str(handler), "-C", str(mm2_config()), "-r", SENDER, HOST, "test"],
            stdin=stdin, capture_output=True, env={}, cwd="/", timeout=60)
    assert proc.returncode == 75, proc
    assert b"interrupted by signal 15" in proc.stderr
    time.sleep(0.5)
    assert mm2.queued() == []
