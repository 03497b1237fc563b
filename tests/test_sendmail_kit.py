"""The Sendmail kit itself: the m4 mailer definition, the example .mc and tables.

Built and queried with the real m4 and Sendmail 8.17 inside a private
namespace (tests/peers/sendmail.py), where the kit's mailman.m4 is
installed in a private copy of /usr/share/sendmail/cf/mailer/.
"""

import ast
import grp
import re

import pytest

from tests.peers.sendmail import (KIT, LIST_DOMAIN, MAILER_GROUP, MAILER_UID,
                                  SendmailHost, write_handler_config)

HOST = LIST_DOMAIN


@pytest.fixture(scope="module")
def kit(public_tmp, handler, sendmail_binary):
    from tests.peers.sendmail import SyslogSink
    root = public_tmp / "sendmail-kit"
    root.mkdir()
    root.chmod(0o755)
    config = write_handler_config(root / "mm-handler.cfg",
                                  {"mm-handler": {"backend": "mailman3"}})
    sink = SyslogSink(root / "log.sock")
    host = SendmailHost(root / "sendmail", handler, config, syslog=sink)
    try:
        # the kit's hand-written virtusertable example, not generated maps
        host.start(virtusertable=(KIT / "virtusertable").read_text())
        yield host
    finally:
        host.stop()
        sink.close()


def mailer_line(cf, name="mailman"):
    """The M line of mailer `name`, continuation lines joined."""
    match = re.search(r"^M%s,(.*?)(?=^\S|\Z)" % name, cf, re.S | re.M)
    assert match, "no M%s line in the .cf" % name
    return "M%s," % name + " ".join(match.group(1).split())


def fields(line):
    """'Mname, P=x, F=y, ...' -> {'P': 'x', ...}."""
    out = {}
    for part in re.split(r",\s*(?=[A-Z]=)", line.split(",", 1)[1].strip()):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip().rstrip(",")
    return out


def build(kit, mc_text):
    """m4 MC (inside the namespace) -> (.cf text, m4's stderr)."""
    (kit.etc_mail / "probe.mc").write_text(mc_text)
    proc = kit.ns.run(["m4", "/etc/mail/probe.mc"])
    assert proc.returncode == 0, proc
    return proc.stdout.decode(), proc.stderr.decode()


MINIMAL = """\
divert(-1)
divert(0)dnl
include(`/usr/share/sendmail/cf/m4/cf.m4')dnl
OSTYPE(`debian')dnl
%s
MAILER(`local')dnl
MAILER(`smtp')dnl
%s
"""


def test_kit_mc_builds_cleanly_with_the_documented_mailer(kit, handler):
    cf, err = build(kit, kit.kit_mc())
    assert err == ""
    f = fields(mailer_line(cf))
    assert f == {"P": str(handler), "F": "rDFMhlqSu", "S": "EnvFromL",
                 "R": "EnvToL/HdrToL", "U": "mm-handler:list",
                 "T": "DNS/RFC822/X-Unix", "A": "mm-handler -C %s $h $u" % kit.config}
    # the parts of the .mc the README relies on
    assert re.search(r"^Kmailertable hash .*/etc/mail/mailertable", cf, re.M)
    assert re.search(r"^Kvirtuser hash -o /etc/mail/mm-handler/virtusertable$",
                     cf, re.M)
    assert re.search(r"^C\{VirtHost\}lists\.example\.org$", cf, re.M)
    # ...and every list domain and alias domain the maps name
    assert re.search(r"^F\{VirtHost\}-o /etc/mail/mm-handler/virtuser-domains$",
                     cf, re.M)
    assert re.search(r"^CPINVALID$", cf, re.M)
    assert re.search(r"^O DontProbeInterfaces=True$", cf, re.M)
    assert re.search(r"^DMlists\.example\.org$", cf, re.M)       # masquerading


def test_mailer_defaults_without_any_define(kit):
    cf, err = build(kit, MINIMAL % ("", "MAILER(`mailman')dnl"))
    assert err == ""
    assert fields(mailer_line(cf)) == {
        "P": "/opt/mm-handler/bin/mm-handler", "F": "rDFMhlqSu", "S": "EnvFromL",
        "R": "EnvToL/HdrToL", "U": "mm-handler:list", "T": "DNS/RFC822/X-Unix",
        "A": "mm-handler $h $u"}


def test_include_gives_the_same_mailer_as_MAILER(kit):
    via_mailer, _ = build(kit, MINIMAL % ("", "MAILER(`mailman')dnl"))
    via_include, err = build(kit, MINIMAL % ("", "include(`%s')dnl" % (KIT / "mailman.m4")))
    assert err == ""
    assert mailer_line(via_include) == mailer_line(via_mailer)
    # in the mailer section, after smtp's mailers, like MAILER() puts it
    assert via_include.index("Mmailman,") > via_include.index("Mrelay,")


def test_every_part_can_be_overridden(kit):
    defines = "\n".join([
        "define(`MAILMAN_MAILER_PATH', `/usr/local/bin/mm-handler')dnl",
        "define(`MAILMAN_MAILER_ARGS', `mm-handler -C /etc/x.cfg $h $u')dnl",
        "define(`MAILMAN_MAILER_USER', `mailman:mailman')dnl",
        "define(`MAILMAN_MAILER_MAX', `10000000')dnl",
        "define(`MAILMAN_MAILER_QGRP', `lists')dnl",
        "MODIFY_MAILER_FLAGS(`MAILMAN', `+m')dnl"])
    cf, err = build(kit, MINIMAL % (defines, "MAILER(`mailman')dnl"))
    assert err == ""
    f = fields(mailer_line(cf))
    assert f["P"] == "/usr/local/bin/mm-handler"
    assert f["A"] == "mm-handler -C /etc/x.cfg $h $u"
    assert f["U"] == "mailman:mailman"
    assert f["M"] == "10000000"
    assert f["Q"] == "lists"
    assert f["F"] == "rDFMhlqSum"
    cf, _ = build(kit, MINIMAL % ("define(`MAILMAN_MAILER_FLAGS', `rDFMhlqSu8')dnl",
                                  "MAILER(`mailman')dnl"))
    assert fields(mailer_line(cf))["F"] == "rDFMhlqSu8"


def test_mailer_twice_is_an_m4_error(kit):
    _, err = build(kit, MINIMAL % ("", "MAILER(`mailman')dnl\n"
                                   "include(`%s')dnl" % (KIT / "mailman.m4")))
    assert err == ""            # include after MAILER(): the guard keeps one
    cf, err = build(kit, MINIMAL % ("", "include(`%s')dnl\nMAILER(`mailman')dnl"
                                    % (KIT / "mailman.m4")))
    assert "MAILER(mailman) already included" in err
    assert cf.count("Mmailman,") == 1


# -- the routing, asked of Sendmail by hand as README.sendmail shows ---------------

@pytest.mark.parametrize("address,user", [
    ("test@" + HOST, "test"),
    ("Test-Bounces+Bob=Example.NET@" + HOST, "Test-Bounces+Bob=Example.NET"),
    ("test-confirm+0123abcd@" + HOST, "test-confirm+0123abcd"),
    ("nolist@" + HOST, "nolist"),    # without the generated maps: mm-handler decides
])
def test_bv_routes_the_list_domain_to_the_mailman_mailer(kit, address, user):
    out = kit.verify(address)
    assert "deliverable: mailer mailman, host %s, user %s" % (HOST, user) in out, out


def test_kit_virtusertable_sends_role_addresses_to_people(kit):
    assert "mailer capture, host capture.test, user postmaster" in \
        kit.verify("postmaster@" + HOST)        # postmaster -> aliases
    assert "mailer capture, host capture.test, user abuse" in kit.verify("abuse@" + HOST)
    # mailman-owner goes to a real person elsewhere (example.org: captured here)
    assert "mailer capture, host example.org, user listmaster" in \
        kit.verify("mailman-owner@" + HOST)


def test_bt_shows_the_pseudo_domain_route(kit):
    out = kit.test_mode(["/map mailertable .mailman.invalid",
                         "3,0 test-bounces+x=y@%s.mailman.invalid" % HOST])
    assert "mailertable (.mailman.invalid) returns mailman:" in out, out
    # %1 gives the mailer the real list domain back as $h
    assert re.search(r"parse +returns: \$# mailman \$@ lists \. example \. org "
                     r"\$: test-bounces \+ x=y <", out), out


def test_the_mailer_gets_the_documented_argv(kit, public_tmp):
    """A=mm-handler $h $u with F=r: -r SENDER, then A=, $u without domain."""
    cf, _ = build(kit, kit.kit_mc())
    where = public_tmp / "sendmail-kit" / "recorder"
    where.mkdir(exist_ok=True)
    where.chmod(0o777)          # the mailer runs as "mm-handler"
    recorder = where / "record.py"
    recorder.write_text("#!/usr/bin/python3 -IS\nimport os, sys\n"
                        "sys.stdin.buffer.read()\n"
                        "open(os.path.join(os.path.dirname(__file__), 'argv.txt'), 'w')"
                        ".write(repr((sys.argv[1:], os.geteuid(), os.getegid(), "
                        "sorted(os.environ))))\n")
    recorder.chmod(0o755)
    text = kit.kit_mc().replace(str(kit.handler), str(recorder))
    kit.build_cf(text)
    try:
        result = kit.submit("alice@example.org", "Test-Bounces+Bob=Example.NET@" + HOST,
                            b"Subject: argv\n\nbody\n")
        assert result.returncode == 0, result
        argv, uid, gid, env = ast.literal_eval((where / "argv.txt").read_text())
    finally:
        kit.build_cf()
    # flag r puts -r SENDER first, before the A= words; $u keeps its case
    assert argv == ["-r", "alice@example.org", "-C", str(kit.config), HOST,
                    "Test-Bounces+Bob=Example.NET"]
    # U=mm-handler:list: a user of its own, in Mailman 2's mail group
    assert (uid, gid) == (MAILER_UID, grp.getgrnam(MAILER_GROUP).gr_gid)
    # only AGENT=sendmail (Python adds LC_CTYPE itself: PEP 538 locale coercion)
    assert set(env) - {"LC_CTYPE"} == {"AGENT"}


def test_list_host_in_class_w_is_user_unknown(kit):
    """README.sendmail's troubleshooting: the list host must NOT be local."""
    lhn = kit.etc_mail / "local-host-names"
    original = lhn.read_text()
    lhn.write_text(original + HOST + "\n")
    try:
        out = kit.verify("test@" + HOST)
    finally:
        lhn.write_text(original)
    assert "User unknown" in out, out
    assert "mailer mailman" in kit.verify("test@" + HOST)


def test_maps_without_catch_all_serve_a_domain_shared_with_people(kit, public_tmp):
    """[maps] reject empty: list addresses to the mailer, the rest untouched."""
    from mm_handler import config, maps
    root = public_tmp / "sendmail-kit" / "shared"
    (root / "lists" / "test").mkdir(parents=True)
    (root / "lists" / "test" / "config.pck").write_bytes(b"")
    s = config.validate({"mm-handler": {"backend": "mailman2"},
                         "mailman2": {"lists_dir": str(root / "lists")},
                         "maps": {"domains": "mx.example.test", "reject": ""}})
    text = maps.Tables(s, maps.lists_from_settings(s)[0]).sources()["virtusertable"]
    assert "error:" not in text
    kit.install_virtusertable(text)
    try:
        # mx.example.test is this host's own name (class w): people live here
        assert "mailer mailman, host mx.example.test, user test-bounces+a=b" in \
            kit.verify("test-bounces+a=b@mx.example.test")
        assert "mailer capture, host capture.test, user root" in \
            kit.verify("root@mx.example.test")            # an alias, as before
        assert "User unknown" in kit.verify("nosuchperson@mx.example.test")
    finally:
        kit.install_virtusertable((KIT / "virtusertable").read_text())
