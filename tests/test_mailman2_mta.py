"""Mailman 2 keeps the maps current: sendmail/mailman2/MMHandler.py.

Mailman 2 calls Mailman.MTA.<mm_cfg.MTA>.create(mlist) from newlist (after
the list is saved) and .remove(mlist) from rmlist (BEFORE lists/NAME is
deleted); the module runs `mm-handler maps -C CONFIG --makemap` when the
disk agrees: at once for a new list, at the process's exit for a removed
one.

- Unit level, on Python 2.7 (classic Mailman 2.1), Debian's Python 3 and
  the newest pyenv Python 3: a driver imports the module the way Mailman
  does (from a fake Mailman package: copied into Mailman/MTA/, or found
  through a path mm_cfg.py adds) and calls it with a fake mlist; a fake
  mm-handler records its argv, environment, cwd and which lists existed
  when it ran.
- End to end: the REAL Mailman 2 (tests/peers/mailman2_real.py, a private
  copy of its prefix) with MTA = 'MMHandler' in its mm_cfg.py, and real
  Sendmail from the kit reading the maps: `newlist` -> 250 at RCPT at once
  and the message in Mailman's queue; `rmlist` -> 550 5.1.1 at once.
"""

import json
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import render_config
from tests.peers.mailman2_real import RealMailman2
from tests.peers.sendmail import LIST_DOMAIN, MAKEMAP, SendmailHost
from tests.peers.syslog import SyslogSink

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "sendmail" / "mailman2" / "MMHandler.py"
PYENV = Path("/root/.pyenv/versions")
SENDER = "alice@example.org"


def _newest_pyenv_python3():
    found = sorted(PYENV.glob("3.*/bin/python3"),
                   key=lambda p: tuple(int(x) for x in p.parent.parent.name.split(".")
                                       if x.isdigit()))
    return str(found[-1]) if found else None


INTERPRETERS = {
    "py2.7": str(PYENV / "2.7.18" / "bin" / "python"),
    "debian-py3": "/usr/bin/python3",
    "newest-py3": _newest_pyenv_python3(),
}


# -- unit level: a fake Mailman, a fake mm-handler -----------------------------------

FAKE_HANDLER = r"""#!/usr/bin/python3 -I
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
lists = sorted(n for n in os.listdir(os.path.join(here, "lists"))
               if os.path.exists(os.path.join(here, "lists", n, "config.pck")))
with open(os.path.join(here, "record"), "a") as f:
    f.write(json.dumps({"argv": sys.argv, "env": dict(os.environ),
                        "cwd": os.getcwd(), "lists": lists,
                        "stdin": sys.stdin.read()}) + "\n")
mode = open(os.path.join(here, "mode")).read().strip()
if mode == "fail":
    sys.stderr.write("mm-handler maps: output directory /etc/mail/mm-handler "
                     "does not exist\n")
    sys.exit(73)
if mode == "sleep":
    time.sleep(30)
if mode == "warn":
    sys.stderr.write("mm-handler maps: warning: skipped 'A+B' in lists\n")
print("mm-handler maps: wrote %d lists" % len(lists))
"""

FAKE_SYSLOG = """\
import os
def syslog(kind, msg, *args):
    with open(os.environ["FAKE_SYSLOG"], "a") as f:
        f.write("%s: %s\\n" % (kind, msg % args))
"""

# Shape A: MMHandler.py copied into PREFIX/Mailman/MTA/.  Shape B: left
# where mm-handler installed it, mm_cfg.py adds that directory to the
# package's path.  Either way Mailman imports it by the name
# 'Mailman.MTA.' + mm_cfg.MTA.
MM_CFG = """\
LIST_DATA_DIR = {lists!r}
MTA = 'MMHandler'
MM_HANDLER = {program!r}
MM_HANDLER_CONFIG = {config!r}
"""
MM_CFG_SHAPE_B = """\
import Mailman.MTA
Mailman.MTA.__path__.append({directory!r})
"""

DRIVER = r"""
from __future__ import print_function
import json, os, shutil, sys, time
scenario, result_path = sys.argv[1], sys.argv[2]
from Mailman import mm_cfg
# exactly as bin/newlist, bin/rmlist and the web UI find the module
modname = 'Mailman.MTA.' + mm_cfg.MTA
__import__(modname)
MTA = sys.modules[modname]

class MailList:
    def __init__(self, name):
        self.name = name
    def internal_name(self):
        return self.name

def make(name):
    if not os.path.isdir(os.path.join(mm_cfg.LIST_DATA_DIR, name)):
        os.makedirs(os.path.join(mm_cfg.LIST_DATA_DIR, name))
    open(os.path.join(mm_cfg.LIST_DATA_DIR, name, 'config.pck'), 'w').close()

out = {'python': sys.version_info[0]}
t0 = time.time()
if scenario == 'created':
    make('fresh')
    out['returned'] = MTA.create(MailList('fresh'))
elif scenario == 'created-cgi':
    make('fresh')
    out['returned'] = MTA.create(MailList('fresh'), cgi=1)
elif scenario == 'create-before-save':
    out['returned'] = MTA.create(MailList('early'))
    make('early')                   # saved later: the run comes at exit
elif scenario == 'removed':
    make('gone')
    out['returned'] = MTA.remove(MailList('gone'))
    shutil.rmtree(os.path.join(mm_cfg.LIST_DATA_DIR, 'gone'))   # as rmlist does
elif scenario == 'removed-cgi':
    make('gone')
    out['returned'] = MTA.remove(MailList('gone'), cgi=1)
    shutil.rmtree(os.path.join(mm_cfg.LIST_DATA_DIR, 'gone'))
elif scenario == 'genaliases':
    make('a')
    make('b')
    lock = MTA.makelock()
    lock.lock()
    MTA.clear()
    MTA.create(MailList('a'), nolock=True, quiet=False)
    MTA.create(MailList('b'), nolock=True, quiet=True)
    lock.unlock(unconditionally=True)
    out['returned'] = MTA.create(None, quiet=True)
elif scenario == 'genaliases-old':
    # an older genaliases without the final create(None): the run at exit
    make('a')
    MTA.create(MailList('a'), nolock=True, quiet=False)
elif scenario == 'fails':
    make('fresh')
    out['returned'] = MTA.create(MailList('fresh'))
elif scenario == 'fails-at-exit':
    make('gone')
    out['returned'] = MTA.remove(MailList('gone'))
    shutil.rmtree(os.path.join(mm_cfg.LIST_DATA_DIR, 'gone'))
elif scenario == 'no-program':
    mm_cfg.MM_HANDLER = '/nonexistent/mm-handler'
    make('fresh')
    out['returned'] = MTA.create(MailList('fresh'))
elif scenario == 'bad-setting':
    mm_cfg.MM_HANDLER = 'mm-handler'        # not absolute: refused
    make('fresh')
    out['returned'] = MTA.create(MailList('fresh'))
elif scenario == 'times-out-at-exit':
    mm_cfg.MM_HANDLER_TIMEOUT = 1
    make('gone')
    out['returned'] = MTA.remove(MailList('gone'))
    shutil.rmtree(os.path.join(mm_cfg.LIST_DATA_DIR, 'gone'))
elif scenario == 'no-config':
    mm_cfg.MM_HANDLER_CONFIG = None
    mm_cfg.MM_HANDLER_COMMAND_PREFIX = ['/usr/bin/env', '--']
    make('fresh')
    out['returned'] = MTA.create(MailList('fresh'))
out['seconds'] = time.time() - t0
with open(result_path, 'w') as f:
    json.dump(out, f)
"""

# a configuration path no shell could pass unquoted
ODD_CONFIG = "/etc/mm handler;touch PWNED.cfg"


class FakeSite:
    def __init__(self, root, interpreter, shape="A", mode="ok"):
        self.root = Path(root)
        self.python = interpreter
        pkg = self.root / "site" / "Mailman"
        (pkg / "MTA").mkdir(parents=True)
        (pkg / "Logging").mkdir()
        for init in (pkg, pkg / "MTA", pkg / "Logging"):
            (init / "__init__.py").write_text("")
        (pkg / "Logging" / "Syslog.py").write_text(FAKE_SYSLOG)
        self.fake = self.root / "handler"
        (self.fake / "lists").mkdir(parents=True)
        (self.fake / "mode").write_text(mode)
        program = self.fake / "mm-handler"
        program.write_text(FAKE_HANDLER)
        program.chmod(0o755)
        cfg = MM_CFG.format(lists=str(self.fake / "lists"), program=str(program),
                            config=ODD_CONFIG)
        if shape == "A":
            shutil.copy(MODULE, pkg / "MTA" / "MMHandler.py")
        else:
            installed = self.root / "opt-mm-handler-mailman2"
            installed.mkdir()
            shutil.copy(MODULE, installed / "MMHandler.py")
            cfg = MM_CFG_SHAPE_B.format(directory=str(installed)) + cfg
        (pkg / "mm_cfg.py").write_text(cfg)
        self.driver = self.root / "driver.py"
        self.driver.write_text(DRIVER)
        self.program = str(program)

    def run(self, scenario):
        result = self.root / "result.json"
        env = {"PYTHONPATH": str(self.root / "site"),
               "FAKE_SYSLOG": str(self.root / "syslog"),
               "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONIOENCODING": "utf-8"}
        started = time.monotonic()
        proc = subprocess.run([self.python, "-B", str(self.driver), scenario,
                               str(result)], capture_output=True, env=env,
                              cwd=str(self.root), timeout=60)
        proc.elapsed = time.monotonic() - started
        proc.out = proc.stdout.decode()
        proc.err = proc.stderr.decode()
        proc.result = json.loads(result.read_text()) if result.exists() else None
        return proc

    def runs(self):
        path = self.fake / "record"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def syslog(self):
        path = self.root / "syslog"
        return path.read_text().splitlines() if path.exists() else []

    def expected_argv(self):
        return [self.program, "maps", "-C", ODD_CONFIG, "--makemap"]


@pytest.fixture(params=sorted(INTERPRETERS), ids=sorted(INTERPRETERS))
def python(request):
    path = INTERPRETERS[request.param]
    # the machine image carries them (pyenv): missing is a broken install
    assert path and os.access(path, os.X_OK), "no %s here" % request.param
    return path


def fake_site(tmp_path, python, **kw):
    return FakeSite(tmp_path, python, **kw)


@pytest.mark.parametrize("shape", ["A", "B"], ids=["copied-into-MTA", "mm_cfg-path"])
def test_create_runs_mm_handler_maps_at_once_without_a_shell(tmp_path, python, shape):
    site = fake_site(tmp_path, python, shape=shape)
    proc = site.run("created")
    assert proc.returncode == 0, proc.err
    assert proc.result["python"] == (2 if "2.7" in python else 3)
    assert proc.result["returned"] is True
    [run] = site.runs()
    assert run["argv"][1:] == site.expected_argv()[1:]      # one argument each
    assert run["argv"][0] == site.program
    assert run["lists"] == ["fresh"]                         # the new list is in
    env = dict(run["env"])
    if env.get("LC_CTYPE") == "C.UTF-8":
        del env["LC_CTYPE"]         # the fake's own Python 3 sets it (PEP 538)
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    assert run["cwd"] == "/" and run["stdin"] == ""
    assert not (tmp_path / "PWNED.cfg").exists()
    assert proc.out == "MMHandler: mm-handler maps: wrote 1 lists\n"
    assert proc.err == ""


def test_create_from_the_web_ui_prints_nothing_into_the_page(tmp_path, python):
    site = fake_site(tmp_path, python)
    proc = site.run("created-cgi")
    assert proc.result["returned"] is True and len(site.runs()) == 1
    assert proc.out == "" and proc.err == ""


def test_create_before_the_list_is_saved_runs_at_exit(tmp_path, python):
    site = fake_site(tmp_path, python)
    proc = site.run("create-before-save")
    assert proc.returncode == 0, proc.err
    assert proc.result["returned"] is None          # nothing ran during the call
    [run] = site.runs()                             # ... but at exit, once
    assert run["lists"] == ["early"]


@pytest.mark.parametrize("scenario", ["removed", "removed-cgi"])
def test_remove_runs_after_the_list_directory_is_gone(tmp_path, python, scenario):
    site = fake_site(tmp_path, python)
    proc = site.run(scenario)
    assert proc.returncode == 0, proc.err
    assert proc.result["returned"] is None
    [run] = site.runs()
    assert run["lists"] == []                       # "gone" was deleted first
    assert run["argv"][1:] == site.expected_argv()[1:]
    if scenario == "removed-cgi":
        assert proc.out == ""
    else:
        assert proc.out == "MMHandler: mm-handler maps: wrote 0 lists\n"


@pytest.mark.parametrize("scenario", ["genaliases", "genaliases-old"])
def test_genaliases_runs_once(tmp_path, python, scenario):
    site = fake_site(tmp_path, python)
    proc = site.run(scenario)
    assert proc.returncode == 0, proc.err
    assert len(site.runs()) == 1
    if scenario == "genaliases":
        assert proc.result["returned"] is True
        assert proc.out == ""                       # create(None, quiet=True)


def test_a_failure_says_why_and_what_to_run_and_breaks_nothing(tmp_path, python):
    site = fake_site(tmp_path, python, mode="fail")
    proc = site.run("fails")
    assert proc.returncode == 0 and proc.result["returned"] is False
    lines = proc.err.splitlines()
    assert lines[0] == (
        "MMHandler: the Sendmail maps were NOT updated after creating list fresh: "
        "mm-handler maps failed (exit 73): mm-handler maps: output directory "
        "/etc/mail/mm-handler does not exist")
    assert "refuses mail to the new list at RCPT time" in lines[1]
    assert lines[2].endswith(
        "run by hand, as the owner of the maps directory or root: "
        "%s maps -C '%s' --makemap" % (site.program, ODD_CONFIG))
    assert site.syslog() == ["error: " + line for line in lines]
    assert proc.out == ""


def test_a_failure_at_exit_is_reported_too(tmp_path, python):
    site = fake_site(tmp_path, python, mode="fail")
    proc = site.run("fails-at-exit")
    assert proc.returncode == 0
    assert proc.err.startswith("MMHandler: the Sendmail maps were NOT updated "
                               "after removing list gone: mm-handler maps failed "
                               "(exit 73)"), proc.err
    assert "still accepts mail to the removed list" in proc.err


def test_a_missing_program_or_bad_setting_is_reported(tmp_path, python):
    site = fake_site(tmp_path, python)
    proc = site.run("no-program")
    assert proc.returncode == 0 and proc.result["returned"] is False
    assert ("after creating list fresh: cannot run /nonexistent/mm-handler: "
            "No such file or directory") in proc.err.splitlines()[0]
    proc = site.run("bad-setting")
    assert proc.result["returned"] is False
    assert "MM_HANDLER must be an absolute path, not 'mm-handler'" in proc.err


def test_a_hanging_run_at_exit_is_killed(tmp_path, python):
    site = fake_site(tmp_path, python, mode="sleep")
    proc = site.run("times-out-at-exit")
    assert proc.returncode == 0
    assert proc.elapsed < 10
    assert "mm-handler maps took more than 1 s and was killed" in proc.err, proc.err


def test_no_config_and_a_command_prefix(tmp_path, python):
    site = fake_site(tmp_path, python, mode="warn")
    proc = site.run("no-config")
    assert proc.result["returned"] is True
    [run] = site.runs()
    # /usr/bin/env -- PROGRAM maps --makemap: env runs the program as given
    assert run["argv"][1:] == ["maps", "--makemap"]
    assert proc.err == "mm-handler maps: warning: skipped 'A+B' in lists\n"


def test_the_module_compiles_on_every_interpreter(tmp_path, python):
    proc = subprocess.run([python, "-c", "import sys; compile(open(sys.argv[1]).read(), "
                           "sys.argv[1], 'exec')", str(MODULE)], capture_output=True)
    assert proc.returncode == 0, proc.stderr


# -- end to end: the real Mailman 2 and real Sendmail -----------------------------------

MM_CFG_LINES = """
# mm-handler keeps the Sendmail maps current (README.sendmail, section 10)
MTA = 'MMHandler'
MM_HANDLER = {program!r}
MM_HANDLER_CONFIG = {config!r}
"""


def message(subject, to):
    return (b"From: Alice <alice@example.org>\n"
            b"To: " + to.encode() + b"\n"
            b"Subject: " + subject.encode() + b"\n"
            b"Message-ID: <" + subject.encode() + b"@example.org>\n"
            b"Date: Sun, 22 Nov 2026 02:44:03 +0000\n"
            b"\n"
            b"Hello list.\n")


class Site:
    """The real Mailman 2 with the module installed + Sendmail from the kit."""

    def __init__(self, root, handler):
        self.root = Path(root)
        self.root.mkdir()
        self.root.chmod(0o755)
        self.handler = handler
        self.mm2 = RealMailman2(self.root / "mailman2", handler=handler)
        self.sendmail = None
        self.sink = None

    def start(self):
        mm2 = self.mm2.start()
        mailman = pwd.getpwnam("mailman")
        # the maps directory belongs to the user that runs newlist/rmlist
        self.maps_dir = self.root / "maps"
        self.maps_dir.mkdir(mode=0o755)
        os.chown(self.maps_dir, mailman.pw_uid, mailman.pw_gid)
        self.config = self.root / "mm-handler.cfg"
        self.config.write_text(render_config({
            "mm-handler": {"backend": "mailman2", "syslog_socket": "/dev/log"},
            "mailman2": {"wrapper": str(mm2.wrapper), "lists_dir": str(mm2.lists_dir),
                         "timeout": "60"},
            "maps": {"output_dir": str(self.maps_dir), "makemap": MAKEMAP,
                     "domains": LIST_DOMAIN},
        }))
        self.config.chmod(0o644)
        # installed as README.sendmail section 10 says: copied into
        # PREFIX/Mailman/MTA/, then MTA = 'MMHandler' in mm_cfg.py
        target = mm2.files / "Mailman" / "MTA" / "MMHandler.py"
        shutil.copy(MODULE, target)
        os.chown(target, mailman.pw_uid, mailman.pw_gid)
        target.chmod(0o644)
        with open(mm2.files / "Mailman" / "mm_cfg.py", "a") as f:
            f.write(MM_CFG_LINES.format(program=str(self.handler),
                                        config=str(self.config)))
        self.sink = SyslogSink(self.root / "log.sock")
        self.sendmail = SendmailHost(self.root / "sendmail", self.handler, self.config,
                                     syslog=self.sink, maps_dir=self.maps_dir)
        # the real Mailman 2 at the prefix its wrapper was compiled for
        self.sendmail.ns.binds.extend((str(s), str(t)) for s, t in mm2.binds)
        self.sendmail.start()
        return self

    def stop(self):
        if self.sendmail is not None:
            self.sendmail.stop()
        if self.sink is not None:
            self.sink.close()
        self.mm2.stop()

    def mailman(self, script, *args):
        """PREFIX/bin/SCRIPT as the mailman user -> (exit, stdout, stderr)."""
        started = time.monotonic()
        proc = self.mm2.run([self.mm2.prefix / "bin" / script] + list(args),
                            user="mailman", group="mailman")
        return (proc.returncode, proc.stdout.decode(), proc.stderr.decode(),
                time.monotonic() - started)

    def rcpt(self, local):
        return self.sendmail.smtp(SENDER, ["%s@%s" % (local, LIST_DOMAIN)])["rcpt"][0]


@pytest.fixture(scope="module")
def site(public_tmp, handler, sendmail_binary):
    s = Site(public_tmp / "mm2-mta", handler)
    try:
        s.start()
        # the first maps: bin/genaliases, through the module
        code, out, err, _ = s.mailman("genaliases")
        assert code == 0 and err == "", (out, err)
        assert (s.maps_dir / "virtusertable.db").is_file()
        assert "mailman@%s\t" % LIST_DOMAIN in (s.maps_dir / "virtusertable").read_text()
        yield s
    finally:
        s.stop()


def test_newlist_is_accepted_at_once_and_rmlist_refused_at_once(site):
    site.sendmail.reset()
    site.mm2.clear_queues()
    assert site.rcpt("fresh").code == 550
    code, out, err, took = site.mailman("newlist", "-q", "fresh", "owner@example.org", "pw")
    assert code == 0 and err == "", (out, err)
    assert "MMHandler: mm-handler maps: wrote" in out and "2 lists" in out, out
    # accepted at RCPT at once, and the message lands in the real queue
    rcpt = "fresh@" + LIST_DOMAIN
    reply = site.sendmail.smtp(SENDER, [rcpt], data=message("fresh", rcpt))
    assert reply["rcpt"][0].code == 250 and reply["data"].code == 250, reply
    assert site.sendmail.queue_ids() == [], site.sendmail.mailq()
    [entry] = site.mm2.queue()
    assert (entry.queue, entry.listname, entry.flags) == ("in", "fresh", ["tolist"])
    assert b"Subject: fresh\n" in entry.data
    # rmlist: the maps are rewritten when rmlist exits, after lists/fresh is gone
    code, out, err, took = site.mailman("rmlist", "-a", "fresh")
    assert code == 0 and err == "", (out, err)
    assert "MMHandler: mm-handler maps: wrote" in out and "1 list " in out, out
    assert not (site.mm2.files / "lists" / "fresh").exists()
    for local in ("fresh", "fresh-request", "owner-fresh"):
        reply = site.rcpt(local)
        assert reply.code == 550 and "5.1.1" in reply.text, reply
    assert site.rcpt("mailman").code == 250


def test_a_failed_update_leaves_newlist_working_and_says_what_to_run(site):
    site.maps_dir.chmod(0o555)              # the mailman user cannot write there
    try:
        code, out, err, _ = site.mailman("newlist", "-q", "late", "owner@example.org",
                                         "pw")
    finally:
        site.maps_dir.chmod(0o755)
    assert code == 0, (out, err)             # the list is made all the same
    assert (site.mm2.files / "lists" / "late" / "config.pck").is_file()
    lines = err.splitlines()
    assert lines[0].startswith("MMHandler: the Sendmail maps were NOT updated after "
                               "creating list late: mm-handler maps failed (exit 73):"
                               ), err
    assert lines[0].endswith("cannot write in %s: Permission denied" % site.maps_dir), err
    by_hand = "%s maps -C %s --makemap" % (site.handler, site.config)
    assert lines[-1].endswith(by_hand), err
    logged = (site.mm2.files / "logs" / "error").read_text()
    assert "creating list late: mm-handler maps failed (exit 73)" in logged
    assert site.rcpt("late").code == 550     # not in the maps yet
    # what the line says to run, run as the maps directory's owner
    proc = site.mm2.run(by_hand.split(), user="mailman", group="mailman")
    assert proc.returncode == 0, proc
    assert site.rcpt("late").code == 250
    code, out, err, _ = site.mailman("rmlist", "-a", "late")
    assert code == 0 and err == "", err
    assert site.rcpt("late").code == 550
