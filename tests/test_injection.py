"""Systematic fault injection: fail the k-th read/write/open/spawn/connect/
recv/send of the installed command, for every k a delivery path reaches.

Each run is the installed ``mm-handler`` (the pip-installed script, run by
its own interpreter) with tests/peers/inject.py loaded first (see there):
an empty environment for the handler, cwd /, the message on a pipe that
already holds all of it (so that the number of reads, and with it every
k, is the same from run to run).  For each path a counting run (twice:
the counts of a poll loop may vary) says how many calls of each kind
main() makes; then one run per (kind, k), in parallel.

Paths: (a) Mailman 3 over LMTP, one recipient; (b) two recipients; (c) the
Mailman 2 wrapper, one recipient; (d) two recipients, the message spooled
in memory or (spool_threshold = 0) in a spool file; (e) an unknown list
under ``unknown_list = bounce`` and (f) an unknown list beside a real one,
on either backend.  Mailman 3 is the real LMTP runner (the ``mm3``
fixture), Mailman 2 the wrapper stand-in, the bounce's sendmail a stand-in
that keeps what it read on stdin once stdin ends (atomically).

The invariant, per run:

- exit 0 only if every recipient's peer holds exactly one complete copy:
  Mailman 3's queue entry has the input's headers (plus the trace header)
  and body; the wrapper's queue file is From_ line + trace header + the
  message; the bounce letter is terminated, addressed to the sender and
  holds the whole original;
- otherwise exit 75 or a documented permanent code (65, 67, 69), 1 to
  n_recipients lines on stderr, and nothing partial anywhere: no queue
  entry or letter holding a fragment.  A complete copy beside exit 75 is a
  duplicate-to-be (the retry sends it again): allowed, counted; beside a
  permanent code it is not allowed;
- never exit 1 or any other code, never a traceback on stderr, no hang.

Failures are the code's, not the harness's: nothing here is skipped.
The coverage and every violation are printed by the last test (pytest -s).
"""

import concurrent.futures
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import FROM_LINE, render_config
from tests.peers.inject import KINDS
from tests.peers.mailman2_wrapper import Installed
from tests.peers.mailman3 import DOMAIN, read_queue_file

PEERS = Path(__file__).resolve().parent / "peers"
HOST = DOMAIN
SENDER = "alice+%s@example.org"    # % the run's id: a queue entry
                                     # that lost its Message-ID is still known
PERMANENT = (65, 67, 69)
WORKERS = max(4, min(8, 2 * (os.cpu_count() or 2)))
RUN_TIMEOUT = 90
F_SETPIPE_SZ = 1031

RUNNER = ("import sys; sys.path.insert(0, %r); import inject; del sys.path[0]; "
          "inject.run_script(%r)")

# ~100 KB: two reads of stdin and an EOF, two DATA batches, 13 buffered
# 8 KB writes of a bounce letter; dot lines exercise dot-stuffing.
BODY = b"".join((b".dot line %05d\n" % i) if i % 97 == 0 else
                (b"%05d %s\n" % (i, b"x" * 60)) for i in range(1500))

SENDMAIL_STAND_IN = """#!/usr/bin/python3 -IS
# The bounce's sendmail: keeps stdin once it ends (atomically), exit 0.
import os, sys
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "letters")
parts = []
while True:
    data = os.read(0, 65536)
    if not data:
        break
    parts.append(data)
name = str(os.getpid())
with open(os.path.join(here, name + ".argv"), "w") as f:
    f.write("\\n".join(sys.argv[1:]))
with open(os.path.join(here, "." + name + ".tmp"), "wb") as f:
    f.write(b"".join(parts))
os.rename(os.path.join(here, "." + name + ".tmp"), os.path.join(here, name + ".eml"))
"""


def make_message(mid):
    headers = [("From", "Alice <alice@example.org>"),
               ("To", "test@" + HOST),
               ("Subject", "fault injection"),
               ("Message-ID", "<%s@example.org>" % mid),
               ("Date", "Sun, 22 Nov 2026 02:44:03 +0000")]
    head = b"".join(("%s: %s\n" % h).encode() for h in headers)
    return FROM_LINE + head + b"\n" + BODY, headers


class PathSpec:
    def __init__(self, id, backend, rcpts, bounce=False, threshold=None):
        self.id = id
        self.backend = backend
        self.rcpts = rcpts          # [(local part, "list" | "letter")]
        self.bounce = bounce
        self.threshold = threshold

    def __repr__(self):
        return self.id


PATHS = [
    PathSpec("a-mm3-1rcpt", "mailman3", [("test", "list")]),
    PathSpec("b-mm3-2rcpt", "mailman3", [("test", "list"), ("my-list", "list")]),
    PathSpec("c-mm2-1rcpt", "mailman2", [("test", "list")]),
    PathSpec("d-mm2-2rcpt-memory", "mailman2", [("test", "list"), ("other", "list")]),
    PathSpec("d-mm2-2rcpt-spoolfile", "mailman2",
             [("test", "list"), ("other", "list")], threshold=0),
    PathSpec("e-mm2-unknown-bounce", "mailman2", [("nope", "letter")], bounce=True),
    PathSpec("e-mm3-unknown-bounce", "mailman3", [("nope", "letter")], bounce=True),
    PathSpec("f-mm2-unknown+real-bounce", "mailman2",
             [("nope", "letter"), ("test", "list")], bounce=True),
    PathSpec("f-mm3-unknown+real-bounce", "mailman3",
             [("nope", "letter"), ("test", "list")], bounce=True),
]

# filled by the path tests, printed by test_injection_summary
COVERAGE = {}       # path id -> {kind: (n_min, n_max, run, reached)}
VIOLATIONS = []     # (path id, kind, k, text)
DUPLICATES = {}     # path id -> [(kind, k, recipient)]
NOTES = []          # (path id, kind, k, text): internal errors, leftovers


# -- running one injected mm-handler ------------------------------------------------

def interpreter(script):
    first = Path(script).read_bytes().split(b"\n", 1)[0]
    assert first.startswith(b"#!"), first
    return first[2:].decode().split()[0]


def stdin_pipe(data):
    """A pipe that already holds the whole message, its write end closed."""
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 1 << max(16, (len(data) + 4096).bit_length()))
    view = memoryview(data)
    while view:
        view = view[os.write(w, view):]
    os.close(w)
    return r


def wait_gone(pids, timeout=60):
    """Wait until each pid has exited (gone, or a zombie nobody reaps)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open("/proc/%d/stat" % pid) as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.01)
        else:
            return False
    return True


class Run:
    def __init__(self, kind, k):
        self.kind = kind            # None: a counting run
        self.k = k
        self.mid = "inj-" + uuid.uuid4().hex    # fixed length: same counts
        self.sender = SENDER % self.mid
        self.code = None
        self.stdout = self.stderr = ""
        self.report = None
        self.hung = False
        self.held = None            # recipient index -> {"complete": n, "fragments": []}
        self.stray = []
        self.leftovers = []

    @property
    def label(self):
        return "count" if self.kind is None else "%s:%d" % (self.kind, self.k)


class Harness:
    """Everything one path needs: the command, the peers, per-run directories."""

    def __init__(self, spec, handler, root, sink, version, mm3=None):
        self.spec = spec
        self.handler = str(handler)
        self.python = interpreter(handler)
        self.root = Path(root)
        self.sink = sink
        self.version = version
        self.mm3 = mm3
        self.root.mkdir(parents=True, exist_ok=True)

    def run(self, kind=None, k=0):
        run = Run(kind, k)
        rundir = self.root / run.mid
        rundir.mkdir()
        message, headers = make_message(run.mid)
        run.message, run.headers = message, headers
        spool = rundir / "spool"
        spool.mkdir()
        sections = {
            "mm-handler": {"backend": self.spec.backend,
                           "syslog_socket": self.sink.path,
                           "spool_dir": str(spool)},
            "mailman2": {"timeout": "20"},
            "mailman3": {"lmtp": self.mm3.endpoint if self.mm3 else "127.0.0.1:1",
                         "timeout": "20"},
        }
        if self.spec.threshold is not None:
            sections["mm-handler"]["spool_threshold"] = str(self.spec.threshold)
        mm2 = None
        if self.spec.backend == "mailman2":
            mm2 = Installed(rundir / "mailman2", lists=["test", "other"])
            sections["mailman2"].update(wrapper=mm2.path, lists_dir=mm2.lists_dir)
        if self.spec.bounce:
            sections["mm-handler"]["unknown_list"] = "bounce"
            (rundir / "letters").mkdir()
            sendmail = rundir / "sendmail"
            sendmail.write_text(SENDMAIL_STAND_IN)
            sendmail.chmod(0o755)
            sections["bounce"] = {"sendmail": str(sendmail),
                                  "max_original": "1048576"}
        config = rundir / "mm-handler.cfg"
        config.write_text(render_config(sections))
        report = rundir / "report.json"
        env = {"MMH_INJECT": "" if kind is None else "%s:%d" % (kind, k),
               "MMH_INJECT_REPORT": str(report)}
        argv = [self.python, "-c", RUNNER % (str(PEERS), self.handler),
                "-C", str(config), "-r", run.sender, HOST] + [r for r, _ in self.spec.rcpts]
        fd = stdin_pipe(message)
        try:
            proc = subprocess.run(argv, stdin=fd, capture_output=True, env=env,
                                  cwd="/", timeout=RUN_TIMEOUT)
            run.code = proc.returncode
            run.stdout = proc.stdout.decode("utf-8", "replace")
            run.stderr = proc.stderr.decode("utf-8", "replace")
        except subprocess.TimeoutExpired as exc:
            run.hung = True
            run.stderr = (exc.stderr or b"").decode("utf-8", "replace")
        finally:
            os.close(fd)
        if report.exists():
            run.report = json.loads(report.read_text())
            if not wait_gone(run.report["children"]):
                run.stray.append("a child of mm-handler still runs after 60 s")
        run.held = {i: {"complete": 0, "fragments": []}
                    for i in range(len(self.spec.rcpts))}
        if mm2 is not None:
            self._collect_mailman2(run, mm2)
        if self.spec.bounce:
            self._collect_letters(run, rundir / "letters")
        run.leftovers = sorted(os.listdir(spool))
        shutil.rmtree(rundir, ignore_errors=True)
        return run

    # -- what the peers hold ---------------------------------------------------------

    def index_of(self, name, how):
        for i, (local, kind) in enumerate(self.spec.rcpts):
            if local == name and kind == how:
                return i
        return None

    def _collect_mailman2(self, run, mm2):
        def expected(listname):
            return (FROM_LINE + b"X-Mailman-Handler: mm-handler %s\n" % self.version
                    + b"Delivered-To: %s@%s\n" % (str(listname).encode(),
                                                  HOST.encode())
                    + run.message[len(FROM_LINE):])
        lists = {r.get("queue_file"): r.get("listname") for r in mm2.runs()
                 if r.get("outcome") == "queued"}
        for path, data in mm2.queued():
            i = self.index_of(lists.get(path), "list")
            what = ("wrapper queue file for %s, %d bytes"
                    % (lists.get(path), len(data)))
            if i is None:
                run.stray.append(what + " (no such recipient)")
            elif data == expected(lists.get(path)):
                run.held[i]["complete"] += 1
            else:
                run.held[i]["fragments"].append(
                    "%s != expected %d bytes (%s)" % (what, len(expected),
                                                      describe_diff(data, expected)))

    def _collect_letters(self, run, letters):
        i = self.index_of("nope", "letter")
        for name in sorted(os.listdir(letters)):
            if not name.endswith(".eml"):
                continue
            data = (letters / name).read_bytes()
            argv = (letters / (name[:-4] + ".argv")).read_text().split("\n")
            problem = letter_problem(data, argv, run.message[len(FROM_LINE):],
                                     run.sender)
            if problem is None:
                run.held[i]["complete"] += 1
            else:
                run.held[i]["fragments"].append("bounce letter of %d bytes: %s"
                                                 % (len(data), problem))

    def collect_mailman3(self, runs):
        """After all runs: settle the runner, then read every queue entry."""
        settle(self.mm3)
        by_mid = {"<%s@example.org>" % r.mid: r for r in runs}
        by_sender = {r.sender: r for r in runs}
        stray = []
        root = self.mm3.var_dir / "queue"
        for path in sorted(root.glob("*/*.pck")):
            try:
                msg, data = read_queue_file(path)
            except Exception as exc:       # noqa: BLE001 - a broken entry is a finding
                stray.append("unreadable queue entry %s: %r" % (path.name, exc))
                continue
            run = by_mid.get(msg["Message-ID"]) or by_sender.get(msg["X-MailFrom"])
            if run is None:
                stray.append("queue entry %s/%s with Message-ID %r, X-MailFrom %r"
                             % (path.parent.name, path.name, msg["Message-ID"],
                                msg["X-MailFrom"]))
                continue
            listid = data.get("listid", "")
            name = listid[:-len(DOMAIN) - 1] if listid.endswith("." + DOMAIN) else listid
            i = self.index_of(name, "list")
            if i is None:
                run.stray.append("Mailman 3 queued it for %r" % listid)
                continue
            problem = mailman3_problem(msg, data, run, self.version)
            if problem is None:
                run.held[i]["complete"] += 1
            else:
                run.held[i]["fragments"].append("Mailman 3 %s entry: %s"
                                                % (path.parent.name, problem))
        return stray


def describe_diff(data, expected):
    n = 0
    for a, b in zip(data, expected):
        if a != b:
            break
        n += 1
    return "first difference at byte %d" % n


def letter_problem(data, argv, original, sender):
    if argv != ["-oi", "-f", "<>", "--", sender]:
        return "sendmail argv %r" % argv
    m = re.search(rb'boundary="([^"]+)"', data)
    if not m:
        return "no MIME boundary (cut in the headers)"
    if not data.endswith(b"\n--" + m.group(1) + b"--\n"):
        return "not terminated by its closing boundary"
    if b"\nTo: <%s>\n" % sender.encode() not in data:
        return "not addressed to the sender"
    if b"Final-Recipient: rfc822; nope@" + HOST.encode() + b"\n" not in data:
        return "no Final-Recipient for nope@" + HOST
    if original not in data:
        return "the original is not in it whole"
    return None


def mailman3_problem(msg, data, run, version):
    body = msg._payload
    if not isinstance(body, str):
        return "payload is not text: %r" % type(body)
    raw = body.encode("ascii", "surrogateescape")
    want = BODY.replace(b"\n", b"\r\n")
    if raw != want:
        return "body of %d bytes != %d expected (%s)" % (len(raw), len(want),
                                                         describe_diff(raw, want))
    added = {"Message-ID-Hash", "X-Message-ID-Hash", "X-MailFrom"}
    names = [n for n in msg.keys() if n not in added]
    want_names = ["X-Mailman-Handler", "Delivered-To"] + [n for n, _ in run.headers]
    if names != want_names:
        return "headers %r != %r" % (names, want_names)
    for name, value in run.headers:
        if msg[name] != value:
            return "header %s: %r != %r" % (name, msg[name], value)
    if msg["X-Mailman-Handler"] != "mm-handler " + version.decode():
        return "trace header %r" % msg["X-Mailman-Handler"]
    if msg["X-MailFrom"] != run.sender:
        return "X-MailFrom %r" % msg["X-MailFrom"]
    return None


def settle(mm3, timeout=30):
    """Let the LMTP runner finish every session the handlers left behind:
    one full probe session (its replies come after the earlier sockets'
    data, the runner being one asyncio loop), then wait for a quiet queue."""
    host, port = mm3.endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        f = s.makefile("rwb")
        f.readline()
        for line in (b"LHLO probe.test\r\n", b"QUIT\r\n"):
            f.write(line)
            f.flush()
            while True:
                reply = f.readline()
                if not reply or reply[3:4] != b"-":
                    break
    root = mm3.var_dir / "queue"
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        now = sorted(str(p) for p in root.glob("*/*"))
        if now == last and not any(p.endswith(".tmp") for p in now):
            return
        last = now
        time.sleep(0.2)


# -- the invariant ------------------------------------------------------------------

def judge(spec, run):
    """Violations of the invariant (a list of texts) for one run."""
    out = []
    n = len(spec.rcpts)
    if run.hung:
        out.append("hung: still running after %d s" % RUN_TIMEOUT)
    elif run.code not in (0, 75) + PERMANENT:
        out.append("exit %d" % run.code)
    if "Traceback" in run.stderr:
        out.append("traceback on stderr")
    lines = run.stderr.splitlines()
    if run.code == 0 and run.stderr:
        out.append("exit 0 with stderr %r" % cut(run.stderr))
    if run.code not in (0, None) and not 1 <= len(lines) <= n:
        out.append("exit %d with %d stderr lines: %r" % (run.code, len(lines),
                                                         cut(run.stderr)))
    if run.kind is None and run.code != 0:
        out.append("the failure-free (counting) run did not deliver: the path "
                   "is broken before any fault is injected")
    if run.report is None:
        out.append("no injection report (the process did not end through "
                   "os._exit or a normal exit)")
    for i, (rcpt, how) in enumerate(spec.rcpts):
        held = run.held[i]
        where = "%s (%s)" % (rcpt, "bounce letter" if how == "letter" else "list")
        for fragment in held["fragments"]:
            out.append("%s: fragment handed over: %s" % (where, fragment))
        if held["complete"] > 1:
            out.append("%s: %d complete copies" % (where, held["complete"]))
        if run.code == 0 and held["complete"] != 1:
            out.append("exit 0 but %s holds %d complete copies"
                       % (where, held["complete"]))
        if run.code in PERMANENT and held["complete"]:
            out.append("exit %d but %s holds a complete copy" % (run.code, where))
    for text in run.stray:
        out.append(text)
    return out


def cut(text, limit=300):
    return text if len(text) <= limit else text[:limit] + "..."


# -- the tests ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def injected_handler(handler):
    """The command under test: the wheel installed by the `handler` fixture,
    or another installed mm-handler script named by $MMH_INJECTION_HANDLER
    (to measure another build with the same harness)."""
    return Path(os.environ.get("MMH_INJECTION_HANDLER") or handler)


@pytest.fixture(scope="session")
def handler_version(injected_handler):
    proc = subprocess.run([str(injected_handler), "--version"], capture_output=True, env={},
                          cwd="/", timeout=60)
    assert proc.returncode == 0, proc
    return proc.stdout.split()[-1]


@pytest.mark.parametrize("spec", PATHS, ids=[p.id for p in PATHS])
def test_injection(spec, request, injected_handler, handler_version, syslog_sink,
                   tmp_path):
    mm3 = request.getfixturevalue("mm3") if spec.backend == "mailman3" else None
    harness = Harness(spec, injected_handler, tmp_path / "runs", syslog_sink,
                      handler_version, mm3)
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        counting = list(pool.map(lambda _: harness.run(), range(2)))
        reports = [r.report for r in counting if r.report is not None]
        assert reports, "no counting run left a report: %r" % [
            (r.code, r.stderr) for r in counting]
        counts = {kind: [rep["counts"][kind] for rep in reports] for kind in KINDS}
        jobs = [(kind, k) for kind in KINDS for k in range(1, max(counts[kind]) + 1)]
        runs = counting + list(pool.map(lambda job: harness.run(*job), jobs))
    stray = harness.collect_mailman3(runs) if mm3 is not None else []

    found = []
    for run in runs:
        for text in judge(spec, run):
            found.append((run, text))
        where = run.report.get("fired_at") if run.report else None
        if "internal error" in run.stderr:
            NOTES.append((spec.id, run.kind, run.k, "internal error exit %s at %s: %s"
                          % (run.code, where, cut(run.stderr.strip(), 200))))
        if run.leftovers:
            NOTES.append((spec.id, run.kind, run.k, "left in spool_dir: %r"
                          % run.leftovers))
        if run.code == 75:
            for i, (rcpt, _) in enumerate(spec.rcpts):
                if run.held[i]["complete"] == 1:
                    DUPLICATES.setdefault(spec.id, []).append((run.kind, run.k, rcpt))
    coverage = {}
    for kind in KINDS:
        mine = [r for r in runs if r.kind == kind]
        reached = sum(1 for r in mine if r.report and r.report["fired"])
        coverage[kind] = (min(counts[kind]), max(counts[kind]), len(mine), reached)
    COVERAGE[spec.id] = coverage
    texts = []
    for run, text in found:
        where = run.report.get("fired_at") if run.report else None
        line = "%s %s: exit %s: %s [injected at %s]; stderr: %r" % (
            spec.id, run.label, run.code, text, where, cut(run.stderr.strip(), 200))
        texts.append(line)
        VIOLATIONS.append((spec.id, run.kind, run.k, line))
    for text in stray:
        line = "%s (whole path): %s" % (spec.id, text)
        texts.append(line)
        VIOLATIONS.append((spec.id, None, 0, line))
    assert not texts, "%d invariant violations:\n%s" % (len(texts), "\n".join(texts))


def test_injection_summary():
    """Print the coverage table and every finding (visible with pytest -s)."""
    out = ["", "=== fault injection coverage: injection points reached / run "
           "(calls counted in the failure-free runs) ==="]
    out.append("%-28s" % "path" + "".join("%14s" % k for k in KINDS) + "%12s" % "total")
    total_run = total_reached = 0
    for path_id, cov in COVERAGE.items():
        cells = []
        p_run = p_reached = 0
        for kind in KINDS:
            n_min, n_max, ran, reached = cov[kind]
            counted = str(n_max) if n_min == n_max else "%d-%d" % (n_min, n_max)
            cells.append("%14s" % ("%d/%d (%s)" % (reached, ran, counted)))
            p_run += ran
            p_reached += reached
        total_run += p_run
        total_reached += p_reached
        out.append("%-28s" % path_id + "".join(cells) + "%12s" % ("%d/%d" % (
            p_reached, p_run)))
    out.append("total: %d injection points reached of %d runs, over %d paths"
               % (total_reached, total_run, len(COVERAGE)))
    out.append("duplicates (exit 75, a complete copy already with the peer): "
               + (", ".join("%s %d [%s]" % (p, len(d), " ".join(
                   "%s:%d/%s" % x for x in d)) for p, d in DUPLICATES.items())
                  or "none"))
    out.append("=== %d invariant violations ===" % len(VIOLATIONS))
    out.extend(line for _, _, _, line in VIOLATIONS)
    out.append("=== %d notes (internal-error exits, spool leftovers) ===" % len(NOTES))
    out.extend("%s %s:%s %s" % note for note in NOTES)
    print("\n".join(out))
    assert COVERAGE, "no path ran"
