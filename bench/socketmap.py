"""`mm-handler socketmap`: speed and memory, alone and through real Sendmail.

Server alone (the installed command, a Mailman 2 lists directory of
--lists lists, on a unix socket; clients are separate processes speaking
Sendmail's netstrings, one request outstanding per connection as Sendmail
does; the keys are the sequences Sendmail asks for a mix of list
addresses, +detail addresses and unknown ones):

  one connection      lookup latency p50/p99/p99.9 (goal: p99 <= 0.2 ms)
                      and the server's CPU time per lookup
  50 connections      lookups per second in all (goal: >= 20,000/s)
  1,000,000 lookups   the server's RSS along the way (goal: within 2 MiB)

Through real Sendmail 8.17 (the kit's mailman.mc in a private namespace,
`sendmail -bs`: EHLO, MAIL, 20 RCPT, QUIT), interleaved rounds:

  maps   FEATURE(`virtusertable') on the hash maps `mm-handler maps` wrote
  live   the kit's switch on: the socket map, this server

and the ratio of the medians (goal: live <= 1.2x maps).  All in one run:

    .venv/bin/python bench/socketmap.py [--lists 500] [--rounds 200] [--quick]
"""

import argparse
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Process, Queue
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import SYSTEM_PYTHON, WHEELHOUSE, render_config  # noqa: E402

DOMAIN = "lists.example.org"        # the kit's own name (mailman.mc)


def install_handler(root):
    venv = root / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                    "--disable-pip-version-check", "--no-index", "--find-links",
                    str(WHEELHOUSE), "mm-handler"], check=True)
    return venv / "bin" / "mm-handler"


def make_lists(lists_dir, n):
    names = ["test"] + ["list%04d" % i for i in range(n - 1)]
    for name in names:
        (lists_dir / name).mkdir(parents=True)
        (lists_dir / name / "config.pck").write_bytes(b"")
    lists_dir.chmod(0o755)
    return names


def sendmail_keys(local):
    """The keys Sendmail asks, in order, for LOCAL@DOMAIN (the kit's rules,
    as FEATURE(virtusertable)), up to the first that has a value here."""
    user, plus, detail = local.partition("+")
    if not plus:
        return ["%s@%s" % (local, DOMAIN)] + (
            [] if known(user) else ["@" + DOMAIN])
    keys = ["%s@%s" % (local, DOMAIN), "%s++@%s" % (user, DOMAIN),
            "%s+*@%s" % (user, DOMAIN), "%s@%s" % (user, DOMAIN)]
    return keys if known(user) else keys + ["++@" + DOMAIN, "+*@" + DOMAIN,
                                            "@" + DOMAIN]


def known(user):
    base = user
    for suffix in ("-request", "-bounces", "-owner", "-confirm"):
        if base.endswith(suffix):
            base = base[:-len(suffix)]
    return base == "test" or base.startswith("list") or user.startswith("owner-")


def workload(names, n=20000):
    """Sendmail's key sequences for N addresses: list posts, -request,
    owner-, VERP bounces (a new detail each) and unknown names (each new):
    hot keys repeat (@domain, popular lists) as in real traffic, VERP and
    unknown ones do not."""
    locals_ = []
    for i in range(n):
        name = names[i % len(names)]
        locals_.append((name, name + "-request", "owner-" + name,
                        name + "-bounces+bob%d=example.net" % i,
                        "nolist%d" % i)[i % 5])
    keys = []
    for local in locals_:
        keys += sendmail_keys(local)
    return [b"%d:mm_handler %s," % (11 + len(k), k.encode()) for k in keys]


def recv_reply(sock, buf):
    """One netstring reply from `sock` (blocking); (payload, rest)."""
    while True:
        size, colon, rest = buf.partition(b":")
        if colon and len(rest) > int(size):
            n = int(size)
            return rest[:n], rest[n + 1:]
        data = sock.recv(65536)
        if not data:
            raise EOFError
        buf += data


def one_connection(path, requests, n):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    buf = b""
    times = []
    clock = time.perf_counter_ns
    for i in range(n):
        request = requests[i % len(requests)]
        t0 = clock()
        sock.sendall(request)
        reply, buf = recv_reply(sock, buf)
        times.append(clock() - t0)
    sock.close()
    return times


def many_connections(path, requests, conns, seconds, total, out):
    """`conns` connections, one request outstanding on each, until
    `seconds` pass or `total` lookups are done; puts the count on `out`."""
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(conns):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setblocking(False)
        state = {"buf": b"", "i": i * 97}
        sel.register(s, selectors.EVENT_READ, state)
        socks.append((s, state))
    done = 0
    n = len(requests)
    for s, state in socks:
        s.send(requests[state["i"] % n])
    deadline = time.monotonic() + seconds
    while done < total and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            s, state = key.fileobj, key.data
            data = s.recv(65536)
            if not data:
                raise EOFError
            buf = state["buf"] + data
            while True:
                size, colon, rest = buf.partition(b":")
                if not colon or len(rest) <= int(size):
                    break
                buf = rest[int(size) + 1:]
                done += 1
                state["i"] += 1
                s.send(requests[state["i"] % n])
            state["buf"] = buf
    for s, _ in socks:
        s.close()
    out.put(done)


def run_clients(path, requests, conns, procs, seconds, total):
    out = Queue()
    workers = [Process(target=many_connections, args=(
        path, requests, conns // procs, seconds, total // procs, out))
        for _ in range(procs)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    counts = [out.get() for _ in workers]
    for w in workers:
        w.join()
    return sum(counts), time.perf_counter() - start


def rss_kib(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def cpu_seconds(pid):
    fields = Path("/proc/%d/stat" % pid).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(handler, config, path):
    proc = subprocess.Popen([str(handler), "socketmap", "-C", str(config)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(500):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            s.close()
            return proc
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("the server did not start")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)


def server_alone(handler, work, names, args):
    path = work / "run" / "socketmap"
    path.parent.mkdir()
    config = work / "alone.cfg"
    config.write_text(render_config({
        "mm-handler": {"backend": "mailman2", "syslog_socket": str(work / "nolog")},
        "mailman2": {"lists_dir": str(work / "lists")},
        "maps": {"domains": DOMAIN},
        "socketmap": {"listen": "unix:%s" % path}}))
    requests = workload(names)
    proc = start_server(handler, config, path)
    try:
        one_connection(str(path), requests, 5000)           # warm-up
        n = 20000 if args.quick else 100000
        every = set(range(os.cpu_count()))
        for pinned in (False, True):
            # the client and the server on any CPU, or both on CPU 0: a VM
            # may take tens of microseconds to wake a process on another CPU
            os.sched_setaffinity(proc.pid, {0} if pinned else every)
            os.sched_setaffinity(0, {0} if pinned else every)
            cpu0 = cpu_seconds(proc.pid)
            times = sorted(one_connection(str(path), requests, n))
            cpu = (cpu_seconds(proc.pid) - cpu0) / n
            pct = lambda q: times[min(int(q * len(times)), len(times) - 1)] / 1e6
            print("server alone, 1 connection%s: %d lookups, %.0f/s; latency p50 "
                  "%.3f ms, p99 %.3f ms, p99.9 %.3f ms (goal p99 <= 0.2 ms); server "
                  "CPU %.1f us a lookup" % (
                      " (client and server on one CPU)" if pinned else "", n,
                      n / (sum(times) / 1e9), pct(0.5), pct(0.99), pct(0.999),
                      cpu * 1e6))
        os.sched_setaffinity(proc.pid, every)
        os.sched_setaffinity(0, every)
        seconds = 5 if args.quick else 10
        done, took = run_clients(str(path), requests, 50, 2, seconds, 10 ** 9)
        print("server alone, 50 connections (2 client processes): %d lookups in "
              "%.1fs: %.0f/s (goal >= 20,000/s)" % (done, took, done / took))
        total = 200000 if args.quick else 1000000
        samples = [rss_kib(proc.pid)]
        step = total // 4
        for _ in range(4):
            run_clients(str(path), requests, 50, 2, 600, step)
            samples.append(rss_kib(proc.pid))
        print("server RSS over %d lookups (KiB, every %d): %s; growth after the "
              "first quarter %+d KiB (goal within 2048)" % (
                  total, step, " ".join(map(str, samples)),
                  max(samples[1:]) - min(samples[1:])))
    finally:
        stop(proc)


# -- through real Sendmail -----------------------------------------------------------

RCPTS = (["test", "test-request", "test-bounces+bob=example.net", "owner-test",
          "list0001", "list0002-request", "list0003-bounces+x=y.example",
          "list0004-owner", "list0005", "Test-Confirm+0123abcd"] +
         ["nolist%d" % i for i in range(6)] + ["test-foo", "postmaster", "abuse",
                                                 "list0006-unsubscribe"])


def session(sendmail, cpu=None):
    """`sendmail -bs`, one command at a time (Sendmail refuses commands sent
    ahead): EHLO, MAIL, 20 RCPT, QUIT; (seconds, the RCPT codes).  With
    `cpu`, Sendmail runs on that CPU only."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    start = time.perf_counter()
    proc = sendmail.ns.popen(pin + ["/usr/libexec/sendmail/sendmail", "-bs"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)

    def reply():
        while True:
            line = proc.stdout.readline()
            if not line:
                raise EOFError
            if line[3:4] != b"-":
                return int(line[:3])

    def say(text):
        proc.stdin.write(text.encode() + b"\r\n")
        proc.stdin.flush()
        return reply()

    reply()
    say("EHLO client.example.org")
    say("MAIL FROM:<alice@example.org>")
    codes = [say("RCPT TO:<%s@%s>" % (r, DOMAIN)) for r in RCPTS]
    say("QUIT")
    proc.stdin.close()
    proc.wait()
    proc.stdout.close()
    return time.perf_counter() - start, codes


def through_sendmail(handler, work, args):
    import pwd
    from tests.peers.sendmail import MAKEMAP, SendmailHost
    maps_dir = work / "maps"
    maps_dir.mkdir()
    config = work / "mm-handler.cfg"
    config.write_text(render_config({
        "mm-handler": {"backend": "mailman2", "syslog_socket": "/dev/log"},
        "mailman2": {"lists_dir": str(work / "lists")},
        "maps": {"domains": DOMAIN, "output_dir": str(maps_dir),
                 "makemap": MAKEMAP},
        "socketmap": {"listen": "unix:/run/sendmail/mm-handler/socketmap"}}))
    config.chmod(0o644)
    host = SendmailHost(work / "sendmail", handler, config, maps_dir=maps_dir)
    host.start()
    try:
        # maps: written by `mm-handler maps`, read through the kit's .mc
        run = host.ns.run([str(handler), "maps", "-C", str(config), "--makemap"])
        assert run.returncode == 0, run
        maps_cf = host.build_cf()
        host.etc_mail.joinpath("sendmail.cf.maps").write_text(maps_cf)
        live_mc = host.kit_mc().replace("\nMAILER(`mailman')dnl\n", (
            "\ndefine(`MAILMAN_SOCKETMAP', `unix:/run/sendmail/mm-handler/"
            "socketmap')dnl\nMAILER(`mailman')dnl\n"))
        live_cf = host.build_cf(live_mc)
        host.etc_mail.joinpath("sendmail.cf.live").write_text(live_cf)
        run_dir = host.root / "run-sendmail" / "mm-handler"
        run_dir.mkdir()
        lst = pwd.getpwnam("list")
        os.chown(run_dir, lst.pw_uid, lst.pw_gid)
        server = host.ns.popen(["setpriv", "--reuid=list", "--regid=list",
                                "--clear-groups", str(handler), "socketmap", "-C",
                                str(config)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(500):
            if (run_dir / "socketmap").exists():
                break
            time.sleep(0.01)
        try:
            every = set(range(os.cpu_count()))
            times = {}
            codes = {}
            for i in range(args.rounds + 2):
                for cpu in (None, 0):
                    # the server on every CPU, or on Sendmail's one
                    os.sched_setaffinity(server.pid, every if cpu is None else {0})
                    for kind in (("maps", "live") if i % 2 else ("live", "maps")):
                        shutil.copy(host.etc_mail / ("sendmail.cf." + kind),
                                    host.etc_mail / "sendmail.cf")
                        took, got = session(host, cpu)
                        if i >= 2:              # two rounds of warm-up
                            times.setdefault((kind, cpu), []).append(took)
                        codes.setdefault(kind, got)
            assert codes["maps"] == codes["live"], codes
            assert codes["live"].count(250) == 13 and codes["live"].count(550) == 7, \
                codes
            for cpu, how in ((None, "any CPU"), (0, "Sendmail and the server on one "
                                                   "CPU")):
                maps_t, live_t = times["maps", cpu], times["live", cpu]
                med_m, med_l = statistics.median(maps_t), statistics.median(live_t)
                paired = statistics.median(l / m for l, m in zip(live_t, maps_t))
                print("through Sendmail (%s), an SMTP session with %d RCPTs (%d "
                      "rounds, interleaved): maps %.1f ms, live %.1f ms (medians): "
                      "ratio %.2f; median of the rounds' ratios %.2f (goal <= 1.2)"
                      % (how, len(RCPTS), args.rounds, med_m * 1e3, med_l * 1e3,
                         med_l / med_m, paired))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(20)
    finally:
        host.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lists", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--quick", action="store_true",
                        help="fewer lookups (a smoke run, not the figures)")
    parser.add_argument("--no-sendmail", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    work = Path(tempfile.mkdtemp(prefix="mmh-bench-socketmap-", dir="/tmp"))
    work.chmod(0o755)
    try:
        handler = install_handler(work)
        names = make_lists(work / "lists", args.lists)
        print("%d lists, %d CPUs, %s" % (len(names), os.cpu_count(),
                                         sys.version.split()[0]))
        if not os.environ.get("BENCH_SKIP_ALONE"):
            server_alone(handler, work, names, args)
        if not args.no_sendmail:
            through_sendmail(handler, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
