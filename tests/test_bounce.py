"""Issue 3: the bounce-text template, the three policies and the RFC 3464 letter."""

import email
import email.policy
import json
import stat
from pathlib import Path

import pytest

from mm_handler import bounce, config
from tests.conftest import sample_message

TEXTS = {
    "utf-8": "Liste $list inconnue à $domain. Écrivez à <$postmaster>. Ça marche déjà ?\n"
             "Les listes publiques sont présentées à l'adresse $listinfo_url, "
             "merci de vérifier l'orthographe avant de réessayer.\n",
    "latin-1": "Dies ist das Mailsystem von $server. Ihre Nachricht an <$recipient> "
               "konnte nicht zugestellt werden.\n$domain ist ausschließlich für "
               "Mailinglisten bestimmt. Die öffentlichen Listen finden Sie unter "
               "$listinfo_url.\nBitte schreiben Sie an <$postmaster>. Grüße, Müller.\n",
    "euc-jp": "このホスト $domain はメーリングリスト専用です。リスト $list は存在しません。\n"
              "公開されているリストの一覧は $listinfo_url をご覧ください。\n"
              "ご不明な点は管理者 <$postmaster> までご連絡ください。よろしくお願いします。\n",
    "koi8-r": "Это почтовая система $server. Ваше письмо для <$recipient> не доставлено.\n"
              "Сервер $domain обслуживает только списки рассылки. Список открытых "
              "списков находится по адресу $listinfo_url.\nПожалуйста, напишите "
              "администратору <$postmaster>, приложив это письмо. Спасибо.\n",
}


def settings_with(**bounce_keys):
    raw = {"bounce": {k: str(v) for k, v in bounce_keys.items()}}
    return config.validate(raw)


def refusal(sender="alice@example.org"):
    return bounce.Refusal("news-x@lists.example.test", "news-x", "post",
                          "lists.example.test", "5.1.1",
                          'no list named "news-x" here', sender)


@pytest.mark.parametrize("charset", sorted(TEXTS))
def test_template_in_any_charset_renders_to_the_intended_text(tmp_path, charset):
    path = tmp_path / "tmpl.txt"
    path.write_bytes(TEXTS[charset].encode(charset))
    settings = settings_with(template=path, listinfo_url="https://l.example.test/",
                             server="mx.example.test")
    text = bounce.render(settings, refusal())
    expected = (TEXTS[charset].replace("$listinfo_url", "https://l.example.test/")
                .replace("$list", "news-x")
                .replace("$domain", "lists.example.test")
                .replace("$postmaster", "postmaster@lists.example.test")
                .replace("$server", "mx.example.test")
                .replace("$recipient", "news-x@lists.example.test"))
    assert text == expected


@pytest.mark.parametrize("charset", sorted(TEXTS))
def test_letter_text_part_declares_a_charset_that_decodes_to_the_text(tmp_path, charset):
    path = tmp_path / "tmpl.txt"
    path.write_bytes(TEXTS[charset].encode(charset))
    settings = settings_with(template=path)
    text = bounce.render(settings, refusal())
    original = sample_message(from_line=b"")
    letter = b"".join(bounce.build_report(settings, [refusal()], text, original,
                                          [original], len(original)))
    msg = email.message_from_bytes(letter, policy=email.policy.default)
    part = msg.get_payload()[0]
    assert part.get_content_type() == "text/plain"
    declared = part.get_content_charset()
    assert part.get_payload(decode=True).decode(declared) == text


def test_configured_charset_wins(tmp_path):
    path = tmp_path / "tmpl.txt"
    path.write_bytes("Zoë $list".encode("latin-1"))
    # the bytes are valid cp1251 too; the setting decides
    settings = settings_with(template=path, template_charset="cp1251")
    assert bounce.render(settings, refusal()) == "Zoл news-x"


def test_unknown_placeholders_stay_as_written(tmp_path):
    path = tmp_path / "tmpl.txt"
    path.write_text("$list $nosuch ${other} $$ $")
    assert bounce.render(settings_with(template=path), refusal()) == \
        "news-x $nosuch ${other} $ $"


def test_missing_or_undecodable_template_falls_back_to_the_default(tmp_path):
    default = bounce.render(settings_with(), refusal())
    assert "news-x@lists.example.test" in default
    assert bounce.render(settings_with(template=tmp_path / "none"), refusal()) == default
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa")
    assert bounce.render(settings_with(template=bad, template_charset="ascii"),
                         refusal()) == default


def test_default_template_says_what_a_postmaster_needs():
    text = bounce.render(settings_with(listinfo_url="https://lists.example.test/lists/"),
                         refusal())
    assert 'no list named "news-x" here' in text
    assert "https://lists.example.test/lists/" in text
    assert "<postmaster@lists.example.test>" in text
    assert "personal addresses are not offered" in text
    quiet = bounce.render(settings_with(personal_note=""), refusal())
    assert "personal addresses" not in quiet


def parse_letter(letter):
    return email.message_from_bytes(letter, policy=email.policy.default)


def test_letter_is_a_multipart_report_with_three_parts():
    settings = settings_with(server="mx.example.test")
    original = sample_message(from_line=b"")
    letter = b"".join(bounce.build_report(settings, [refusal()], "Text.\n", original,
                                          [original], len(original)))
    msg = parse_letter(letter)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.example.test"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"] and msg["Message-ID"] and msg["Subject"]
    text, status, returned = msg.get_payload()
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    fields = {k: v for block in status.get_payload() for k, v in block.items()}
    assert fields["Reporting-MTA"] == "dns; mx.example.test"
    assert fields["Final-Recipient"] == "rfc822; news-x@lists.example.test"
    assert fields["Action"] == "failed"
    assert fields["Status"] == "5.1.1"
    assert fields["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert "Arrival-Date" in fields
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "test"
    assert letter.endswith(original + b"\n--" + msg.get_boundary().encode() + b"--\n")
    assert not msg.defects and not any(p.defects for p in msg.walk())


def test_original_above_the_limit_is_returned_as_headers_only():
    settings = settings_with(max_original=1000)
    original = sample_message(from_line=b"", body=b"y" * 5000 + b"\n")
    letter = b"".join(bounce.build_report(settings, [refusal()], "Text.\n", original,
                                          [original], len(original)))
    returned = parse_letter(letter).get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"y" * 100 not in letter
    assert b"Subject: test" in letter
    at_limit = sample_message(from_line=b"")
    settings = settings_with(max_original=len(at_limit))
    letter = b"".join(bounce.build_report(settings, [refusal()], "T\n", at_limit,
                                          [at_limit], len(at_limit)))
    assert parse_letter(letter).get_payload()[2].get_content_type() == "message/rfc822"


@pytest.mark.parametrize("sender,headers,why", [
    ("", b"Subject: x\n\n", "null"),
    ("MAILER-DAEMON@example.org", b"Subject: x\n\n", "MAILER-DAEMON"),
    ("a@example.org", b"Auto-Submitted: auto-generated\n\n", "Auto-Submitted"),
    ("a@example.org", b"Auto-Submitted: auto-replied\n\n", "Auto-Submitted"),
    ("a@example.org", b"Precedence: bulk\n\n", "Precedence"),
    ("a@example.org", b"Precedence: junk\n\n", "Precedence"),
    ("a@example.org", b"Precedence: list\n\n", "Precedence"),
    ("a@example.org", b"Content-Type: multipart/report; report-type=delivery-status;"
                      b" boundary=x\n\n", "report"),
    ("a@example.org", b"Content-Type: message/delivery-status\n\n", "report"),
    # list mail: List-* headers count even without Precedence (issue 8, 6)
    ("a@example.org", b"List-Id: <x.example.org>\n\n", "list mail"),
    ("a@example.org", b"List-Unsubscribe: <mailto:x-leave@example.org>\n\n",
     "list mail"),
    ("a@example.org", b"List-Post: <mailto:x@example.org>\n\n", "list mail"),
    # the review's cases: a comment, a second header, ezmlm's, a space
    ("a@example.org", b"Precedence: bulk (comment)\n\n", "Precedence"),
    ("a@example.org", b"Precedence: first-class\nPrecedence: junk\n\n", "Precedence"),
    ("a@example.org", b"Auto-Submitted: no\nAuto-Submitted: auto-generated\n\n",
     "Auto-Submitted"),
    ("a@example.org", b"Auto-Submitted: Auto-Replied; owner-email=x@y\n\n",
     "Auto-Submitted"),
    ("a@example.org", b"Mailing-List: contact x-help@example.org\n\n", "list mail"),
    ("a@example.org", b"List-Id : <x.example.org>\n\n", "list mail"),
])
def test_loop_cases_get_no_letter(sender, headers, why):
    assert why in bounce.no_letter_reason(sender, headers)


@pytest.mark.parametrize("headers", [b"Subject: x\n\n", b"Auto-Submitted: no\n\n",
                                     b"Precedence: first-class\n\n"])
def test_ordinary_messages_get_a_letter(headers):
    assert bounce.no_letter_reason("a@example.org", headers) == ""


# ------------------------------------------------- through the installed command

CAPTURE = """#!/usr/bin/python3
import json, os, sys
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sent")
os.makedirs(out, exist_ok=True)
n = len(os.listdir(out))
data = sys.stdin.buffer.read()
with open(os.path.join(out, "%d.json" % n), "w") as f:
    json.dump({"argv": sys.argv[1:], "letter": data.decode("utf-8", "replace")}, f)
code = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exit-code")
sys.exit(int(open(code).read()) if os.path.exists(code) else 0)
"""


@pytest.fixture
def capture(tmp_path):
    path = tmp_path / "fake-sendmail"
    path.write_text(CAPTURE)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def sent(capture):
    out = Path(capture).parent / "sent"
    if not out.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(out.iterdir())]


@pytest.fixture
def mm2_lists(tmp_path):
    lists = tmp_path / "lists"
    (lists / "real").mkdir(parents=True)
    (lists / "real" / "config.pck").write_bytes(b"")
    return lists


def policy_config(make_config, mm2_lists, capture, policy, **extra):
    return make_config({
        "mm-handler": {"backend": "mailman2", "unknown_list": policy,
                       "unapproved_action": policy,
                       "approved_actions": "post request owner bounces"},
        "mailman2": {"lists_dir": mm2_lists, "wrapper": "/nonexistent/wrapper"},
        "bounce": {"sendmail": capture, "server": "mx.example.test", **extra},
    })


def test_reject_prints_the_template_then_the_reason(run_handler, make_config,
                                                    mm2_lists, capture, syslog_sink):
    cfg = policy_config(make_config, mm2_lists, capture, "reject")
    run = run_handler(["-r", "alice@example.org", "lists.example.test", "news-x"],
                      sample_message(), cfg)
    assert run.code == 67
    assert 'no list named "news-x" here' in run.stdout
    assert "This is the mail system at mx.example.test." in run.stdout
    assert run.stderr.strip() == \
        '5.1.1 <news-x@lists.example.test>: no list named "news-x" here'
    assert sent(capture) == []
    assert any("status=67" in m and "recipient=news-x@lists.example.test" in m
               for m in syslog_sink.messages())


def test_unapproved_action_is_refused_with_5_7_1(run_handler, make_config,
                                                 mm2_lists, capture):
    cfg = policy_config(make_config, mm2_lists, capture, "reject")
    run = run_handler(["-r", "alice@example.org", "lists.example.test", "real-join"],
                      sample_message(), cfg)
    assert run.code == 67
    assert run.stderr.strip() == \
        '5.7.1 <real-join@lists.example.test>: list "real" takes no "join" mail here'


def test_discard_exits_0_and_logs(run_handler, make_config, mm2_lists, capture,
                                  syslog_sink):
    cfg = policy_config(make_config, mm2_lists, capture, "discard")
    run = run_handler(["-r", "alice@example.org", "lists.example.test", "news-x"],
                      sample_message(), cfg)
    assert (run.code, run.stdout, run.stderr) == (0, "", "")
    assert sent(capture) == []
    assert any("discarded" in m and "status=0" in m for m in syslog_sink.messages())


def test_bounce_sends_a_report_with_null_sender_and_exits_0(run_handler, make_config,
                                                            mm2_lists, capture):
    cfg = policy_config(make_config, mm2_lists, capture, "bounce")
    message = sample_message(body="Grüße\n".encode())
    run = run_handler(["-r", "alice@example.org", "lists.example.test", "news-x"],
                      message, cfg)
    assert run.code == 0, run
    [letter] = sent(capture)
    assert letter["argv"] == ["-oi", "-f", "<>", "--", "alice@example.org"]
    msg = parse_letter(letter["letter"].encode())
    assert msg.get_content_type() == "multipart/report"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    text, status, returned = msg.get_payload()
    assert 'no list named "news-x" here' in text.get_content()
    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload()[0]["Message-ID"] == "<test@example.org>"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert "Grüße" in letter["letter"]


def test_bounce_that_cannot_be_handed_off_keeps_the_mail(run_handler, make_config,
                                                         mm2_lists, tmp_path):
    cfg = policy_config(make_config, mm2_lists, tmp_path / "no-such-sendmail", "bounce")
    run = run_handler(["-r", "alice@example.org", "lists.example.test", "news-x"],
                      sample_message(), cfg)
    assert run.code == 75
    assert "send the bounce" in run.stderr and run.stderr.strip().endswith("kept for retry")


def test_bounce_refused_by_sendmail_keeps_the_mail(run_handler, make_config,
                                                   mm2_lists, capture):
    (capture.parent / "exit-code").write_text("71")
    cfg = policy_config(make_config, mm2_lists, capture, "bounce")
    run = run_handler(["-r", "alice@example.org", "lists.example.test", "news-x"],
                      sample_message(), cfg)
    assert run.code == 75
    assert "exited 71 taking the bounce" in run.stderr
    assert len(sent(capture)) == 1


@pytest.mark.parametrize("args,extra", [
    (["-r", "MAILER-DAEMON"], b""),
    (["-r", "<>"], b""),
    (["-r", "alice@example.org"], b"Auto-Submitted: auto-replied\n"),
    (["-r", "alice@example.org"], b"Precedence: bulk\n"),
    (["-r", "evil\r\nBcc: x@example.org"], b""),
])
def test_bounce_loop_cases_send_nothing_and_exit_0(run_handler, make_config, mm2_lists,
                                                   capture, syslog_sink, args, extra):
    cfg = policy_config(make_config, mm2_lists, capture, "bounce")
    run = run_handler(args + ["lists.example.test", "news-x"],
                      sample_message(extra=extra), cfg)
    assert run.code == 0, run
    assert sent(capture) == []
    assert any("no bounce" in m for m in syslog_sink.messages())


def test_render_template_command(run_handler, make_config, tmp_path):
    tmpl = tmp_path / "t.txt"
    tmpl.write_bytes("Список $list на $domain: $action\n".encode("koi8-r"))
    cfg = make_config({"bounce": {"template": tmpl}})
    run = run_handler(["--render-template", "Foo-Request@Lists.Example.Test"],
                      config=cfg)
    assert run.code == 0
    assert run.stdout == "Список foo на lists.example.test: request\n"


def test_bounce_beside_a_delivered_recipient_carries_the_whole_original(
        run_handler, mm3_config, mm3, capture):
    """Mailman 3 refuses one RCPT and takes the other: DATA reads stdin, and
    the bounce for the refused one still returns the whole message."""
    config = mm3_config(unknown_list="bounce",
                        extra={"bounce": {"sendmail": str(capture)}})
    body = b"".join(b"line %d\n" % i for i in range(3000))
    run = run_handler(["-r", "alice@example.org", "lists.example.test", "test", "nope"],
                      sample_message(body=body), config)
    assert run.code == 0, run
    assert mm3.queued() == {"in": 1}
    [letter] = sent(capture)
    returned = parse_letter(letter["letter"].encode()).get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload()[0].get_payload().encode() == body
