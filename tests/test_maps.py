"""`mm-handler maps`: the map sources, their atomic installation, the lock.

Sendmail's own verdict on the maps is in tests/test_sendmail_mailman3.py
(maps from the Mailman 3 plug-in) and tests/test_sendmail_mailman2.py (maps
from this command, run as the list user).  makemap runs inside a private
namespace like every other program of the Sendmail package.
"""

import fcntl
import os
import shutil
import subprocess
import time

import pytest

from mm_handler import config, maps
from mm_handler.address import ACTIONS
from tests.peers.sendmail import KIT, MAKEMAP, Namespace
from tests.peers.syslog import SyslogSink

DOMAIN = "lists.example.test"


def settings(**sections):
    raw = {name: {k: str(v) for k, v in keys.items()} for name, keys in sections.items()}
    return config.validate(raw)


def mm2_settings(lists_dir, **maps_keys):
    maps_keys.setdefault("domains", DOMAIN)
    return settings(**{"mm-handler": {"backend": "mailman2"},
                       "mailman2": {"lists_dir": lists_dir}, "maps": maps_keys})


def make_mm2_lists(root, *names, bad=()):
    lists_dir = root / "lists"
    for name in names:
        (lists_dir / name).mkdir(parents=True)
        (lists_dir / name / "config.pck").write_bytes(b"")
    for name in bad:
        (lists_dir / name).mkdir(parents=True)
    lists_dir.mkdir(exist_ok=True)
    return lists_dir


def table(text):
    """Map source text -> [(key, value)], comments skipped."""
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("\t", 1)
            rows.append((key, value))
    return rows


# -- what the virtusertable says ---------------------------------------------------

def test_every_approved_address_of_every_list_then_the_catch_all(tmp_path):
    lists_dir = make_mm2_lists(tmp_path, "test", "news")
    s = mm2_settings(lists_dir)
    lists, warnings = maps.lists_from_settings(s)
    assert lists == [("news", DOMAIN), ("test", DOMAIN)] and warnings == []
    rows = maps.Tables(s, lists).virtusertable()
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys))
    expected = {}
    for name in ("news", "test"):
        for action in ACTIONS:
            local = name if action == "post" else "%s-%s" % (name, action)
            expected["%s@%s" % (local, DOMAIN)] = "%s%%3@%s.mailman.invalid" % (local, DOMAIN)
        expected["owner-%s@%s" % (name, DOMAIN)] = "owner-%s%%3@%s.mailman.invalid" % (
            name, DOMAIN)
    for role in ("postmaster", "abuse", "hostmaster", "webmaster", "mailer-daemon", "root"):
        expected["%s@%s" % (role, DOMAIN)] = role
    expected["@" + DOMAIN] = "error:5.1.1:550 No such list address here"
    assert dict(rows) == expected
    assert rows[-1][0] == "@" + DOMAIN


def test_only_approved_actions_are_listed(tmp_path):
    lists_dir = make_mm2_lists(tmp_path, "test")
    s = settings(**{"mm-handler": {"backend": "mailman2",
                                   "approved_actions": "post bounces owner"},
                    "mailman2": {"lists_dir": lists_dir}, "maps": {"domains": DOMAIN}})
    rows = dict(maps.Tables(s, maps.lists_from_settings(s)[0]).virtusertable())
    locals_ = sorted(k.split("@")[0] for k in rows if k.startswith(("test", "owner-")))
    assert locals_ == ["owner-test", "test", "test-bounces", "test-owner"]


def test_every_domain_gets_every_mailman2_list_and_its_own_catch_all(tmp_path):
    lists_dir = make_mm2_lists(tmp_path, "test")
    s = mm2_settings(lists_dir, domains="lists.one.test, LISTS.two.test")
    rows = dict(maps.Tables(s, maps.lists_from_settings(s)[0]).virtusertable())
    for domain in ("lists.one.test", "lists.two.test"):
        assert rows["test-request@" + domain] == (
            "test-request%%3@%s.mailman.invalid" % domain)
        assert rows["@" + domain].startswith("error:5.1.1:550 ")


def test_names_that_are_no_safe_list_names_are_skipped(tmp_path):
    lists_dir = make_mm2_lists(tmp_path, "test", "Upper", "bad name", "x\ty",
                               bad=["nocfg"])
    s = mm2_settings(lists_dir)
    lists, warnings = maps.lists_from_settings(s)
    assert lists == [("test", DOMAIN)]
    assert len(warnings) == 4
    text = maps.Tables(s, lists).sources()["virtusertable"]
    assert all(len(line.split("\t")) == 2 for line in text.splitlines()
               if not line.startswith("#"))


def test_mailman3_list_ids_are_split_against_the_longest_domain():
    found, unmatched = maps.split_list_ids(
        ["test.lists.example.test", "a.b.other.test", "orphan.nowhere.test",
         ".lists.example.test", "x.example.test"],
        ["example.test", "lists.example.test", "other.test"])
    # one list per directory: test@lists.example.test, never also test.lists@example.test
    assert sorted(found) == [("a.b", "other.test"), ("test", "lists.example.test"),
                             ("x", "example.test")]
    assert unmatched == ["orphan.nowhere.test", ".lists.example.test"]


def test_mailman3_var_dir(tmp_path):
    (tmp_path / "lists" / ("test." + DOMAIN)).mkdir(parents=True)
    (tmp_path / "lists" / ("foo." + DOMAIN)).mkdir(parents=True)
    (tmp_path / "lists" / "stray.elsewhere.test").mkdir()
    s = settings(**{"mailman3": {"var_dir": tmp_path},
                    "maps": {"domains": DOMAIN + " example.test"}})
    lists, warnings = maps.lists_from_settings(s)
    # foo.lists.example.test is foo@lists.example.test only: no foo.lists@example.test
    assert lists == [("foo", DOMAIN), ("test", DOMAIN)]
    assert warnings == ["skipped list 'stray.elsewhere.test' in %s: in none of the "
                        "[maps] domains" % (tmp_path / "lists")]


@pytest.mark.parametrize("config_name", ["config.pck", "config.pck.last", "config.db",
                                         "config.db.last"])
def test_a_mailman2_list_is_what_mailman2_says_is_one(tmp_path, config_name):
    lists_dir = make_mm2_lists(tmp_path, bad=["real", "empty"])
    (lists_dir / "real" / config_name).write_bytes(b"")
    s = mm2_settings(lists_dir)
    lists, warnings = maps.lists_from_settings(s)
    assert lists == [("real", DOMAIN)]
    assert warnings == ["skipped 'empty' in %s: not a list" % lists_dir]
    from mm_handler import registry
    from mm_handler.address import Target
    on_disk = registry.Mailman2Lists(str(lists_dir))
    assert on_disk.names() == ["real"]
    # the delivery path asks the same question
    assert on_disk.exists(Target("real", "post", "", DOMAIN))
    assert not on_disk.exists(Target("empty", "post", "", DOMAIN))


def test_a_site_virtusertable_that_is_not_utf8_is_named(tmp_path, capsys):
    site = tmp_path / "site-vt"
    site.write_bytes(b"info@%s\tj\xf6rg@example.org\n" % DOMAIN.encode())
    out = tmp_path / "out"
    out.mkdir()
    cfg = tmp_path / "mm.cfg"
    cfg.write_text("[mm-handler]\nbackend = mailman2\nsyslog_socket = %s\n"
                   "[mailman2]\nlists_dir = %s\n[maps]\ndomains = %s\noutput_dir = %s\n"
                   "site_virtusertable = %s\n" % (tmp_path / "nolog", make_mm2_lists(
                       tmp_path, "test"), DOMAIN, out, site))
    assert maps.main(["-C", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert err == ("mm-handler maps: %s is not UTF-8 text (byte 0xf6 at offset %d)\n"
                   % (site, len("info@%s\tj" % DOMAIN)))
    assert sorted(p.name for p in out.iterdir()) == []


def test_site_lines_come_first_and_win_roles_and_targets(tmp_path):
    site = tmp_path / "site-virtusertable"
    site.write_text("# the site's own\npostmaster@%s\tadmin@example.org\n"
                    "info@%s  someone@example.org\n" % (DOMAIN, DOMAIN))
    lists_dir = make_mm2_lists(tmp_path, "test")
    s = mm2_settings(lists_dir, site_virtusertable=site, role_target="ops@example.org",
                     roles="postmaster abuse", pseudo_domain="mm.invalid",
                     reject="error:5.1.1:550 Not a list here")
    rows = maps.Tables(s, maps.lists_from_settings(s)[0]).virtusertable()
    assert rows[:2] == [("postmaster@" + DOMAIN, "admin@example.org"),
                        ("info@" + DOMAIN, "someone@example.org")]
    d = dict(rows)
    assert d["abuse@" + DOMAIN] == "ops@example.org"
    assert "root@" + DOMAIN not in d
    assert d["test@" + DOMAIN] == "test%%3@%s.mm.invalid" % DOMAIN
    assert d["@" + DOMAIN] == "error:5.1.1:550 Not a list here"


def test_empty_reject_writes_no_catch_all(tmp_path):
    s = mm2_settings(make_mm2_lists(tmp_path, "test"), reject="")
    rows = dict(maps.Tables(s, maps.lists_from_settings(s)[0]).virtusertable())
    assert "@" + DOMAIN not in rows and "test@" + DOMAIN in rows
    assert not any(v.startswith("error:") for v in rows.values())


def test_generated_mailertable_is_the_kit_example(tmp_path):
    s = mm2_settings(make_mm2_lists(tmp_path, "test"), domains="lists.example.org")
    generated = maps.Tables(s, []).mailertable()
    kit = [tuple(line.split("\t")) for line in (KIT / "mailertable").read_text().splitlines()
           if line and not line.startswith("#")]
    assert sorted(generated) == sorted(kit)


# -- the command -------------------------------------------------------------------

@pytest.fixture(scope="module")
def ns(public_tmp, sendmail_binary):
    """makemap, like sendmail, runs inside a private namespace."""
    space = Namespace(public_tmp / "maps-ns")
    space.start()
    yield space
    space.stop()


@pytest.fixture
def site(public_tmp, request):
    root = public_tmp / ("maps-" + request.node.name[:40].replace("[", "-").replace("]", ""))
    root.mkdir()
    root.chmod(0o755)
    out = root / "out"
    out.mkdir()
    lists_dir = make_mm2_lists(root, "test", "news")
    cfg = root / "mm-handler.cfg"

    def write(syslog_socket="/dev/log", **maps_keys):
        keys = {"output_dir": out, "domains": DOMAIN, "makemap": MAKEMAP}
        keys.update(maps_keys)
        cfg.write_text("[mm-handler]\nbackend = mailman2\nsyslog_socket = %s\n"
                       "[mailman2]\nlists_dir = %s\n"
                       "[maps]\n%s\n" % (syslog_socket, lists_dir, "\n".join(
                           "%s = %s" % kv for kv in keys.items())))
        cfg.chmod(0o644)
    write()
    return type("Site", (), {"root": root, "out": out, "lists_dir": lists_dir,
                             "config": cfg, "write": staticmethod(write)})


def run_maps(ns, handler, *args, user=None):
    argv = [str(handler), "maps"] + [str(a) for a in args]
    if user:
        argv = ["setpriv", "--reuid=%s" % user, "--regid=%s" % user,
                "--clear-groups"] + argv
    proc = ns.run(argv, env={}, cwd="/")
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_command_writes_sources_only_by_default(ns, handler, site):
    code, out, err = run_maps(ns, handler, "-C", site.config)
    assert (code, err) == (0, "")
    assert out == ("mm-handler maps: wrote 22 list addresses of 2 lists in 1 domain "
                   "in %s\n" % site.out)
    names = sorted(p.name for p in site.out.iterdir())
    assert names == [".mm-handler-maps.lock", "mailertable", "virtuser-domains",
                     "virtusertable"]
    assert (site.out / "virtuser-domains").read_text() == DOMAIN + "\n"
    vt = (site.out / "virtusertable").read_text()
    assert vt.startswith("# virtusertable, written by `mm-handler maps`: 22 list "
                         "addresses of 2 lists in 1 domain.\n")
    assert ("news-bounces@%s\tnews-bounces%%3@%s.mailman.invalid" % (DOMAIN, DOMAIN)
            in vt.splitlines())


def test_makemap_builds_maps_any_user_can_read(ns, handler, site):
    os.chown(site.out, 38, 38)            # Debian's list user owns the directory
    code, out, err = run_maps(ns, handler, "-C", site.config, "--makemap", user="list")
    assert (code, err) == (0, ""), out
    assert out.endswith("(and the .db maps)\n")
    for name in ("virtusertable.db", "mailertable.db"):
        st = (site.out / name).stat()
        # Sendmail, as root, skips a map not owned by root unless others may read it
        assert st.st_uid == 38 and st.st_mode & 0o777 == 0o644
    assert not list(site.out.glob("*.new*"))
    # the .db answers what the source says
    q = ns.run([MAKEMAP, "-u", "hash", site.out / "virtusertable"])
    dumped = dict(line.split("\t", 1) for line in q.stdout.decode().splitlines())
    assert dumped["test-request@" + DOMAIN] == "test-request%3@" + DOMAIN + ".mailman.invalid"
    assert dumped["@" + DOMAIN] == "error:5.1.1:550 No such list address here"


def test_output_option_and_run_makemap_setting(ns, handler, site):
    other = site.root / "elsewhere"
    other.mkdir()
    site.write(run_makemap="yes")
    code, out, err = run_maps(ns, handler, "-C", site.config, "--output", other)
    assert code == 0, err
    assert (other / "virtusertable.db").exists() and not (site.out / "virtusertable").exists()


def test_failed_makemap_leaves_the_installed_maps_alone(ns, handler, site):
    assert run_maps(ns, handler, "-C", site.config, "--makemap")[0] == 0
    before = {p.name: p.read_bytes() for p in site.out.iterdir()}
    failing = site.root / "makemap"
    failing.write_text("#!/bin/sh\necho 'makemap: no space left' >&2\nexit 1\n")
    failing.chmod(0o755)
    (site.lists_dir / "fresh").mkdir()
    (site.lists_dir / "fresh" / "config.pck").write_bytes(b"")
    site.write(makemap=failing)
    code, out, err = run_maps(ns, handler, "-C", site.config, "--makemap")
    assert code == 69 and out == ""
    assert "failed (exit 1): makemap: no space left" in err
    after = {p.name: p.read_bytes() for p in site.out.iterdir()}
    assert after == before          # nothing half-done, no .new left behind


@pytest.mark.parametrize("maps_keys,args,code,text", [
    ({"domains": ""}, [], 78, "[maps] domains is empty"),
    ({"output_dir": "/nonexistent/dir"}, [], 73, "output directory /nonexistent/dir does not exist"),
    ({"makemap": "/nonexistent/makemap"}, ["--makemap"], 69, "cannot run /nonexistent/makemap"),
    ({}, ["--bogus"], 64, "unexpected argument '--bogus'"),
    ({}, ["--output"], 64, "option --output needs a value"),
])
def test_command_errors(ns, handler, site, maps_keys, args, code, text):
    site.write(**maps_keys)
    got, out, err = run_maps(ns, handler, "-C", site.config, *args)
    assert got == code and text in err and out == "", (got, out, err)
    assert "Traceback" not in err


def test_bad_config_file_is_exit_78(ns, handler, site):
    site.config.write_text("[maps]\nnosuchkey = 1\n")
    code, out, err = run_maps(ns, handler, "-C", site.config)
    assert code == 78 and "has no key 'nosuchkey'" in err


def test_help(ns, handler):
    code, out, err = run_maps(ns, handler, "--help")
    assert code == 0 and out.startswith("usage: mm-handler maps [-C FILE]")


def test_writers_take_turns_on_the_lock(ns, handler, site):
    lock = site.out / maps.LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = subprocess.Popen(ns.prefix + [str(handler), "maps", "-C", str(site.config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={})
        # wait until the command is blocked on our lock (a "->" line in
        # /proc/locks for the lock file's inode), then check it wrote nothing
        inode = ":%d " % os.stat(lock).st_ino
        deadline = time.monotonic() + 20
        while not any("->" in line and inode in line
                      for line in open("/proc/locks")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "never waited for the lock"
            time.sleep(0.02)
        time.sleep(0.2)
        assert proc.poll() is None
        assert not (site.out / "virtusertable").exists()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (site.out / "virtusertable").exists()


def test_readers_never_see_a_partial_file(tmp_path):
    """Each file is replaced by rename(): old or new, never half of one."""
    lists_dir = make_mm2_lists(tmp_path, *("list%03d" % i for i in range(200)))
    out = tmp_path / "out"
    out.mkdir()
    s = mm2_settings(lists_dir, output_dir=out)
    maps.write_maps(s, maps.lists_from_settings(s)[0])
    first = (out / "virtusertable").read_bytes()
    inode = (out / "virtusertable").stat().st_ino
    held = open(out / "virtusertable", "rb")
    (lists_dir / "zz").mkdir()
    (lists_dir / "zz" / "config.pck").write_bytes(b"")
    maps.write_maps(s, maps.lists_from_settings(s)[0])
    assert held.read() == first                 # the reader's file is intact
    held.close()
    assert (out / "virtusertable").stat().st_ino != inode
    assert b"zz@" in (out / "virtusertable").read_bytes()


def test_lists_are_read_under_the_lock(ns, handler, site):
    """A list created while the command waits for the lock is in its maps
    (the list set is read once the lock is held, not before)."""
    lock = site.out / maps.LOCK_NAME
    fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = subprocess.Popen(ns.prefix + [str(handler), "maps", "-C", str(site.config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={})
        inode = ":%d " % os.stat(lock).st_ino
        deadline = time.monotonic() + 20
        while not any("->" in line and inode in line for line in open("/proc/locks")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "never waited for the lock"
            time.sleep(0.02)
        (site.lists_dir / "late").mkdir()
        (site.lists_dir / "late" / "config.pck").write_bytes(b"")
        shutil.rmtree(site.lists_dir / "news")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    vt = (site.out / "virtusertable").read_text()
    assert "late@" + DOMAIN in vt and "news@" + DOMAIN not in vt


def test_a_list_it_cannot_examine_keeps_the_old_maps(ns, handler, site):
    """Doubt is no answer: a list directory the writer cannot look into
    stops the run (before: the list was silently left out of the maps)."""
    os.chown(site.out, 38, 38)
    syslog_sink = SyslogSink(site.root / "log.sock")
    site.write(syslog_socket=syslog_sink.path)
    assert run_maps(ns, handler, "-C", site.config, user="list")[0] == 0
    before = {p.name: p.read_bytes() for p in site.out.iterdir()}
    secret = site.lists_dir / "secret"
    secret.mkdir()
    (secret / "config.pck").write_bytes(b"")
    secret.chmod(0o700)                    # root's, the list user cannot look in
    syslog_sink.clear()
    code, out, err = run_maps(ns, handler, "-C", site.config, user="list")
    assert (code, out) == (69, ""), err
    assert err == ("mm-handler maps: cannot examine %s/config.pck: Permission denied; "
                   "the maps are left as they were\n" % secret)
    assert {p.name: p.read_bytes() for p in site.out.iterdir()} == before
    assert any("cannot examine %s/config.pck" % secret in m
               for m in syslog_sink.messages()), syslog_sink.messages()
    # and a lists directory it cannot read at all
    secret.chmod(0o755)
    site.lists_dir.chmod(0o711)
    try:
        code, out, err = run_maps(ns, handler, "-C", site.config, user="list")
    finally:
        site.lists_dir.chmod(0o755)
    assert code == 69 and "cannot list %s: Permission denied" % site.lists_dir in err
    assert {p.name: p.read_bytes() for p in site.out.iterdir()} == before
    syslog_sink.close()
