"""Chaos soak: real Sendmail -> installed mm-handler -> real Mailman 3 LMTP runner.

    cd /work/main && flock /tmp/mmh-build.lock make .venv/.ready   # the wheel under test
    .venv/bin/python bench/soak.py              # 2,000 messages (~5 min), as root
    .venv/bin/python bench/soak.py -n 50        # a quick run
    options: --jobs 3 --rate 10 --seed S --kill-prob 0.04 --chaos-gap 1.5
             --drain-timeout 900 --keep --rebuild --wheelhouse DIR

Needs what `make test` needs (.venv, .venv-mailman, the wheelhouse, Debian's
sendmail-bin/sendmail-cf/m4, root).  Everything runs inside one private
net + mount + uts namespace (tests/peers/sendmail.py, Mailman3Site): Sendmail
built from the kit (sendmail/mailman.mc; the virtusertable written by the
Mailman 3 plug-in and the mailertable route list addresses to the mailman
mailer), mm-handler pip-installed from the wheelhouse, Mailman 3's LMTP runner
on 127.0.0.1:8024, and between them a fault proxy of this script on
127.0.0.1:8030 (mm-handler's [mailman3] lmtp).  Nothing leaves 127.0.0.0/8.

N messages (1 KB .. 300 KB, log-uniform; 1 to 3 recipients on different
lists, some -request and -bounces addresses; a unique Message-ID and a body
digest each) are submitted with `sendmail -odi` by --jobs workers while
  * a chaos driver, at random moments, SIGKILLs the LMTP runner and restarts
    it, or switches the proxy for a while to: 421 at the greeting, 452 at
    RCPT, 452 after the dot (the dot is withheld from Mailman, which then
    sees the connection reset mid-DATA), or dropping connections at a random
    point (at accept, after the greeting, at RCPT, mid-DATA, right after
    forwarding the dot, after Mailman's reply but before relaying it);
  * a killer SIGKILLs running mm-handler processes (found by command line
    and network namespace) a random 0-150 ms after they appear;
  * `sendmail -qf` runs in a loop.
Then the chaos stops and `sendmail -qf` runs until Sendmail's queue is empty
(at most --drain-timeout seconds).  Every queue file of Mailman (in, command,
bounces) is read and matched to what was submitted: delivered, lost,
duplicates (each explained from the proxy's record of its connections, the
kills, mm-handler's and Sendmail's syslog lines), corrupt bodies, bounces
(DSNs captured by the test capture mailer and "DSN:" lines in Sendmail's
log).  The figures are printed in one block at the end; logs and the
per-event records stay in WORKDIR/results (the rest of WORKDIR is removed
unless --keep).

Cleanup, also on Ctrl-C / SIGTERM: every process inside the private network
namespace is SIGKILLed by PID, the namespace holder is stopped, and a final
sweep checks that nothing is left.
"""

import argparse
import bisect
import fcntl
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_LOCK = "/tmp/mmh-build.lock"
PROXY_PORT = 8030
LISTS = ("alpha", "beta", "gamma", "delta")
SENDER = "soak@example.org"            # example.org: DSNs go to the capture mailer
PROXY_MODES = ("greet421", "rcpt452", "dot452", "drop")
DROP_POINTS = ("accept", "greeting", "rcpt", "mid-data", "after-dot", "after-reply")
QUEUE_OF = {"": "in", "request": "command", "bounces": "bounces"}


# =============================================================================
# The fault proxy: a separate process started inside the namespace
# (stdlib only).  Control on stdin ("mode NAME"), one JSON record per
# connection on stdout.
# =============================================================================

def proxy_main(listen_port, upstream_port, handler, seed):
    import socket
    rng = random.Random(seed)
    state = {"mode": "normal"}
    out_lock = threading.Lock()
    handler_b = handler.encode()

    def emit(record):
        with out_lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    def control():
        for line in sys.stdin:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "mode":
                state["mode"] = parts[1]
        os._exit(0)                     # the parent went away: so do we

    def peer_pid(cport):
        """The mm-handler process (and its parent, the Sendmail that runs
        it) at the other end of a connection from 127.0.0.1:cport."""
        want_local, want_remote = ":%04X" % cport, ":%04X" % listen_port
        inode = None
        try:
            with open("/proc/net/tcp") as f:
                for line in f:
                    fields = line.split()
                    if (len(fields) > 9 and fields[1].endswith(want_local)
                            and fields[2].endswith(want_remote)):
                        inode = fields[9]
                        break
        except OSError:
            return None, None
        if not inode or inode == "0":
            return None, None
        target = "socket:[%s]" % inode
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    if f.read().split(b"\0")[1:2] != [handler_b]:
                        continue
                for fd in os.listdir("/proc/%s/fd" % pid):
                    if os.readlink("/proc/%s/fd/%s" % (pid, fd)) == target:
                        with open("/proc/%s/stat" % pid) as f:
                            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                        return int(pid), ppid
            except (OSError, ValueError, IndexError):
                continue
        return None, None

    def read_reply(reader):
        """One (multi-line) reply as bytes; None at EOF."""
        out = b""
        for _ in range(200):
            line = reader.readline(8192)
            if not line:
                return None
            out += line
            if line[3:4] != b"-":
                return out
        return out

    def session(cid, client, cport, mode, drop, cut):
        rec = {"id": cid, "t0": time.time(), "cport": cport, "mode": mode,
               "drop": drop, "stage": "accepted", "rcpts": [], "msgid": None,
               "dot_replies": [], "relayed": False, "end": "", "pid": None,
               "ppid": None}
        up = None
        try:
            client.settimeout(120)
            rec["pid"], rec["ppid"] = peer_pid(cport)
            cf = client.makefile("rb")
            if mode == "greet421":
                client.sendall(b"421 4.3.2 soak proxy: service not available\r\n")
                rec["end"] = "proxy: 421 at greeting"
                return
            if drop == "accept":
                rec["end"] = "proxy: dropped at accept"
                return
            try:
                up = socket.create_connection(("127.0.0.1", upstream_port), 120)
            except OSError as exc:
                rec["end"] = "upstream refused: %s" % (exc.strerror or exc)
                return
            uf = up.makefile("rb")
            reply = read_reply(uf)
            if reply is None:
                rec["end"] = "upstream closed before its greeting"
                return
            if drop == "greeting":
                rec["end"] = "proxy: dropped after the upstream greeting"
                return
            client.sendall(reply)
            rec["stage"] = "greeted"
            accepted = 0
            while True:
                line = cf.readline(8192)
                if not line:
                    rec["end"] = "client closed at %s" % rec["stage"]
                    return
                verb = line[:4].upper()
                if up is None:          # after a withheld dot: just say goodbye
                    client.sendall(b"221 2.0.0 soak proxy: bye\r\n"
                                   if verb == b"QUIT" else
                                   b"503 5.5.1 soak proxy: no session\r\n")
                    if verb == b"QUIT":
                        return
                    continue
                if verb == b"RCPT":
                    m = re.search(rb"<([^>]*)>", line)
                    rec["rcpts"].append(m.group(1).decode("ascii", "replace")
                                        if m else "?")
                    rec["stage"] = "rcpt"
                    if mode == "rcpt452":
                        client.sendall(b"452 4.3.1 soak proxy: insufficient "
                                       b"system storage\r\n")
                        rec["end"] = "proxy: 452 at RCPT"
                        continue
                    if drop == "rcpt":
                        rec["end"] = "proxy: dropped at RCPT"
                        return
                up.sendall(line)
                reply = read_reply(uf)
                if reply is None:
                    rec["end"] = "upstream closed at %s" % rec["stage"]
                    return
                if verb == b"RCPT" and reply[:1] == b"2":
                    accepted += 1
                if verb == b"QUIT":
                    client.sendall(reply)
                    rec["stage"] = "quit"
                    return
                if verb in (b"LHLO", b"MAIL"):
                    rec["stage"] = verb.decode().lower()
                if verb != b"DATA" or reply[:3] != b"354":
                    client.sendall(reply)
                    continue
                client.sendall(reply)
                rec["stage"] = "data"
                # -- the message, up to the final dot ---------------------
                in_header, sent, batch = True, 0, []
                while True:
                    line = cf.readline(70000)
                    if not line:
                        rec["end"] = "client closed in DATA (%d bytes)" % sent
                        return
                    if line == b".\r\n":
                        break
                    if in_header:
                        if line in (b"\r\n", b"\n"):
                            in_header = False
                        elif line[:11].lower() == b"message-id:":
                            rec["msgid"] = line[11:].strip().decode("ascii", "replace")
                    batch.append(line)
                    sent += len(line)
                    if drop == "mid-data" and sent >= cut:
                        up.sendall(b"".join(batch))
                        rec["end"] = "proxy: dropped mid-DATA after %d bytes" % sent
                        return
                    if len(batch) >= 256:
                        up.sendall(b"".join(batch))
                        batch = []
                if drop == "mid-data":
                    up.sendall(b"".join(batch))
                    rec["end"] = "proxy: dropped before the dot (%d bytes)" % sent
                    return
                if mode == "dot452":
                    up.sendall(b"".join(batch))
                    up.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                  b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    up.close()          # a reset: Mailman drops the transaction
                    up = None
                    client.sendall(b"452 4.3.1 soak proxy: insufficient system "
                                   b"storage\r\n" * max(accepted, 1))
                    rec["stage"] = "dot"
                    rec["end"] = "proxy: 452 after the dot (dot withheld)"
                    continue
                batch.append(line)
                up.sendall(b"".join(batch))
                rec["stage"] = "dot-forwarded"
                rec["t_dot"] = time.time()
                if drop == "after-dot":
                    rec["end"] = "proxy: dropped right after forwarding the dot"
                    return
                replies = []
                for _ in range(max(accepted, 1)):
                    reply = read_reply(uf)
                    if reply is None:
                        break
                    replies.append(reply)
                    rec["dot_replies"].append(reply.decode("ascii", "replace").strip())
                    if reply[:3] in (b"500", b"501", b"552"):
                        break
                if len(replies) < max(accepted, 1):
                    if replies:
                        client.sendall(b"".join(replies))
                    rec["end"] = ("upstream closed after the dot (%d of %d "
                                  "replies)" % (len(replies), max(accepted, 1)))
                    return
                rec["stage"] = "upstream-replied"
                if drop == "after-reply":
                    rec["end"] = "proxy: dropped after the upstream reply"
                    return
                client.sendall(b"".join(replies))
                rec["t_reply"] = time.time()
                rec["relayed"] = True
                rec["stage"] = "reply-relayed"
        except OSError as exc:
            rec["end"] = "%s at %s" % (type(exc).__name__, rec["stage"])
        finally:
            for sock in (client, up):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass
            rec["t1"] = time.time()
            emit(rec)

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(256)
    threading.Thread(target=control, daemon=True).start()
    emit({"ready": True, "pid": os.getpid()})
    cid = 0
    while True:
        client, address = server.accept()
        cid += 1
        mode = state["mode"]
        drop = rng.choice(DROP_POINTS) if mode == "drop" else None
        cut = rng.randrange(1, 40000)
        threading.Thread(target=session, args=(cid, client, address[1],
                                               mode if mode != "drop" else "drop",
                                               drop, cut), daemon=True).start()


# =============================================================================
# The soak
# =============================================================================

def netns_inode(pid):
    try:
        return os.stat("/proc/%s/ns/net" % pid).st_ino
    except OSError:
        return None


def namespace_pids(ino, exclude=()):
    """PIDs of every process inside the network namespace `ino`."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in exclude \
                and int(name) != os.getpid() and netns_inode(name) == ino:
            out.append(int(name))
    return out


def proc_start(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19]), int(fields[1])      # starttime, ppid
    except (OSError, ValueError, IndexError):
        return None, None


class TimedSink:
    """/dev/log of the namespace: a datagram socket drained by a thread,
    every line kept with its arrival time (tests.peers.syslog.SyslogSink,
    plus the time)."""

    def __init__(self, path):
        import socket
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.seen = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            with self.lock:
                self.seen.append((time.time(), data.decode("ascii", "replace")))

    def timed(self):
        time.sleep(0.3)
        with self.lock:
            return list(self.seen)

    def lines(self):
        return [line for _, line in self.timed()]

    def clear(self):
        with self.lock:
            self.seen.clear()

    def close(self):
        import socket
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(2)


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.run_id = "%08x" % self.rng.getrandbits(32)
        self.chaos_seed = self.rng.getrandbits(32)
        self.kill_seed = self.rng.getrandbits(32)
        self.proxy_seed = self.rng.getrandbits(32)
        self.work = Path(tempfile.mkdtemp(prefix="mmh-soak-", dir="/tmp"))
        self.work.chmod(0o755)
        self.results = self.work / "results"
        self.results.mkdir()
        self.site = None
        self.sink = None
        self.proxy = None
        self.ns_ino = None
        self.holder = None
        self.stop_chaos = threading.Event()
        self.stop_all = threading.Event()
        self.lock = threading.Lock()
        self.events = []            # chaos driver: (t, what, detail)
        self.kills = []             # killer: dicts
        self.handlers_seen = 0      # killer: mm-handler processes noticed
        self.conns = []             # proxy: one dict per connection
        self.submitted = {}         # i -> {"msgid", "rcpts", "size", "digest"}
        self.submit_failures = []
        self.cleaned = False

    # -- set-up ---------------------------------------------------------------

    def note(self, text):
        print("[%7.1fs] %s" % (time.monotonic() - self.t_start, text), flush=True)

    def install(self):
        from tests.conftest import SYSTEM_PYTHON, WHEELHOUSE
        if self.args.wheelhouse:
            WHEELHOUSE = Path(self.args.wheelhouse).resolve()
        venv = self.work / "venv"
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
        with open(BUILD_LOCK, "a") as lock:     # the wheelhouse may be rebuilt
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.args.rebuild:
                subprocess.run(["make", ".venv/.ready"], cwd=ROOT, check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                            "--disable-pip-version-check", "--no-index",
                            "--find-links", str(WHEELHOUSE), "mm-handler"],
                           check=True)
            wheels = sorted(p.name for p in WHEELHOUSE.glob("mm_handler-*.whl"))
            stamp = max((p.stat().st_mtime for p in WHEELHOUSE.glob("mm_handler-*.whl")),
                        default=0)
        self.wheel = "%s (built %s)" % (", ".join(wheels),
                                        time.strftime("%H:%M:%S", time.localtime(stamp)))
        commit = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
                                capture_output=True, text=True).stdout.strip()
        self.commit = commit[:70]
        return venv / "bin" / "mm-handler"

    def start(self):
        from tests.conftest import MAILMAN_VENV
        from tests.peers import sendmail as peers_sendmail
        from tests.peers.sendmail import Mailman3Site
        self.handler = self.install()
        root = self.work / "site"
        site = Mailman3Site(root, self.handler, MAILMAN_VENV, lists=LISTS,
                            handler_sections={
                                "mm-handler": {"syslog_socket": str(root / "log.sock")},
                                "mailman3": {"lmtp": "127.0.0.1:%d" % PROXY_PORT,
                                             "timeout": "20"}})
        # our own /dev/log: the same path, every line with its arrival time
        site.sink.close()
        os.unlink(site.sink.path)
        self.sink = site.sink = site.sendmail.syslog = TimedSink(root / "log.sock")
        self.site = site
        assert peers_sendmail.LMTP_PORT != PROXY_PORT
        site.sendmail.start()
        self.holder = site.sendmail.ns.pid
        self.ns_ino = netns_inode(self.holder)
        assert self.ns_ino and self.ns_ino != netns_inode("self"), "no private netns"
        # Mailman3Site.start() minus sendmail.start() (done above, so that a
        # failure below still finds the namespace to clean up)
        site.sendmail.start = lambda *a, **k: site.sendmail
        site.start()
        self.start_proxy()

    def start_proxy(self):
        from tests.conftest import SYSTEM_PYTHON
        from tests.peers.sendmail import LMTP_PORT
        self.proxy = self.site.sendmail.ns.popen(
            [SYSTEM_PYTHON, "-I", "-S", str(Path(__file__).resolve()), "--proxy-child",
             str(PROXY_PORT), str(LMTP_PORT), str(self.handler),
             str(self.proxy_seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(self.results / "proxy-stderr.txt", "wb"),
            start_new_session=True)
        first = json.loads(self.proxy.stdout.readline() or b"{}")
        if not first.get("ready"):
            raise RuntimeError("proxy did not start: %s" % (
                self.results / "proxy-stderr.txt").read_text(errors="replace"))
        threading.Thread(target=self._proxy_reader, daemon=True).start()

    def _proxy_reader(self):
        for line in self.proxy.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.conns.append(rec)

    def proxy_mode(self, mode):
        try:
            self.proxy.stdin.write(("mode %s\n" % mode).encode())
            self.proxy.stdin.flush()
        except (OSError, ValueError):
            pass

    # -- messages -------------------------------------------------------------

    def make_pool(self):
        words = ("list mail soak chaos sendmail mailman lmtp runner queue "
                 "message delivery retry the a of and to in is for on").split()
        rng = random.Random(self.args.seed + 1 if self.args.seed is not None else None)
        lines = []
        for k in range(12000):
            r = rng.random()
            if r < 0.02:
                line = "." + " ".join(rng.choices(words, k=rng.randrange(0, 8)))
            elif r < 0.03:
                line = "From " + " ".join(rng.choices(words, k=rng.randrange(1, 8)))
            elif r < 0.05:
                line = ""
            else:
                line = " ".join(rng.choices(words, k=rng.randrange(1, 25)))
            lines.append(line.encode() + b"\n")
        self.pool = b"".join(lines)
        self.pool_starts = [0]
        for line in lines:
            self.pool_starts.append(self.pool_starts[-1] + len(line))

    @staticmethod
    def recipients(rng):
        k = rng.choices((1, 2, 3), weights=(65, 20, 15))[0]
        out = []
        for name in rng.sample(LISTS, k):
            kind = rng.choices(("", "request", "bounces"), weights=(86, 7, 7))[0]
            out.append("%s%s@lists.example.org" % (name, "-" + kind if kind else ""))
        return out

    def message(self, i):
        rng = random.Random("%s-%d" % (self.args.seed, i))
        size = int(math.exp(rng.uniform(math.log(1024), math.log(300 * 1024))))
        rcpts = self.recipients(rng)
        msgid = "<soak.%s.%d@example.org>" % (self.run_id, i)
        want = max(200, size - 400)
        start = rng.randrange(0, len(self.pool_starts) - 1)
        body = b""
        while len(body) < want:          # wrap around the pool if needed
            end = bisect.bisect_left(self.pool_starts, self.pool_starts[start] + want - len(body))
            end = min(end, len(self.pool_starts) - 1)
            body += self.pool[self.pool_starts[start]:self.pool_starts[end]]
            start = 0
        digest = hashlib.sha256(body).hexdigest()[:32]
        head = ("From: Soak <%s>\nTo: %s\nSubject: soak %d\nMessage-ID: %s\n"
                "Date: %s\nX-Soak-Digest: %s\n\n"
                % (SENDER, ", ".join(rcpts), i, msgid,
                   time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
                   digest)).encode()
        return {"msgid": msgid, "rcpts": rcpts, "size": len(head) + len(body),
                "digest": digest}, head + body

    def submit(self, i):
        if self.args.rate > 0:      # an even pace, so that chaos meets them all
            delay = self.t_sub0 + i / self.args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if self.stop_all.is_set():
            return
        info, data = self.message(i)
        # -odi: Sendmail's exit status is the delivery's (0 also when it
        # was deferred, 67 when it bounced...): whether Sendmail took the
        # message is decided from its log (from=... msgid=) in the report
        try:
            proc = self.site.sendmail.submit(SENDER, info["rcpts"], data, timeout=600)
            info["rc"] = proc.returncode
            info["stderr"] = proc.stderr.decode(errors="replace")[-300:]
        except subprocess.TimeoutExpired:
            info["rc"], info["stderr"] = None, "sendmail -odi: timeout"
        with self.lock:
            self.submitted[i] = info

    # -- chaos ----------------------------------------------------------------

    def event(self, what, detail=""):
        with self.lock:
            self.events.append((time.time(), what, detail))

    def restart_runner(self):
        for attempt in range(10):
            try:
                self.site.mailman.start()
                return True
            except RuntimeError as exc:
                self.event("runner-restart-failed", str(exc)[-200:])
                time.sleep(1)
        return False

    def chaos_driver(self):
        rng = random.Random(self.chaos_seed)
        while not self.stop_chaos.wait(rng.expovariate(1 / self.args.chaos_gap)):
            if rng.random() < 0.3:
                proc = self.site.mailman.proc
                if proc is None or proc.poll() is not None:
                    self.restart_runner()
                    continue
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                self.event("runner-kill", "pid %d" % proc.pid)
                self.stop_chaos.wait(rng.uniform(0.1, 2.5))
                if self.restart_runner():
                    self.event("runner-up", "pid %d" % self.site.mailman.proc.pid)
            else:
                mode = rng.choice(PROXY_MODES)
                length = rng.uniform(0.2, 1.5)
                self.proxy_mode(mode)
                self.event("proxy-" + mode, "%.1fs" % length)
                self.stop_chaos.wait(length)
                self.proxy_mode("normal")
                self.event("proxy-normal")
        self.proxy_mode("normal")
        proc = self.site.mailman.proc
        if proc is None or proc.poll() is not None:
            self.restart_runner()

    def killer(self):
        """SIGKILL some mm-handler processes of the namespace, at random
        moments of their life."""
        rng = random.Random(self.kill_seed)
        needle = str(self.handler).encode()
        seen = {}           # pid -> (first seen, starttime or None = not ours)
        pending = []        # (due, pid, starttime, seen at)
        while not self.stop_chaos.is_set():
            now = time.monotonic()
            listing = set()
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                pid = int(name)
                listing.add(pid)
                known = seen.get(pid)
                # re-read young processes: a fork shows Sendmail's command
                # line until the exec
                if known is not None and (known[1] is not None or now - known[0] > 0.5):
                    continue
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        cmdline = f.read()
                except OSError:
                    continue
                # the kernel runs the script as: PYTHON HANDLER -C CFG ...
                if cmdline.split(b"\0")[1:2] == [needle] \
                        and netns_inode(pid) == self.ns_ino:
                    start, _ = proc_start(pid)
                    seen[pid] = (now, start)
                    self.handlers_seen += 1
                    if rng.random() < self.args.kill_prob:
                        pending.append((now + rng.uniform(0, 0.08), pid, start, now))
                elif known is None:
                    seen[pid] = (now, None)
            for pid in list(seen):
                if pid not in listing:
                    del seen[pid]
            due = [p for p in pending if p[0] <= now]
            pending = [p for p in pending if p[0] > now]
            for _, pid, start, first in due:
                got, ppid = proc_start(pid)
                if got != start:
                    continue            # gone already (or the PID was reused)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                with self.lock:
                    self.kills.append({"t": time.time(), "pid": pid, "ppid": ppid,
                                       "age_ms": int((time.monotonic() - first) * 1000)})
            time.sleep(0.002)

    def queue_runner(self):
        while not self.stop_chaos.is_set():
            try:
                self.site.sendmail.run_queue(timeout=900)
            except subprocess.TimeoutExpired:
                pass
            self.stop_chaos.wait(1.0)

    # -- the run --------------------------------------------------------------

    def run(self):
        args = self.args
        self.t_start = time.monotonic()
        self.note("work directory %s, seed %s, run id %s"
                  % (self.work, args.seed, self.run_id))
        self.start()
        self.note("set up: Sendmail (kit), Mailman 3 LMTP runner, proxy :%d, lists %s"
                  % (PROXY_PORT, ", ".join(LISTS)))
        self.make_pool()
        t0 = time.monotonic()
        threads = [threading.Thread(target=f, daemon=True)
                   for f in (self.chaos_driver, self.killer, self.queue_runner)]
        for t in threads:
            t.start()
        done = 0
        self.t_sub0 = time.monotonic()
        with ThreadPoolExecutor(args.jobs) as pool:
            for _ in pool.map(self.submit, range(args.n)):
                done += 1
                if done % max(1, args.n // 10) == 0:
                    self.note("submitted %d/%d, Sendmail queue %d, chaos events %d, "
                              "mm-handler kills %d" % (
                                  done, args.n, len(self.site.sendmail.queue_ids()),
                                  len(self.events), len(self.kills)))
        t_submit = time.monotonic() - t0
        t1 = time.monotonic()
        self.stop_chaos.set()
        for t in threads:
            t.join(900)
        self.note("chaos stopped; draining Sendmail's queue (at most %ds)"
                  % args.drain_timeout)
        deadline = t1 + args.drain_timeout
        runs = 0
        while self.site.sendmail.queue_ids() and time.monotonic() < deadline:
            if not self.site.mailman.running:
                self.restart_runner()
            try:
                self.site.sendmail.run_queue(
                    timeout=max(10, int(deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
            runs += 1
            left = len(self.site.sendmail.queue_ids())
            if left:
                self.note("queue run %d: %d left" % (runs, left))
                time.sleep(1)
        t_drain = time.monotonic() - t1
        self.note("drained after %d queue runs, %.1fs" % (runs, t_drain))
        return self.report(t_submit, t_drain, runs, time.monotonic() - t0)

    # -- what came out ---------------------------------------------------------

    def mailman_copies(self):
        from tests.peers.mailman3 import read_queue_file
        copies = defaultdict(list)      # (msgid, listid, queue) -> [file info]
        corrupt, strays, unreadable = [], [], []
        for queue in ("in", "command", "bounces"):
            for path in self.site.mailman.queue_files(queue):
                try:
                    msg, data = read_queue_file(path)
                except Exception as exc:        # noqa: BLE001 - report it
                    unreadable.append((str(path), repr(exc)))
                    continue
                msgid = (msg["Message-ID"] or "").strip()
                key = (msgid, data.get("listid", "?"), queue)
                payload = msg.get_payload()
                if isinstance(payload, str):
                    body = payload.encode("ascii", "surrogateescape").replace(b"\r\n", b"\n")
                    ok = hashlib.sha256(body).hexdigest()[:32] == msg["X-Soak-Digest"]
                else:
                    ok = False
                if not ok:
                    corrupt.append((key, path.name))
                copies[key].append(path.name)
                if not msgid.startswith("<soak.%s." % self.run_id):
                    strays.append((key, path.name))
        leftovers = [q + "/" + p.name for q in ("in", "command", "bounces")
                     for p in self.site.mailman.queue_dir(q).glob("*")
                     if p.suffix != ".pck"]
        return copies, corrupt, strays, unreadable, leftovers

    @staticmethod
    def expected_key(msgid, rcpt):
        local = rcpt.split("@")[0]
        name, _, kind = local.partition("-")
        return (msgid, "%s.lists.example.org" % name, QUEUE_OF[kind])

    def sendmail_queue_left(self):
        """(msgid, recipient) pairs still in Sendmail's queue, and odd files."""
        left, odd = [], []
        qdir = self.site.sendmail.queue_dir
        for path in sorted(qdir.iterdir()):
            if path.name.startswith("qf"):
                text = path.read_text(errors="replace")
                m = re.search(r"^H\?\?Message-ID: (.*)$", text, re.M | re.I) \
                    or re.search(r"^H[^:]*Message-ID: (.*)$", text, re.M | re.I)
                msgid = m.group(1).strip() if m else "?"
                for rm in re.finditer(r"^R[^:]*:(.*)$", text, re.M):
                    left.append((msgid, rm.group(1).strip(), path.name[2:]))
            elif not path.name.startswith("df"):
                odd.append(path.name)
        return left, odd

    def report(self, t_submit, t_drain, runs, elapsed):
        copies, corrupt, strays, unreadable, mm_leftovers = self.mailman_copies()
        sm_left, sm_odd = self.sendmail_queue_left()
        timed = self.sink.timed()
        lines = [line for _, line in timed]
        (self.results / "syslog.txt").write_text(
            "".join("%.3f %s\n" % (t, l) for t, l in timed))
        with self.lock:
            conns = sorted(self.conns, key=lambda c: c["t0"])
            kills = list(self.kills)
            events = list(self.events)
        (self.results / "proxy-connections.jsonl").write_text(
            "".join(json.dumps(c) + "\n" for c in conns))
        (self.results / "kills.jsonl").write_text(
            "".join(json.dumps(k) + "\n" for k in kills))
        (self.results / "chaos.txt").write_text(
            "".join("%.3f %s %s\n" % e for e in events))
        (self.results / "submitted.jsonl").write_text(
            "".join(json.dumps(dict(i=i, **v)) + "\n"
                    for i, v in sorted(self.submitted.items())))

        # -- Sendmail's and mm-handler's log
        sm_timed = [(t, l) for t, l in timed if " sendmail[" in l]
        sm = [l for _, l in sm_timed]
        mmh = [l for l in lines if " mm-handler[" in l]
        qid_of = {}
        for l in sm:
            m = re.search(r"sendmail\[\d+\]: (\w+): from=.*msgid=(<[^>]*>)", l)
            if m:
                qid_of[m.group(2)] = m.group(1)
        stats = Counter()
        for l in sm:
            m = re.search(r"mailer=(\w+),.*stat=(\w+)", l)
            if m:
                stats["%s %s" % m.groups()] += 1
        dsn_lines = [l for l in sm if " DSN: " in l or "return to sender" in l
                     or "postmaster notify" in l]
        dsn5 = [l for l in sm if re.search(r"dsn=5\.", l)]
        captured = self.site.sendmail.captured()
        mmh_status = Counter()
        mmh_by_pid = defaultdict(list)
        for l in mmh:
            m = re.search(r"mm-handler\[(\d+)\]: (.*)", l)
            if not m:
                continue
            mmh_by_pid[int(m.group(1))].append(m.group(2))
            s = re.search(r"status=(\d+)", l)
            r = re.search(r"reason=(\"[^\"]*\"|\S+)", l)
            if s:
                reason = (r.group(1).strip('"') if r else "")
                reason = re.sub(r"127\.0\.0\.1:\d+", "LMTP", reason)
                reason = re.sub(r"\d+ ms|\d{4,}", "N", reason)[:80]
                mmh_status["status=%s %s" % (s.group(1), reason)] += 1

        evidence = []

        # -- what Sendmail took (logged from= with the Message-ID)
        for i, info in sorted(self.submitted.items()):
            if info["msgid"] not in qid_of:
                self.submit_failures.append((i, info["msgid"], info["rc"],
                                             info["stderr"]))
                del self.submitted[i]
        for i, msgid, rc, err in self.submit_failures:
            evidence.append("NOT SUBMITTED %s: sendmail exit %s: %s" % (msgid, rc, err))

        # -- matching
        expected = {}
        for i, info in self.submitted.items():
            for rcpt in info["rcpts"]:
                expected[self.expected_key(info["msgid"], rcpt)] = (i, rcpt)
        delivered = [k for k in expected if copies.get(k)]
        still_queued = {(m, r) for m, r, _ in sm_left}
        lost = [k for k in expected if not copies.get(k)
                and (k[0], expected[k][1]) not in still_queued
                and (k[0], "<%s>" % expected[k][1]) not in still_queued]
        waiting = [k for k in expected if not copies.get(k) and k not in lost]
        unexpected = [k for k in copies if k not in expected]
        dups = {k: v for k, v in copies.items() if k in expected and len(v) > 1}
        extra_copies = sum(len(v) - 1 for v in dups.values())

        # -- explain each duplicate
        kill_by_pid = {k["pid"]: k for k in kills}
        conns_by = defaultdict(list)
        for c in conns:
            for r in c["rcpts"]:
                conns_by[(c["msgid"], r)].append(c)
        runner_kills = [e[0] for e in events if e[1] == "runner-kill"]
        causes = Counter()
        dup_lines = []
        for key, files in sorted(dups.items()):
            i, rcpt = expected[key]
            # each copy -> the connection that carried it: Mailman names a
            # queue file after the time it wrote it, after the dot came
            cands = [c for c in conns_by.get((key[0], rcpt), []) if c.get("t_dot")]
            why, counted = [], []
            for name in files:
                try:
                    ft = float(name.split("+", 1)[0])
                except ValueError:
                    ft = None
                before = [c for c in cands if ft is not None and c["t_dot"] <= ft + 0.05]
                c = max(before, key=lambda c: c["t_dot"]) if before else None
                if c is None:
                    causes["copy matched to no connection"] += 1
                    why.append("%s: matched to no proxy connection" % name)
                    continue
                reason = self.classify(c, kill_by_pid, runner_kills)
                if reason is None:
                    counted.append(c)   # the attempt Sendmail counted as delivered
                    continue
                causes[reason] += 1
                mlog = [m for m in mmh_by_pid.get(c["pid"], [])
                        if rcpt.split("@")[0] in m]
                status = re.search(r"status=\d+", mlog[0]) if mlog else None
                slog = self.sendmail_attempt(sm_timed, c, qid_of.get(key[0]), rcpt)
                why.append("%s [proxy conn %d; mm-handler[%s] %s; sendmail[%s]: %s]" % (
                    reason, c["id"], c["pid"],
                    ("logged " + status.group(0)) if status else "logged nothing",
                    c["ppid"], slog))
            if len(counted) != 1:
                causes["%d copies look delivered normally" % len(counted)] += 1
                why.append("%d attempts look normally delivered: conns %s" % (
                    len(counted), [c["id"] for c in counted]))
            dup_lines.append("  %s -> %s: %d copies (qid %s): %s" % (
                key[0], rcpt, len(files), qid_of.get(key[0], "?"), "; ".join(why)))

        # -- lost / bounced evidence
        for key in lost:
            i, rcpt = expected[key]
            qid = qid_of.get(key[0])
            evidence.append("LOST %s -> %s (qid %s)" % (key[0], rcpt, qid))
            evidence += ["    " + l for l in sm if qid and qid in l]
            for c in conns_by.get((key[0], rcpt), []):
                evidence.append("    proxy conn %d pid %s: %s / %s / %s" % (
                    c["id"], c["pid"], c["mode"], c["end"] or c["stage"],
                    c["dot_replies"]))
                evidence += ["    mm-handler[%s]: %s" % (c["pid"], m)
                             for m in mmh_by_pid.get(c["pid"], [])]
        for l in dsn_lines + dsn5:
            evidence.append("BOUNCE " + l)
        for c in captured:
            evidence.append("CAPTURED DSN to %s: %s" % (
                c.recipient, " | ".join(l for l in c.text.splitlines()
                                        if l.startswith(("Subject:", "Status:",
                                                         "Diagnostic-Code:",
                                                         "Final-Recipient:")))))
        for key, name in corrupt:
            evidence.append("CORRUPT %s %s" % (key, name))
        for key in unexpected:
            evidence.append("UNEXPECTED %s %s" % (key, copies[key]))
        for name in mm_leftovers:
            evidence.append("MAILMAN QUEUE LEFTOVER (not a .pck) %s" % name)
        for name in sm_odd:
            evidence.append("SENDMAIL QUEUE ODD FILE %s" % name)
        for path, err in unreadable:
            evidence.append("UNREADABLE %s %s" % (path, err))
        (self.results / "evidence.txt").write_text("\n".join(evidence + dup_lines) + "\n")

        # -- the figures
        a = self.args
        modes = Counter(c["mode"] for c in conns)
        ends = Counter(re.sub(r"\d+ bytes|\d+ of \d+", "N", c["end"] or c["stage"])
                       for c in conns
                       if c["mode"] != "normal" or not c["relayed"])
        kinds = Counter(e[1] for e in events)
        n_rcpt = len(expected)
        out = []
        out.append("=" * 72)
        out.append("mm-handler chaos soak: %s" % self.wheel)
        out.append("  checkout %s" % self.commit)
        out.append("  seed %s, run id %s, %d submit jobs, kill probability %.3f"
                   % (a.seed, self.run_id, a.jobs, a.kill_prob))
        sizes = [v["size"] for v in self.submitted.values()] or [0]
        out.append("messages submitted    %d of %d (%d submit failures), "
                   "%d recipients (%d with 2+ lists)"
                   % (len(self.submitted), a.n, len(self.submit_failures), n_rcpt,
                      sum(len(v["rcpts"]) > 1 for v in self.submitted.values())))
        out.append("  sizes               %.1f KB .. %.1f KB, median %.1f KB, total %.1f MB"
                   % (min(sizes) / 1024, max(sizes) / 1024,
                      sorted(sizes)[len(sizes) // 2] / 1024, sum(sizes) / 2 ** 20))
        out.append("delivered at least once %d of %d (message, list) pairs"
                   % (len(delivered), n_rcpt))
        out.append("LOST                  %d" % len(lost))
        out.append("still in Sendmail's queue after the drain: %d recipients%s"
                   % (len(waiting), (" (gave up after %ds)" % a.drain_timeout)
                      if waiting else ""))
        out.append("duplicates            %d pairs with more than one copy, %d extra copies"
                   % (len(dups), extra_copies))
        for cause, n in causes.most_common():
            out.append("  %4d  %s" % (n, cause))
        out.append("BOUNCED               %d (DSNs captured: %d; Sendmail log: "
                   "%d DSN lines, %d dsn=5.x.x)" % (
                       max(len(captured), len(dsn_lines), len(dsn5)), len(captured),
                       len(dsn_lines), len(dsn5)))
        out.append("corrupt bodies        %d; copies not submitted %d; unreadable %d; "
                   "Mailman non-.pck files %d; Sendmail odd queue files %d"
                   % (len(corrupt), len(unexpected), len(unreadable),
                      len(mm_leftovers), len(sm_odd)))
        out.append("Mailman queues        %s" % self.site.mailman.queued())
        out.append("chaos                 runner SIGKILLs %d; proxy windows %s"
                   % (kinds["runner-kill"], ", ".join(
                       "%s %d" % (m, kinds["proxy-" + m]) for m in PROXY_MODES)))
        out.append("                      mm-handler SIGKILLs %d of %d runs seen; proxy "
                   "connections %d (%s)" % (len(kills), self.handlers_seen, len(conns),
                                ", ".join("%s %d" % kv for kv in sorted(modes.items()))))
        conn_of_pid = {c["pid"]: c for c in conns if c["pid"]}
        kill_stages = Counter()
        for k in kills:
            c = conn_of_pid.get(k["pid"])
            kill_stages["before connecting" if c is None else
                        "after the dot" if c["stage"] in ("dot-forwarded", "upstream-replied",
                                                         "reply-relayed")
                        else "at " + c["stage"]] += 1
        out.append("  mm-handler SIGKILLs by LMTP stage (proxy's view): %s" % ", ".join(
            "%s %d" % kv for kv in kill_stages.most_common()))
        out.append("  connections that did not end with a relayed reply:")
        for end, n in ends.most_common(14):
            out.append("  %5d  %s" % (n, end))
        out.append("Sendmail deliveries   %s" % ", ".join(
            "%s %d" % kv for kv in sorted(stats.items())))
        out.append("mm-handler syslog     %d lines:" % len(mmh))
        for st, n in mmh_status.most_common(10):
            out.append("  %5d  %s" % (n, st))
        out.append("elapsed               %.1f s (submission under chaos %.1f s; drain "
                   "%.1f s: the in-chaos queue runner's last run + %d more queue runs)"
                   % (elapsed, t_submit, t_drain, runs))
        out.append("=" * 72)
        if dup_lines:
            out.append("duplicates, one line each (cause [proxy connection, mm-handler's "
                       "syslog, Sendmail's stat for that attempt]):")
            out += dup_lines
        if evidence:
            out.append("evidence (lost / bounced / corrupt / unexpected):")
            out += evidence[:200]
        out.append("results: %s" % self.results)
        text = "\n".join(out)
        (self.results / "report.txt").write_text(text + "\n")
        print(text, flush=True)
        self.failed = bool(lost or dsn_lines or dsn5 or captured or corrupt
                           or unexpected or unreadable)
        return 1 if self.failed else 0

    @staticmethod
    def classify(c, kill_by_pid, runner_kills):
        """Why an attempt whose message Mailman stored did not count as
        delivered for Sendmail; None if it (probably) did."""
        got250 = any(r.startswith("250") for r in c["dot_replies"])
        killed = kill_by_pid.get(c["pid"]) if c["pid"] else None
        if c["drop"] == "after-reply" and got250:
            return "proxy dropped the connection after Mailman's 250 (mm-handler: 75)"
        if c["drop"] == "after-dot":
            return "proxy dropped the connection right after the dot; Mailman stored it anyway"
        if c["end"].startswith("upstream closed after the dot") or (
                c["stage"] == "dot-forwarded" and not got250):
            near = [t for t in runner_kills if c["t0"] - 1 <= t <= c.get("t1", t) + 1]
            return ("runner SIGKILLed after queueing, before its 250"
                    + ("" if near else " (no runner kill near: check)"))
        if killed and c["relayed"] and killed["t"] >= c.get("t_reply", 0):
            return "mm-handler SIGKILLed after it got Mailman's 250, before exiting 0"
        if killed and (c.get("t_dot") and killed["t"] >= c["t_dot"] or c["stage"] in (
                "dot-forwarded", "upstream-replied", "reply-relayed")):
            # (the proxy may read the dot after the kill: it was in the
            # socket buffer already)
            return "mm-handler SIGKILLed after sending the dot, while Mailman queued it"
        if killed:
            return "mm-handler SIGKILLed (stage %s), Mailman had stored it" % c["stage"]
        return None

    def sendmail_attempt(self, sm_timed, c, qid, rcpt):
        """What Sendmail logged for the attempt that ran this connection:
        the lines of the Sendmail process that ran mm-handler (its parent),
        for this queue id, from the connection on, up to the to= line."""
        if not qid or not c["ppid"]:
            return "?"
        tag = "sendmail[%d]: %s: " % (c["ppid"], qid)
        said = []
        for t, l in sm_timed:
            if t < c["t0"] - 0.05 or tag not in l:
                continue
            text = l.split(tag, 1)[1].replace(
                "mailman mailer (%s) exited with " % self.handler, "mm-handler exited ")
            if text.startswith("from="):
                continue
            if text.startswith("to="):
                if rcpt in text:
                    m = re.search(r"stat=(.*)", text)
                    said.append(m.group(1) if m else text)
                    break
                continue
            said.append(text)
        return " / ".join(said)[:160] or "no stat line"

    # -- clean-up --------------------------------------------------------------

    def cleanup(self):
        if self.cleaned:
            return
        self.cleaned = True
        self.stop_chaos.set()
        self.stop_all.set()
        if self.proxy is not None:
            try:
                self.proxy.stdin.close()
            except OSError:
                pass
        survivors = []
        if self.ns_ino is not None:
            for _ in range(5):
                pids = namespace_pids(self.ns_ino, exclude=(self.holder,))
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.3)
        for proc in (self.proxy, self.site.mailman.proc
                     if self.site and self.site.mailman else None):
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        if self.site is not None:
            if self.site.mailman is not None:
                self.site.mailman.proc = None
            try:
                self.site.sendmail.stop()
            except Exception as exc:        # noqa: BLE001
                print("namespace stop: %r" % exc, file=sys.stderr)
        if self.sink is not None:
            self.sink.close()
        if self.ns_ino is not None:
            time.sleep(0.2)
            survivors = namespace_pids(self.ns_ino)
            for pid in survivors:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        print("clean-up: %s" % ("nothing left running in the namespace"
                                if not survivors else
                                "SIGKILLed late survivors %s" % survivors), flush=True)
        keep_all = self.args.keep or getattr(self, "failed", False)
        if not keep_all:
            for child in self.work.iterdir():
                if child.name != "results":
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() \
                        else child.unlink()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--proxy-child"]:
        listen, upstream, handler, seed = argv[1:5]
        return proxy_main(int(listen), int(upstream), handler, int(seed))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="messages (default 2000)")
    parser.add_argument("--jobs", type=int, default=3, help="concurrent submitters")
    parser.add_argument("--rate", type=float, default=10,
                        help="submissions per second at most (0: as fast as --jobs go)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kill-prob", type=float, default=0.04,
                        help="share of mm-handler runs SIGKILLed")
    parser.add_argument("--chaos-gap", type=float, default=1.5,
                        help="mean seconds between chaos events")
    parser.add_argument("--drain-timeout", type=int, default=900)
    parser.add_argument("--keep", action="store_true", help="keep the whole work directory")
    parser.add_argument("--wheelhouse", help="install mm-handler from this directory "
                        "instead of the checkout's wheelhouse/")
    parser.add_argument("--rebuild", action="store_true",
                        help="make .venv/.ready first (under %s)" % BUILD_LOCK)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (private namespaces, Sendmail's queue)")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    sys.path.insert(0, str(ROOT))
    soak = Soak(args)

    def on_signal(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        return soak.run()
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # a second Ctrl-C waits
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
