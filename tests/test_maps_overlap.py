"""The Mailman 3 plug-in when list changes and regenerations overlap.

Mailman calls the plug-in's create(mlist) and delete(mlist) inside the
transaction that creates or removes the list, before it commits; `mailman
aliases` (regenerate) may run at the same moment in another process.  The
maps must end up with exactly Mailman's committed lists, whatever the
order: a regeneration that read the lists before the change committed must
not drop a new list or keep a removed one, and a creation that Mailman
rolls back after the plug-in wrote its maps must not stay in them.

A real Mailman 3 (its `mailman` command, no runner), the plug-in as its
[mta] incoming, and a makemap stand-in that waits at a gate the test holds:
so the test knows that one process holds the maps lock (inside makemap)
while the other is queued on it.
"""

import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.peers.mailman3 import DOMAIN, Mailman3Runner, free_port
from tests.peers.sendmail import PLUGIN

LOCK = ".mm-handler-maps.lock"

GATE_MAKEMAP = r"""#!/usr/bin/python3
# makemap TYPE NAME < SOURCE: waits while GATE/hold exists, fails while
# GATE/fail exists, then writes NAME.db (a copy of the source)
import os, sys, time
gate = %r
open(os.path.join(gate, "running-%%d" %% os.getpid()), "w").close()
deadline = time.monotonic() + 60
while os.path.exists(os.path.join(gate, "hold")) and time.monotonic() < deadline:
    time.sleep(0.01)
if os.path.exists(os.path.join(gate, "fail")):
    sys.stderr.write("makemap: told to fail\n")
    sys.exit(1)
data = sys.stdin.buffer.read()
with open(sys.argv[2] + ".db", "wb") as f:
    f.write(data)
"""


class Site:
    def __init__(self, root, venv):
        self.root = root
        self.maps = root / "maps"
        self.maps.mkdir()
        self.gate = root / "gate"
        self.gate.mkdir()
        makemap = root / "makemap"
        makemap.write_text(GATE_MAKEMAP % str(self.gate))
        makemap.chmod(0o755)
        self.config = root / "mm-handler.cfg"
        self.config.write_text(
            "[mm-handler]\nbackend = mailman3\nsyslog_socket = %s\n"
            "[maps]\noutput_dir = %s\nrun_makemap = yes\nmakemap = %s\ndomains = %s\n"
            % (root / "no-syslog", self.maps, makemap, DOMAIN))
        self.mailman = Mailman3Runner(venv, root / "mailman", free_port())
        path = self.mailman.config_path
        path.write_text(path.read_text().replace(
            "incoming: mailman.mta.null.NullMTA",
            "incoming: %s\nconfiguration: %s" % (PLUGIN, self.config)))

    def popen(self, *args):
        return subprocess.Popen(self.mailman._mailman_argv(*args),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=self.mailman._env())

    def listed(self):
        """The list names in the virtusertable (from the posting addresses)."""
        text = (self.maps / "virtusertable").read_text()
        return sorted(line.split("@")[0] for line in text.splitlines()
                      if line.endswith(".mailman.invalid") and "-" not in line.split("@")[0]
                      and not line.startswith("owner-"))

    def mailman_lists(self):
        """Mailman's committed lists, from its database (quicker than
        `mailman lists`, which starts all of Mailman)."""
        db = sqlite3.connect(str(self.mailman.var_dir / "data" / "mailman.db"))
        try:
            rows = db.execute("SELECT list_name, mail_host FROM mailinglist").fetchall()
        finally:
            db.close()
        assert all(host == DOMAIN for _, host in rows)
        return sorted(name for name, _ in rows)

    def hold(self):
        (self.gate / "hold").touch()
        for p in self.gate.glob("running-*"):
            p.unlink()

    def wait_running(self, proc, timeout=60):
        deadline = time.monotonic() + timeout
        while not list(self.gate.glob("running-*")):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "makemap never ran"
            time.sleep(0.01)

    def wait_queued_on_lock(self, proc, timeout=60):
        """Until `proc` (or a child) waits for the maps lock (/proc/locks '->')."""
        inode = ":%d " % os.stat(self.maps / LOCK).st_ino
        deadline = time.monotonic() + timeout
        while not any("->" in line and inode in line for line in open("/proc/locks")):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "never queued on the lock"
            time.sleep(0.01)

    def release(self):
        (self.gate / "hold").unlink()


@pytest.fixture(scope="module")
def site(public_tmp):
    from tests.conftest import MAILMAN_VENV
    assert (MAILMAN_VENV / "bin" / "mailman").exists(), "run `make test`"
    root = Path(tempfile.mkdtemp(prefix="overlap-", dir=public_tmp))
    root.chmod(0o755)
    s = Site(root, MAILMAN_VENV)
    s.mailman.create_list("base@" + DOMAIN)
    assert s.listed() == ["base"]
    return s


def finish(proc, timeout=120):
    out = proc.communicate(timeout=timeout)[0].decode(errors="replace")
    return proc.returncode, out


@pytest.mark.parametrize("round_", range(3))
def test_create_overlapping_a_regeneration_is_not_lost(site, round_):
    name = "fresh%d" % round_
    site.hold()
    create = site.popen("create", "%s@%s" % (name, DOMAIN))
    try:
        site.wait_running(create)               # create holds the lock, in makemap
        regen = site.popen("aliases")
        try:
            site.wait_queued_on_lock(regen)     # and aliases waits for it
        finally:
            site.release()
        assert finish(create)[0] == 0
        assert finish(regen)[0] == 0
    finally:
        if (site.gate / "hold").exists():
            site.release()
    assert name in site.mailman_lists()
    assert site.listed() == site.mailman_lists()


@pytest.mark.parametrize("round_", range(3))
def test_remove_overlapping_a_regeneration_is_not_undone(site, round_):
    name = "fresh%d" % round_
    assert name in site.listed()
    site.hold()
    remove = site.popen("remove", "%s@%s" % (name, DOMAIN))
    try:
        site.wait_running(remove)
        regen = site.popen("aliases")
        try:
            site.wait_queued_on_lock(regen)
        finally:
            site.release()
        assert finish(remove)[0] == 0
        assert finish(regen)[0] == 0
    finally:
        if (site.gate / "hold").exists():
            site.release()
    assert name not in site.mailman_lists()
    assert site.listed() == site.mailman_lists()


def test_a_create_rolled_back_after_the_plugin_wrote_is_not_published(site):
    """The plug-in wrote maps with the new list; then Mailman's commit fails
    (here: the database stays locked by a reader past SQLite's 5 s busy
    timeout) and the list is rolled back.  The maps follow Mailman."""
    db = site.mailman.var_dir / "data" / "mailman.db"
    site.hold()
    create = site.popen("create", "doomed@" + DOMAIN)
    reader = None
    try:
        site.wait_running(create)
        reader = sqlite3.connect(str(db), timeout=30, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM mailinglist").fetchall()   # SHARED lock
        site.release()
        code, out = finish(create)
    finally:
        if (site.gate / "hold").exists():
            site.release()
        if reader is not None:
            reader.close()
    assert code != 0 and "locked" in out, out
    assert "doomed" not in site.mailman_lists()
    # Mailman's directory for the list may stay behind: the plug-in never reads it
    assert site.listed() == site.mailman_lists()


def test_an_orphan_list_directory_is_not_published_by_the_plugin(site):
    """A failed `mailman create` may leave var/lists/<id> behind; the plug-in
    asks Mailman's list manager, not the disk."""
    (site.mailman.var_dir / "lists" / ("orphan." + DOMAIN)).mkdir(exist_ok=True)
    (site.gate / "fail").touch()
    try:
        with pytest.raises(RuntimeError) as info:
            site.mailman.mailman("create", "broken@" + DOMAIN)
        assert "makemap: told to fail" in str(info.value)
    finally:
        (site.gate / "fail").unlink()
    site.mailman.mailman("aliases")
    assert "broken" not in site.mailman_lists()
    assert site.listed() == site.mailman_lists()
