"""`mm-handler --check`: the Sendmail side, as Sendmail will see it.

Each site is a real one: the kit's sendmail/mailman.mc built with m4 (only
the paths changed: the installed mm-handler, its configuration, the maps
directory), maps written by mm_handler.maps and built with the real
makemap, and Mailman 2 lists on disk.  m4 and makemap run inside a private
namespace, like every program of the Sendmail package in these tests.  The
sites live under /tmp: the kit's .cf has Debian's
DontBlameSendmail=TrustStickyBit, which lets Sendmail trust /tmp.  Then one
thing is broken per test, and --check must name it, say what to run, and
count it as a problem (exit 78) or a warning.

The README layout (/etc/mail/sendmail.cf, the maps in /etc/mail/mm-handler)
is a private /etc/mail in a namespace: there the installed command checks
it with every default, and test_verdicts_agree_with_sendmail breaks its
virtusertable.db or the directory above in a dozen ways and asks the real
Sendmail 8.17 (sendmail -bt, /map virtuser) whether it still opens the map:
check.SafeFile and --check must answer as Sendmail does.
"""

import io
import os
import pwd
import re
import shutil
import zlib

import pytest

from mm_handler import check, config, maps
from mm_handler.status import EX_CONFIG, EX_OK
from tests.peers.sendmail import KIT, MAKEMAP, SENDMAIL, Namespace

DOMAIN = "lists.example.org"            # the kit's own example
LIST = pwd.getpwnam("list")


@pytest.fixture(scope="module")
def ns(public_tmp, sendmail_binary):
    space = Namespace(public_tmp / "check-ns")
    space.start()
    yield space
    space.stop()


def write_config(path, lists_dir, out=None):
    path.write_text("[mm-handler]\nbackend = mailman2\n"
                    "[mailman2]\nwrapper = /bin/true\nlists_dir = %s\n"
                    "[maps]\ndomains = %s\nmakemap = %s\n%s"
                    % (lists_dir, DOMAIN, MAKEMAP,
                       "output_dir = %s\n" % out if out else ""))
    path.chmod(0o644)


def kit_mc(handler, config_path, mailer_path=None, changes=()):
    """The kit's mailman.mc with this test's paths; the mailer's user is
    Debian's list (the kit's own default may be a user this machine lacks)."""
    text = (KIT / "mailman.mc").read_text()
    for old, new in (
            ("MAILER(`mailman')", "include(`%s')" % (KIT / "mailman.m4")),
            ("/opt/mm-handler/bin/mm-handler", str(mailer_path or handler)),
            ("/etc/mm-handler.cfg", str(config_path))) + tuple(changes):
        assert old in text, old
        text = text.replace(old, new)
    text, n = re.subn(r"define\(`MAILMAN_MAILER_USER', `[^']*'\)",
                      "define(`MAILMAN_MAILER_USER', `list:list')", text)
    if not n:
        text = "define(`MAILMAN_MAILER_USER', `list:list')dnl\n" + text
    return text


class Site:
    """A list host: lists, config, maps, a .cf built from the kit."""

    def __init__(self, root, ns, handler):
        self.root, self.ns, self.handler = root, ns, handler
        root.mkdir()
        root.chmod(0o755)
        self.lists_dir = root / "lists"
        self.lists_dir.mkdir()
        self.out = root / "maps"
        self.out.mkdir()
        self.out.chmod(0o755)
        self.cf = root / "sendmail.cf"
        self.config = root / "mm-handler.cfg"
        write_config(self.config, self.lists_dir, self.out)

    def add_list(self, name):
        (self.lists_dir / name).mkdir()
        (self.lists_dir / name / "config.pck").write_bytes(b"")

    def remove_list(self, name):
        shutil.rmtree(self.lists_dir / name)

    def settings(self):
        s = config.load(str(self.config))
        # [maps] sendmail_cf (set here while config.SCHEMA may lack the key)
        s["maps"]["sendmail_cf"] = str(self.cf)
        return s

    def write_maps(self):
        """`mm-handler maps --makemap`: the sources, then makemap, 0644."""
        s = self.settings()
        maps.write_maps(s, maps.lists_from_settings(s)[0], run_makemap=False)
        for name in maps.MAPPED_NAMES:
            with open(self.out / name, "rb") as src:
                self.ns.run([MAKEMAP, "hash", self.out / name], stdin=src, check=True)
            (self.out / (name + ".db")).chmod(0o644)

    def mc(self, *, mailer_path=None, virtusertable=None):
        """The kit's mailman.mc, this site's paths in it."""
        return kit_mc(self.handler, self.config, mailer_path=mailer_path, changes=(
            ("/etc/mail/mm-handler/virtusertable",
             str(virtusertable or self.out / "virtusertable")),
            ("FEATURE(`mailertable')",
             "FEATURE(`mailertable', `hash %s')" % (self.out / "mailertable"))))

    def build_cf(self, mc=None):
        """m4 mailman.mc > sendmail.cf (in the namespace)."""
        path = self.root / "mailman.mc"
        path.write_text(mc or self.mc())
        proc = self.ns.run(["m4", path], check=True)
        assert proc.stderr == b"", proc.stderr
        self.cf.write_bytes(proc.stdout)
        self.cf.chmod(0o644)

    def check(self):
        out = io.StringIO()
        code = check.run_check(self.settings(), out)
        return code, out.getvalue()


@pytest.fixture
def site(public_tmp, ns, handler, request):
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40]
    s = Site(public_tmp / ("check-%s-%08x" % (name, zlib.crc32(
        request.node.nodeid.encode()))), ns, handler)
    s.add_list("test")
    s.add_list("news")
    s.write_maps()
    s.build_cf()
    return s


def findings(text, kind):
    """The FAIL or WARN lines, each with its fix line."""
    lines = text.splitlines()
    return [(line[5:], lines[i + 1].strip() if i + 1 < len(lines) else "")
            for i, line in enumerate(lines) if line.startswith(kind + " ")]


def only(text, kind, *pieces):
    """The one finding of `kind`; it contains every piece; returns its fix."""
    [(line, fix)] = findings(text, kind)
    for piece in pieces:
        assert piece in line, (piece, text)
    assert fix.startswith("fix: "), text
    return fix[len("fix: "):]


# -- a clean site --------------------------------------------------------------------

def test_a_clean_site_is_ok(site):
    code, text = site.check()
    assert code == EX_OK, text
    assert findings(text, "FAIL") == [] and findings(text, "WARN") == [], text
    assert text.splitlines()[-1] == "result: OK"
    out = site.out
    assert "sendmail.cf: Kvirtuser hash -o %s/virtusertable" % out in text
    assert "sendmail.cf: Kmailertable hash %s/mailertable" % out in text
    assert "mailer mailman: P=%s U=list:list" % site.handler in text
    for name in ("virtusertable", "mailertable"):
        assert "%s %s/%s.db: safe for Sendmail, newer than its source" % (
            name, out, name) in text
    assert "maps: %s/virtusertable routes every list on disk (2)" % out in text


# -- the map files ---------------------------------------------------------------

def test_a_db_only_its_owner_can_read_is_unsafe(site):
    db = site.out / "virtusertable.db"
    os.chown(db, LIST.pw_uid, LIST.pw_gid)
    db.chmod(0o640)
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "virtusertable %s: Sendmail will not open it" % db,
               "not readable by root", "mode 0640, list:list")
    assert fix == "chmod 0644 %s" % db


def test_a_group_writable_directory_on_the_path(site):
    above = site.root
    above.chmod(0o775)
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "virtusertable.db and mailertable ",
               "mailertable.db: Sendmail will not open them",
               "directory %s is writable by its group (mode 0775" % above)
    assert fix == "chmod g-w %s" % above


def test_a_world_writable_output_directory(site):
    site.out.chmod(0o777)
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "output directory %s is writable by others" % site.out,
               "mm-handler maps refuses it (exit 73)")
    assert fix == "chmod go-w %s" % site.out


def test_a_symlink_in_place_of_a_map(site):
    db = site.out / "virtusertable.db"
    real = site.root / "elsewhere.db"
    db.rename(real)
    db.symlink_to(real)
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "%s is a symbolic link: mm-handler maps refuses to "
               "replace it (exit 73)" % db)
    assert fix.startswith("rm %s; " % db) and fix.endswith(
        "maps -C %s --makemap" % site.config)


def test_maps_under_a_sticky_tmp_need_trust_sticky_bit(site):
    mc = site.mc().replace("TrustStickyBit,", "") + \
        "define(`confDONT_BLAME_SENDMAIL', `safe')dnl\n"
    site.build_cf(mc)
    code, text = site.check()
    assert code == EX_CONFIG, text
    # one finding for the directory, not one per map
    fix = only(text, "FAIL", "directory /tmp is writable by others",
               "no DontBlameSendmail=TrustStickyBit")
    assert fix.startswith("move [maps] output_dir out of /tmp")


def test_a_db_older_than_its_source(site):
    source = site.out / "virtusertable"
    db = site.out / "virtusertable.db"
    st = os.stat(db)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "virtusertable %s is older than its source %s"
               % (db, source), "Sendmail still answers from the old map")
    assert fix == "%s maps -C %s --makemap" % (site.handler, site.config)


def test_a_missing_db(site):
    (site.out / "virtusertable.db").unlink()
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "virtusertable %s/virtusertable.db is missing" % site.out,
               "unknown list addresses are not refused at RCPT")
    assert fix.endswith("maps -C %s --makemap" % site.config)


def test_the_fix_runs_as_the_owner_of_the_output_directory(site):
    os.chown(site.out, LIST.pw_uid, LIST.pw_gid)
    site.remove_list("news")
    code, text = site.check()
    fix = only(text, "WARN", "news@" + DOMAIN)
    assert fix == "runuser -u list -- %s maps -C %s --makemap" % (site.handler,
                                                                  site.config)


# -- the lists in the maps ---------------------------------------------------------

def test_a_list_missing_from_the_maps(site):
    site.add_list("fresh")
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "maps: 1 list (fresh@%s) missing from %s/virtusertable"
               % (DOMAIN, site.out), "Sendmail refuses its mail at RCPT")
    assert fix.endswith("maps -C %s --makemap" % site.config)
    assert findings(text, "WARN") == []


def test_a_removed_list_still_in_the_maps_is_a_warning(site):
    site.remove_list("news")
    code, text = site.check()
    assert code == EX_OK, text
    fix = only(text, "WARN", "routes 1 list that no longer exists: news@" + DOMAIN,
               "mm-handler then refuses it")
    assert fix.endswith("maps -C %s --makemap" % site.config)
    assert text.splitlines()[-1] == "result: OK, 1 warning"


# -- the sendmail.cf -----------------------------------------------------------------

def test_a_cf_that_does_not_name_the_maps(site):
    site.build_cf(site.mc(virtusertable="/etc/mail/virtusertable"))
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "does not name the virtusertable %s/virtusertable"
               % site.out, "Kvirtuser hash -o /etc/mail/virtusertable")
    assert fix.startswith("FEATURE(`virtusertable', `hash -o %s/virtusertable') "
                          "in your .mc, then m4 your.mc > %s" % (site.out, site.cf))


def test_a_missing_cf(site):
    site.cf.unlink()
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "sendmail.cf %s does not exist" % site.cf)
    assert fix.startswith("build it: m4 mailman.mc > %s" % site.cf)


def test_a_mailer_without_its_program(site):
    site.build_cf(site.mc(mailer_path="/opt/nowhere/bin/mm-handler"))
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "mailer mailman: P=/opt/nowhere/bin/mm-handler: "
               "No such file or directory")
    assert "MAILMAN_MAILER_PATH" in fix


def test_a_program_the_mailer_user_cannot_reach(site):
    """Sendmail runs P= as U=: "Cannot exec", the mail stays queued."""
    private = site.root / "private"
    private.mkdir(mode=0o700)
    program = private / "mm-handler"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    site.build_cf(site.mc(mailer_path=program))
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "mailer mailman: its user list cannot run %s (or its "
               "interpreter /bin/sh)" % program, "\"Cannot exec\"")
    assert fix.startswith("let list reach it: chmod o+rx every directory above it")


HAND_WRITTEN = """\
# a hand-written .cf: only what --check reads
O DontBlameSendmail=TrustStickyBit
Kvirtuser hash -o {out}/virtusertable
Kmailertable hash {out}/mailertable
C{{VirtHost}}{domain}
Mmailman,	{p}F=rDFMhlqSu, S=EnvFromL, R=EnvToL/HdrToL,
		U=list:list, T=DNS/RFC822/X-Unix,
		A=mm-handler -C {config} $h $u
"""


@pytest.mark.parametrize("p, found", [
    ("P={handler}, ", None),
    ("", "mailer mailman in {cf} has no P= (no program to run)"),
    ("P=[IPC], ", "mailer mailman is Sendmail's built-in P=[IPC], not mm-handler"),
])
def test_hand_written_cf_and_the_mailer_program(site, p, found):
    site.cf.write_text(HAND_WRITTEN.format(
        out=site.out, domain=DOMAIN, config=site.config,
        p=p.format(handler=site.handler)))
    code, text = site.check()
    if found is None:
        assert (code, findings(text, "FAIL"), findings(text, "WARN")) == \
            (EX_OK, [], []), text
    else:
        kind = "FAIL" if "no P=" in found else "WARN"
        only(text, kind, found.format(cf=site.cf))


def test_a_site_mailertable_must_route_the_pseudo_domain(site, ns):
    own = site.root / "mailertable"
    own.write_text("%s\tmailman:%s\n" % (DOMAIN, DOMAIN))
    with open(own, "rb") as src:
        ns.run([MAKEMAP, "hash", own], stdin=src, check=True)
    site.build_cf(site.mc().replace("hash %s/mailertable" % site.out, "hash %s" % own))
    code, text = site.check()
    assert code == EX_CONFIG, text
    fix = only(text, "FAIL", "mailertable %s has no '.mailman.invalid mailman:%%1' "
               "line" % own)
    assert fix.endswith("makemap hash %s < %s" % (own, own))


# -- sites without maps, and before Mailman has lists ---------------------------------

def test_a_site_without_maps_gets_one_neutral_line(site):
    shutil.rmtree(site.out)
    site.cf.unlink()            # nothing of the Sendmail side is asked for
    code, text = site.check()
    assert code == EX_OK, text
    [line] = [l for l in text.splitlines() if l.startswith("sendmail")]
    assert line.startswith("sendmail: no maps in %s ([maps] output_dir): the "
                           "Sendmail side is not checked" % site.out)


def test_before_mailman_has_lists_that_is_said_to_be_expected(site):
    """README.sendmail step 2: --check before Mailman runs or has lists."""
    site.remove_list("test")
    site.remove_list("news")
    shutil.rmtree(site.out)
    code, text = site.check()
    assert code == EX_OK, text
    assert "lists in %s: 0 - no lists yet: expected until the first list is " \
           "created" % site.lists_dir in text
    # Mailman 3, not running yet: one problem, and it says it is expected
    text = site.config.read_text().replace("backend = mailman2", "backend = mailman3")
    site.config.write_text(text + "[mailman3]\nlmtp = 127.0.0.1:1\nvar_dir = %s\n"
                           % (site.root / "mailman-var"))
    code, text = site.check()
    assert code == EX_CONFIG, text
    assert len(findings(text, "FAIL")) == 2, text
    for line, fix in findings(text, "FAIL"):
        assert "expected at README.sendmail step 2" in fix, text
    assert text.splitlines()[-1] == (
        "result: 2 problems (expected at README.sendmail step 2, before Mailman is "
        "set up (step 3g): run --check again then)")



# -- the README layout, and Sendmail's own verdict -------------------------------------

class Host:
    """/etc/mail of a list host, private to a namespace: README.sendmail's
    layout with every default (/etc/mail/sendmail.cf, the maps in
    /etc/mail/mm-handler, the kit's /etc/mail/mailertable)."""

    def __init__(self, root, handler):
        self.root, self.handler = root, handler
        root.mkdir()
        root.chmod(0o755)
        self.etc = root / "etc-mail"
        self.out = self.etc / "mm-handler"
        self.out.mkdir(parents=True)
        for path in (self.etc, self.out):
            path.chmod(0o755)
        self.lists_dir = root / "lists"
        for name in ("test", "news"):
            (self.lists_dir / name).mkdir(parents=True)
            (self.lists_dir / name / "config.pck").write_bytes(b"")
        self.config = root / "mm-handler.cfg"
        write_config(self.config, self.lists_dir)
        self.ns = Namespace(root / "ns", binds=[(self.etc, "/etc/mail")])
        self.python = handler.parent / "python"

    def start(self):
        self.ns.start()
        (self.etc / "mailman.mc").write_text(kit_mc(self.handler, self.config))
        proc = self.ns.run(["m4", "/etc/mail/mailman.mc"], check=True)
        assert proc.stderr == b"", proc.stderr
        (self.etc / "sendmail.cf").write_bytes(proc.stdout)
        (self.etc / "local-host-names").write_text("mx.example.test\n")
        (self.etc / "service.switch").write_text("hosts files\naliases files\n")
        shutil.copy(KIT / "mailertable", self.etc / "mailertable")
        s = config.load(str(self.config))
        s["maps"]["output_dir"] = str(self.out)     # /etc/mail/mm-handler inside
        maps.write_maps(s, maps.lists_from_settings(s)[0], run_makemap=False)
        for name in ("mailertable", "mm-handler/virtusertable", "mm-handler/mailertable"):
            with open(self.etc / name, "rb") as src:
                self.ns.run([MAKEMAP, "hash", "/etc/mail/" + name], stdin=src,
                            check=True)
            (self.etc / (name + ".db")).chmod(0o644)

    def check(self):
        """The installed `mm-handler --check`, as root, inside."""
        proc = self.ns.run([self.handler, "-C", self.config, "--check"], env={},
                           cwd="/")
        return proc.returncode, proc.stdout.decode()

    def sendmail_opens_virtuser(self):
        """Does the real Sendmail open the virtusertable?  (sendmail -bt)"""
        proc = self.ns.run([SENDMAIL, "-bt"], input=(
            "/map virtuser test@%s\n" % DOMAIN).encode())
        out = proc.stdout.decode()
        assert "map_lookup: virtuser" in out or 'Map named "virtuser" not open' \
            in out, out
        return "map_lookup: virtuser (test@%s) returns test@%s.mailman.invalid" % (
            DOMAIN, DOMAIN) in out

    def check_opens_virtuser(self):
        """Does check.SafeFile, under this .cf's options, say Sendmail opens it?"""
        proc = self.ns.run([self.python, "-I", "-c", (
            "from mm_handler import check\n"
            "cf = check.SendmailCf('', open('/etc/mail/sendmail.cf').read())\n"
            "import pwd; t = pwd.getpwnam(cf.options['trusteduser']).pw_uid\n"
            "print(check.SafeFile(cf.dont_blame(), trusted_uid=t).map_file("
            "'/etc/mail/mm-handler/virtusertable.db'))\n")], env={}, check=True)
        return proc.stdout.decode().strip() == "None", proc.stdout.decode()

    def stop(self):
        self.ns.stop()


@pytest.fixture(scope="module")
def host(public_tmp, sendmail_binary, handler):
    h = Host(public_tmp / "check-host", handler)
    h.start()
    yield h
    h.stop()


def test_the_installed_command_on_the_readme_layout(host):
    code, text = host.check()
    assert code == EX_OK, text
    assert "sendmail.cf: Kvirtuser hash -o /etc/mail/mm-handler/virtusertable" in text
    assert "sendmail.cf: Kmailertable hash /etc/mail/mailertable" in text
    assert "mailertable /etc/mail/mailertable.db: safe for Sendmail" in text
    assert text.splitlines()[-1] == "result: OK", text


SMMTA = pwd.getpwnam("smmta")        # Debian's TrustedUser


@pytest.mark.parametrize("state, opens", [
    ("as written", True),
    ("db 0640 list:list", False),         # makemap's mode, the list user's file
    ("db 0604 list:list", True),          # others may read
    ("db 0640 root:list", True),          # root's own: u+r
    ("db 0600 smmta:smmta", True),        # the TrustedUser's
    ("db missing", False),
    ("db a directory", False),
    ("db 0666", True),                    # writable: Sendmail does not mind
    ("db a symlink", True),               # followed (mm-handler maps refuses it)
    ("dir 0775", False),
    ("dir 0750 list:list", False),        # root may not search it, says Sendmail
    ("dir 1777", True),                   # TrustStickyBit (Debian's .cf)
    ("dir a symlink to /tmp", True),      # its target path is judged: sticky /tmp
])
def test_verdicts_agree_with_sendmail(host, state, opens):
    db = host.out / "virtusertable.db"
    saved = host.root / "saved.db"
    shutil.copy2(db, saved)
    moved = host.root / "maps-real"
    try:
        what, _, how = state.partition(" ")
        if what == "as":
            pass
        elif what == "db" and how == "missing":
            db.unlink()
        elif what == "db" and how == "a directory":
            db.unlink()
            db.mkdir()
        elif what == "db" and how == "a symlink":
            db.unlink()
            db.symlink_to(saved)
        elif what == "db":
            mode, _, owner = how.partition(" ")
            db.chmod(int(mode, 8))
            if owner:
                user, group = owner.split(":")
                shutil.chown(db, user, group)
        elif how == "a symlink to /tmp":
            host.out.rename(moved)
            host.out.symlink_to(moved)
        else:
            mode, _, owner = how.partition(" ")
            host.out.chmod(int(mode, 8))
            if owner:
                shutil.chown(host.out, *owner.split(":"))
        assert host.sendmail_opens_virtuser() == opens
        ours, said = host.check_opens_virtuser()
        assert ours == opens, said
        # and --check says so: a FAIL naming the map when Sendmail refuses it
        code, text = host.check()
        refused = [line for line, _ in findings(text, "FAIL")
                   if "Sendmail will not open" in line and (
                       "virtusertable.db" in line or "output directory" in line)]
        assert bool(refused) != opens, text
    finally:
        if host.out.is_symlink():
            host.out.unlink()
            moved.rename(host.out)
        host.out.chmod(0o755)
        shutil.chown(host.out, "root", "root")
        if db.is_dir() and not db.is_symlink():
            db.rmdir()
        elif db.exists() or db.is_symlink():
            db.unlink()
        shutil.copy2(saved, db)
        saved.unlink()


def test_check_reports_a_socketmap_section(tmp_path):
    """With a [socketmap] section, --check says where the server listens,
    its limits and whether one answers (none here: not a problem)."""
    import io
    from mm_handler.check import run_check
    from mm_handler.config import validate
    sock = tmp_path / "socketmap"
    settings = validate({"mm-handler": {"backend": "mailman2"},
                         "mailman2": {"lists_dir": str(tmp_path)},
                         "maps": {"domains": "lists.example.test",
                                  "output_dir": str(tmp_path / "maps")},
                         "socketmap": {"listen": "unix:%s" % sock}},
                        "/etc/test.cfg").check_all()
    out = io.StringIO()
    run_check(settings, out)
    text = out.getvalue()
    assert "socketmap: listen unix:%s" % sock in text
    assert "socketmap limits:" in text
    plain = io.StringIO()
    run_check(validate({"mm-handler": {"backend": "mailman2"},
                        "mailman2": {"lists_dir": str(tmp_path)}}).check_all(), plain)
    assert "socketmap: no [socketmap] section" in plain.getvalue()
