"""`mm-handler maps` run by root in a directory that another user owns.

README.sendmail gives the maps directory to the user that writes the maps
(the list user for Mailman 2, Mailman's user for Mailman 3).  That user may
plant anything there before root's next run (cron, an admin by hand):
symbolic links, FIFOs, files of its own.  A root run must never follow a
link, never open a FIFO, never write outside the directory; when something
is wrong it refuses: exit 73, one line on stderr, one syslog line, and
neither the maps nor anything outside the directory changes.

And root, the list user and root again can take turns: the lock and the
maps root leaves behind never lock the directory's owner out.
"""

import os
import stat
import tempfile
from pathlib import Path

import pytest

from tests.peers.sendmail import MAKEMAP, Namespace
from tests.peers.syslog import SyslogSink
from tests.test_maps import DOMAIN, make_mm2_lists

LIST_UID = 38           # Debian's list user, as in the kit (U=list:list)
LOCK = ".mm-handler-maps.lock"
FINAL = ("virtusertable", "mailertable", "virtuser-domains",
         "virtusertable.db", "mailertable.db")


@pytest.fixture(scope="module")
def ns(public_tmp, sendmail_binary):
    space = Namespace(public_tmp / "maps-safety-ns")
    space.start()
    yield space
    space.stop()


class Site:
    def __init__(self, root):
        self.root = root
        self.out = root / "out"
        self.out.mkdir()
        os.chown(self.out, LIST_UID, LIST_UID)        # README: the writer owns it
        self.lists_dir = make_mm2_lists(root, "test", "news")
        self.sink = SyslogSink(root / "log.sock")
        self.config = root / "mm-handler.cfg"
        # outside the maps directory: what a planted link points at
        self.victim = root / "victim"
        self.victim.write_bytes(b"precious\n")
        self.victim.chmod(0o600)
        self.absent = root / "created-by-root"
        self.write()

    def write(self, **maps_keys):
        keys = {"output_dir": self.out, "domains": DOMAIN, "makemap": MAKEMAP,
                "run_makemap": "yes"}
        keys.update(maps_keys)
        self.config.write_text(
            "[mm-handler]\nbackend = mailman2\nsyslog_socket = %s\n"
            "[mailman2]\nlists_dir = %s\n[maps]\n%s\n" % (
                self.sink.path, self.lists_dir,
                "\n".join("%s = %s" % kv for kv in keys.items())))
        self.config.chmod(0o644)

    def outside(self):
        """What lies outside the maps directory and must never change."""
        st = self.victim.lstat()
        return (self.victim.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid,
                st.st_nlink, self.absent.exists())

    def inside(self):
        """{name: (kind, bytes or link target)} of the maps directory."""
        out = {}
        for p in sorted(self.out.iterdir()):
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[p.name] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[p.name] = ("file", p.read_bytes())
            else:
                out[p.name] = ("other", stat.S_IFMT(st.st_mode))
        return out


@pytest.fixture
def site(public_tmp, request):
    root = Path(tempfile.mkdtemp(prefix="safety-", dir=public_tmp))
    root.chmod(0o755)
    s = Site(root)
    yield s
    s.sink.close()


def run_maps(ns, handler, site, user=None, timeout=30):
    argv = [str(handler), "maps", "-C", str(site.config)]
    if user is not None:
        argv = ["setpriv", "--reuid=%s" % user, "--regid=%s" % user,
                "--clear-groups"] + argv
    proc = ns.run(argv, env={}, cwd="/", timeout=timeout)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def assert_refused(ns, handler, site, text):
    """Root's run refuses: 73, one line naming the problem, a syslog line,
    nothing changed inside or outside the directory."""
    outside, inside = site.outside(), site.inside()
    site.sink.clear()
    code, out, err = run_maps(ns, handler, site)
    assert code == 73 and out == "", (code, out, err)
    assert err.count("\n") == 1 and err.startswith("mm-handler maps: "), err
    assert text in err, err
    assert site.outside() == outside
    assert site.inside() == inside
    logged = [m for m in site.sink.messages() if text in m]
    assert logged and logged[0].startswith("maps: refused: "), site.sink.messages()


# -- links and FIFOs the directory's owner can plant --------------------------------

def test_a_link_at_the_lock_is_refused(ns, handler, site):
    os.symlink(site.victim, site.out / LOCK)
    assert_refused(ns, handler, site, "lock file %s/%s is a symbolic link"
                   % (site.out, LOCK))


def test_a_dangling_link_at_the_lock_creates_nothing(ns, handler, site):
    os.symlink(site.absent, site.out / LOCK)
    assert_refused(ns, handler, site, "is a symbolic link")
    assert not site.absent.exists()


def test_a_fifo_at_the_lock_is_refused_without_hanging(ns, handler, site):
    os.mkfifo(site.out / LOCK)
    assert_refused(ns, handler, site, "lock file %s/%s is not a regular file (a FIFO)"
                   % (site.out, LOCK))


@pytest.mark.parametrize("name", FINAL)
def test_a_link_at_a_final_name_is_refused(ns, handler, site, name):
    os.symlink(site.victim, site.out / name)
    assert_refused(ns, handler, site, "%s/%s is a symbolic link" % (site.out, name))


@pytest.mark.parametrize("name", ["virtusertable", "virtusertable.db"])
def test_a_fifo_at_a_final_name_is_refused_without_hanging(ns, handler, site, name):
    os.mkfifo(site.out / name)
    assert_refused(ns, handler, site, "%s/%s is not a regular file (a FIFO)"
                   % (site.out, name))


def test_links_at_predictable_temporary_names_are_never_followed(ns, handler, site):
    """The old fixed names (NAME.new, NAME.new.db) and look-alikes of the
    new ones: root writes through none of them."""
    planted = ["virtusertable.new", "virtusertable.new.db", "mailertable.new",
               "mailertable.new.db", "virtuser-domains.new", ".virtusertable.new",
               ".virtusertable", ".virtusertable.db", ".mm-handler-maps",
               "virtusertable.db.new"]
    for name in planted:
        os.symlink(site.victim, site.out / name)
    os.symlink(site.absent, site.out / "mailertable.tmp")
    os.mkfifo(site.out / "virtuser-domains.new.db")     # would hang an open()
    outside = site.outside()
    code, out, err = run_maps(ns, handler, site)
    assert (code, err) == (0, ""), out
    assert site.outside() == outside
    inside = site.inside()
    for name in planted:
        assert inside[name] == ("link", str(site.victim))
    assert inside["virtuser-domains.new.db"] == ("other", stat.S_IFIFO)
    assert inside["virtusertable"][0] == inside["virtusertable.db"][0] == "file"
    # no temporary file or directory left behind
    assert sorted(inside) == sorted(set(planted) | set(FINAL) | {
        "mailertable.tmp", "virtuser-domains.new.db", LOCK})


def test_an_unsafe_directory_is_refused(ns, handler, site):
    for mode, what in ((0o775, "writable by its group"), (0o757, "writable by others"),
                       (0o1777, "writable by others")):
        site.out.chmod(mode)
        assert_refused(ns, handler, site, "output directory %s is %s" % (site.out, what))


def test_a_link_as_the_directory_is_refused(ns, handler, site):
    link = site.root / "out-link"
    os.symlink(site.out, link)
    site.write(output_dir=link)
    assert_refused(ns, handler, site, "output directory %s is a symbolic link" % link)


# -- root and the directory's owner take turns ----------------------------------------

def owners(site):
    return {p.name: (p.lstat().st_uid, stat.S_IMODE(p.lstat().st_mode))
            for p in site.out.iterdir()}


@pytest.mark.parametrize("order", [("list", "root", "list", "root"),
                                   ("root", "list", "root", "list")])
def test_root_and_the_list_user_take_turns(ns, handler, site, order):
    for who in order:
        code, out, err = run_maps(ns, handler, site, user=None if who == "root" else "list")
        assert (code, err) == (0, ""), (who, out)
        # whoever ran: everything is the directory owner's, readable by all
        assert owners(site) == {name: (LIST_UID, 0o644) for name in (LOCK,) + FINAL}, who
        dumped = ns.run([MAKEMAP, "-u", "hash", site.out / "virtusertable"]).stdout
        assert b"test-request@" + DOMAIN.encode() in dumped


def test_a_lock_root_made_before_does_not_lock_the_owner_out(ns, handler, site):
    """A 0644 lock of root's (as the old code left it) opens read-only."""
    lock = site.out / LOCK
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    assert lock.stat().st_uid == 0
    code, out, err = run_maps(ns, handler, site, user="list")
    assert (code, err) == (0, ""), out
    assert (site.out / "virtusertable.db").stat().st_uid == LIST_UID
    assert lock.stat().st_uid == 0          # an existing lock is never changed


def test_makemap_never_sees_a_name_in_the_shared_directory(ns, handler, site):
    """makemap runs in a private directory of root's: the owner of the maps
    directory cannot race it with a link at its output name."""
    spy = site.root / "spy-makemap"
    log = site.root / "spy.log"
    spy.write_text("#!/usr/bin/python3\nimport os, sys, shutil\n"
                   "open(%r, 'a').write(os.getcwd() + ' ' + ' '.join(sys.argv[1:]) + '\\n')\n"
                   "os.execv(%r, [%r] + sys.argv[1:])\n" % (str(log), MAKEMAP, MAKEMAP))
    spy.chmod(0o755)
    site.write(makemap=spy)
    code, out, err = run_maps(ns, handler, site)
    assert (code, err) == (0, ""), out
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    for call in calls:
        cwd, map_type, name = call.split(" ")
        assert map_type == "hash" and "/" not in name
        # a directory of its own inside the maps directory, gone afterwards
        assert os.path.dirname(cwd) == str(site.out) and not os.path.exists(cwd)
    assert sorted(p.name for p in site.out.iterdir()) == sorted((LOCK,) + FINAL)
