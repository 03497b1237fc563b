"""Loading the INI configuration: plain examples, every error one line."""

import os

import pytest

from mm_handler.address import ACTIONS
from mm_handler.config import (DEFAULT_PATH, ENV_VAR, ConfigError, config_path, load,
                               parse_ini, validate)

ISSUE_EXAMPLE = """\
[mm-handler]
backend = mailman3            ; or mailman2
approved_actions = post admin bounces confirm join leave owner request subscribe unsubscribe
unknown_list = reject         ; reject | discard  (bounce letters: separate issue)
trace_header = yes            ; adds "X-Mailman-Handler: mm-handler VERSION"

[mailman2]
wrapper = /usr/lib/mailman/mail/mailman
lists_dir = /var/lib/mailman/lists

[mailman3]
lmtp = 127.0.0.1:8024         ; comma-separated host:port or unix:/path, tried in order
var_dir =                     ; optional: enables the on-disk list check
timeout = 60
"""


def settings_of(text, path="/etc/test.cfg"):
    return validate(parse_ini(text, path), path).check_all()


def error_of(text, path="/etc/test.cfg"):
    with pytest.raises(ConfigError) as info:
        settings_of(text, path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith((path + ": ", path + " line "))
    return message


# --- the file from the issue, and the defaults ------------------------------

def test_the_example_from_the_issue():
    s = settings_of(ISSUE_EXAMPLE)
    assert s.get("mm-handler", "backend") == "mailman3"
    assert s.get("mm-handler", "approved_actions") == frozenset(ACTIONS)
    assert s.get("mm-handler", "unknown_list") == "reject"
    assert s.get("mm-handler", "trace_header") is True
    assert s.get("mailman2", "wrapper") == "/usr/lib/mailman/mail/mailman"
    assert s.get("mailman2", "lists_dir") == "/var/lib/mailman/lists"
    assert s.get("mailman3", "lmtp") == [("inet", ("127.0.0.1", 8024))]
    assert s.get("mailman3", "var_dir") == ""
    assert s.get("mailman3", "timeout") == 60.0
    assert s.path == "/etc/test.cfg"


def test_every_key_has_a_default():
    s = settings_of("")
    assert s.get("mm-handler", "backend") == "mailman3"
    assert s.get("mm-handler", "approved_actions") == frozenset(ACTIONS)
    assert s.get("mm-handler", "unknown_list") == "reject"
    assert s.get("mm-handler", "unapproved_action") == "reject"
    assert s.get("mm-handler", "trace_header") is True
    assert s.get("mm-handler", "spool_threshold") == 1048576
    assert s.get("mm-handler", "syslog_socket") == ""     # the system's own
    assert s.get("mm-handler", "delivered_to") is True
    assert s.get("mm-handler", "syslog_facility") == "mail"
    assert s.get("mailman2", "wrapper") == "/usr/lib/mailman/mail/mailman"
    assert s.get("mailman2", "lists_dir") == "/var/lib/mailman/lists"
    assert s.get("mailman3", "lmtp") == [("inet", ("127.0.0.1", 8024))]
    assert s.get("mailman3", "var_dir") == ""
    assert s.get("mailman3", "timeout") == 60.0
    assert s["mailman3"]["timeout"] == 60.0


# --- syntax -------------------------------------------------------------------

def test_both_separators_comments_and_case():
    raw = parse_ini("# comment\n; comment\n[MM-Handler]\nBackend: mailman2\n"
                    "  \ntrace_header=no\n")
    assert raw == {"mm-handler": {"backend": "mailman2", "trace_header": "no"}}


def test_inline_comments_need_white_space_before_them():
    raw = parse_ini("[bounce]\nlistinfo_url = http://h/x#frag ; a comment\n"
                    "postmaster = a;b # another\nserver = # nothing\n")
    assert raw["bounce"] == {"listinfo_url": "http://h/x#frag", "postmaster": "a;b",
                             "server": ""}


def test_continuation_lines():
    raw = parse_ini("[mm-handler]\napproved_actions = post\n  request ; c\n\tbounces\n")
    assert raw["mm-handler"]["approved_actions"] == "post\nrequest\nbounces"
    s = validate(raw)
    assert s.get("mm-handler", "approved_actions") == {"post", "request", "bounces"}


def test_the_first_separator_wins():
    raw = parse_ini("[mailman3]\nlmtp = 127.0.0.1:24\n")
    assert raw["mailman3"]["lmtp"] == "127.0.0.1:24"
    raw = parse_ini("[mailman3]\nlmtp: [::1]:24\n")
    assert raw["mailman3"]["lmtp"] == "[::1]:24"


@pytest.mark.parametrize("text, problem", [
    ("[mm-handler\nbackend = mailman2\n", "line 1: section header without ']'"),
    ("backend = mailman2\n", "line 1: key before any [section]"),
    ("[mm-handler]\nbackend mailman2\n", "line 2: expected 'key = value', got 'backend mailman2'"),
    ("[mm-handler]\n[mm-handler]\n", "line 2: section [mm-handler] appears twice"),
    ("[mm-handler]\nbackend = mailman2\nBackend = mailman3\n",
     "line 3: key 'backend' appears twice in [mm-handler]"),
    ("[mm-handler]\n= x\n", "line 2: expected 'key = value'"),
])
def test_syntax_errors_name_the_line(text, problem):
    assert problem in error_of(text)


# --- values -------------------------------------------------------------------

@pytest.mark.parametrize("text, problem", [
    ("[mm-handler]\nbackend = mailman4\n",
     "[mm-handler] backend = 'mailman4': must be one of: mailman3, mailman2"),
    ("[mm-handler]\nbackend =\n", "[mm-handler] backend = '': must be one of"),
    ("[mm-handler]\nunknown_list = ignore\n",
     "[mm-handler] unknown_list = 'ignore': must be one of: reject, discard, bounce"),
    ("[mm-handler]\ntrace_header = maybe\n",
     "[mm-handler] trace_header = 'maybe': must be yes or no"),
    ("[mm-handler]\napproved_actions = post digest\n",
     "[mm-handler] approved_actions = 'post digest': unknown action 'digest'"),
    ("[mm-handler]\nspool_threshold = -1\n", "[mm-handler] spool_threshold = '-1'"),
    ("[mm-handler]\nspool_threshold = 1MB\n", "[mm-handler] spool_threshold = '1MB'"),
    ("[mm-handler]\nspool_dir = tmp\n",
     "[mm-handler] spool_dir = 'tmp': must be an absolute path"),
    ("[mm-handler]\nsyslog_facility = kern\n", "[mm-handler] syslog_facility = 'kern'"),
    ("[mailman2]\nwrapper = mail/mailman\n",
     "[mailman2] wrapper = 'mail/mailman': must be the absolute path of a program"),
    ("[mailman2]\nlists_dir = lists\n", "[mailman2] lists_dir = 'lists': must be an absolute path"),
    ("[mailman2]\ntimeout = 0\n", "[mailman2] timeout = '0': must be a number of seconds"),
    ("[mailman3]\ntimeout = -5\n", "[mailman3] timeout = '-5'"),
    ("[mailman3]\ntimeout = 86401\n", "[mailman3] timeout = '86401'"),
    ("[mailman3]\ntimeout = soon\n", "[mailman3] timeout = 'soon'"),
    ("[mailman3]\ntimeout = nan\n", "[mailman3] timeout = 'nan'"),
    ("[mailman3]\nlmtp =\n", "[mailman3] lmtp = '': needs at least one host:port"),
    ("[mailman3]\nlmtp = localhost\n", "'localhost' is not host:port or unix:/path"),
    ("[mailman3]\nlmtp = 127.0.0.1:0\n", "'127.0.0.1:0' is not host:port"),
    ("[mailman3]\nlmtp = 127.0.0.1:65536\n", "'127.0.0.1:65536' is not host:port"),
    ("[mailman3]\nlmtp = :8024\n", "':8024' is not host:port"),
    ("[mailman3]\nlmtp = 127.0.0.1:lmtp\n", "'127.0.0.1:lmtp' is not host:port"),
    ("[mailman3]\nlmtp = unix:run/lmtp\n", "'unix:run/lmtp': a unix socket needs an absolute path"),
    ("[mailman3]\nvar_dir = var\n", "[mailman3] var_dir = 'var': must be an absolute path"),
    ("[mailman4]\nlmtp = 127.0.0.1:24\n", "unknown section [mailman4]"),
    ("[mailman3]\nhost = 127.0.0.1\n", "[mailman3] has no key 'host'"),
])
def test_bad_values_name_section_key_and_problem(text, problem):
    assert problem in error_of(text)


@pytest.mark.parametrize("text, value", [
    ("yes", True), ("Yes", True), ("true", True), ("on", True), ("1", True),
    ("no", False), ("NO", False), ("false", False), ("off", False), ("0", False),
])
def test_booleans(text, value):
    assert settings_of("[mm-handler]\ntrace_header = %s\n" % text).get(
        "mm-handler", "trace_header") is value


def test_endpoints_in_order():
    s = settings_of("[mailman3]\nlmtp = 127.0.0.1:8024, unix:/run/mailman/lmtp"
                    " [::1]:24,localhost:2424\n")
    assert s.get("mailman3", "lmtp") == [
        ("inet", ("127.0.0.1", 8024)), ("unix", "/run/mailman/lmtp"),
        ("inet", ("::1", 24)), ("inet", ("localhost", 2424))]


def test_approved_actions_with_commas_and_case():
    s = settings_of("[mm-handler]\napproved_actions = Post, request,bounces\n")
    assert s.get("mm-handler", "approved_actions") == {"post", "request", "bounces"}


def test_numbers():
    s = settings_of("[mm-handler]\nspool_threshold = 0\n[mailman2]\ntimeout = 0.5\n"
                    "[mailman3]\ntimeout = 86400\n")
    assert s.get("mm-handler", "spool_threshold") == 0
    assert s.get("mailman2", "timeout") == 0.5
    assert s.get("mailman3", "timeout") == 86400.0


# --- the file -----------------------------------------------------------------

def test_load_reads_a_file(tmp_path):
    path = tmp_path / "mm.cfg"
    path.write_text("[mm-handler]\nbackend = mailman2\n")
    s = load(str(path))
    assert s.get("mm-handler", "backend") == "mailman2" and s.path == str(path)


def test_load_a_missing_file(tmp_path):
    path = str(tmp_path / "missing.cfg")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == "%s: configuration file not found" % path


def test_load_a_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path))
    assert str(info.value) == "%s: cannot read configuration file: Is a directory" % tmp_path


def test_load_an_unreadable_file(tmp_path):
    # root reads any file: take the answer from a non-root process
    path = tmp_path / "secret.cfg"
    path.write_text("[mm-handler]\n")
    path.chmod(0o600)
    tmp_path.chmod(0o755)
    pid = os.fork()
    if pid == 0:        # child: become nobody, try, report by exit status
        code = 3
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                load(str(path))
                code = 1
            except ConfigError as exc:
                code = 0 if str(exc) == (
                    "%s: configuration file not readable by uid 65534" % path) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_load_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.cfg"
    path.write_bytes(b"[bounce]\npostmaster = J\xf6rg\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert str(info.value) == "%s: not UTF-8 text" % path


def test_load_names_the_file_in_value_errors(tmp_path):
    path = tmp_path / "bad.cfg"
    path.write_text("[mailman3]\ntimeout = never\n")
    with pytest.raises(ConfigError, match=r"^%s: \[mailman3\] timeout = 'never'"
                       % str(path).replace(".", r"\.")):
        load(str(path))


@pytest.mark.parametrize("option, environ, expected", [
    ("/a.cfg", {ENV_VAR: "/b.cfg"}, "/a.cfg"),
    (None, {ENV_VAR: "/b.cfg"}, "/b.cfg"),
    (None, {}, DEFAULT_PATH),
    (None, {ENV_VAR: ""}, DEFAULT_PATH),
])
def test_config_path_precedence(option, environ, expected):
    assert config_path(option, environ) == expected
    assert DEFAULT_PATH == "/etc/mm-handler.cfg"


# --- the size limit -------------------------------------------------------------

def test_a_file_of_exactly_one_mib_is_read_whole(tmp_path):
    path = tmp_path / "big.cfg"
    head = "[mm-handler]\nbackend = mailman2\n"
    filler = "#" * 99 + "\n"
    tail = "[maps]\ndomains = lists.example.test\n"
    body = head + filler * ((1048576 - len(head) - len(tail)) // 100)
    body += "#" * (1048576 - len(body) - len(tail) - 1) + "\n" + tail
    path.write_text(body)
    assert path.stat().st_size == 1048576
    assert load(str(path)).get("maps", "domains") == ["lists.example.test"]


def test_a_file_over_one_mib_is_refused_not_cut(tmp_path):
    # before: the first MiB was parsed and the rest (here [maps]) silently dropped
    path = tmp_path / "huge.cfg"
    path.write_text("[mm-handler]\nbackend = mailman2\n" + "#" * 99 + "\n" + ("#" * 99 + "\n") * 10486
                    + "[maps]\ndomains = lists.example.test\n")
    assert path.stat().st_size > 1048576
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert str(info.value) == ("%s: configuration file larger than 1 MiB "
                               "(1048576 bytes): refused" % path)


# --- [maps]: every value checked when the file is read ---------------------------

@pytest.mark.parametrize("key, value, problem", [
    ("pseudo_domain", "not a domain", "not a domain name"),
    ("pseudo_domain", "", "not a domain name"),
    ("mailer", "mail man", "not a Sendmail mailer name"),
    ("mailer", "", "not a Sendmail mailer name"),
    ("domains", "lists.example.test bad_domain!", "'bad_domain!' is not a domain name"),
    ("domains", "lists..example.test", "not a domain name"),
    ("roles", "postmaster post/master", "'post/master' is not a local part"),
    ("roles", "-root", "not a local part"),
    ("role_target", "a\x01b", "one address or alias"),
    ("role_target", "two words", "one address or alias"),
    ("role_target", "error:5.1.1:550 no", "one address or alias"),
    ("reject", "550 no", "must be empty or error:D.D.D:NNN text"),
    ("reject", "error:5.1.1 No such list", "must be empty or error:D.D.D:NNN text"),
    ("reject", "error:5.1.1:550", "must be empty or error:D.D.D:NNN text"),
    ("reject", "error:5.1.1:250 fine", "must be empty or error:D.D.D:NNN text"),
    ("reject", "error:4.1.1:550 mixed", "must be empty or error:D.D.D:NNN text"),
    ("reject", "error:5.1.1:550 caf\xe9", "must be empty or error:D.D.D:NNN text"),
])
def test_bad_maps_values_are_config_errors(key, value, problem):
    text = "[maps]\n%s = %s\n" % (key, value)
    if "\x01" in value:
        raw = {"maps": {key: value}}
        with pytest.raises(ConfigError) as info:
            validate(raw, "/etc/test.cfg").check_all()
        message = str(info.value)
    else:
        message = error_of(text)
    assert ("[maps] %s = " % key) in message and problem in message, message


def test_good_maps_values_are_normalised():
    s = settings_of("[maps]\ndomains = Lists.Example.test, other.test lists.example.test\n"
                    "pseudo_domain = .MM.Invalid.\nmailer = mm_handler-2\n"
                    "roles = PostMaster abuse mailer-daemon\nrole_target = ops@example.org\n"
                    "reject = error:4.3.0:451 Try later\n")
    assert s.get("maps", "domains") == ["lists.example.test", "other.test"]
    assert s.get("maps", "pseudo_domain") == "mm.invalid"
    assert s.get("maps", "mailer") == "mm_handler-2"
    assert s.get("maps", "roles") == ["postmaster", "abuse", "mailer-daemon"]
    assert s.get("maps", "role_target") == "ops@example.org"
    assert s.get("maps", "reject") == "error:4.3.0:451 Try later"
    s = settings_of("[maps]\nreject =\nrole_target =\n")
    assert s.get("maps", "reject") == "" and s.get("maps", "role_target") == ""
    assert s.get("maps", "reject") == ""
    assert settings_of("").get("maps", "reject") == "error:5.1.1:550 No such list address here"


def test_check_reports_a_bad_maps_value(run_handler, make_config):
    cfg = make_config({"maps": {"reject": "550 no"}})
    run = run_handler(["--check"], config=cfg)
    assert run.code == 78, run
    assert run.stdout.startswith("FAIL %s: [maps] reject = '550 no': must be empty "
                                 "or error:D.D.D:NNN text" % cfg), run


def test_a_delivery_parses_the_off_path_sections_only_when_asked():
    """[maps] and [socketmap] values cost a delivery nothing; their key
    names are still checked at once, and --check, maps and socketmap parse
    them (check_all)."""
    settings = validate(parse_ini("[maps]\npseudo_domain = not a domain\n"),
                        "/etc/test.cfg")
    assert settings.get("mm-handler", "backend") == "mailman3"
    with pytest.raises(ConfigError):
        settings.get("maps", "pseudo_domain")
    assert "no key 'nope'" in error_of("[maps]\nnope = 1\n")
