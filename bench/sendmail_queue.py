"""Sendmail queue run: mm-handler against Sendmail's own LMTP mailer.

N messages (default 200) are queued in a real Sendmail 8.17 (``-odq``, over
one ``sendmail -bs`` session) and delivered by one foreground queue run
(``sendmail -qf``) into a real Mailman 3.3.10 LMTP runner, twice per round:

  mm-handler   the kit's mailman mailer (sendmail/mailman.m4, F=rDFMhlqSu):
               one mm-handler process per message, LMTP to the runner;
  native       Sendmail's built-in LMTP client, P=[IPC], F=lsDFMnqXzm,
               A=TCP $h 8024 (../shared/docs/sendmail-mailer-contract.md).

Both run in the same private namespace against the same runner and list;
every message is checked to have arrived (N files in Mailman's queue) and
Sendmail's queue to be empty.  Prints each run's time, the medians and the
ratio (goal: mm-handler at most 2x native).

    .venv/bin/python bench/sendmail_queue.py [-n 200] [--rounds 3]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import MAILMAN_VENV, SYSTEM_PYTHON, WHEELHOUSE  # noqa: E402
from tests.peers.sendmail import (LIST_DOMAIN, LMTP_PORT, SENDMAIL,  # noqa: E402
                                  Mailman3Site)

NATIVE_MAILER = """\
MAILER_DEFINITIONS
Mlmtp,	P=[IPC], F=lsDFMnqXzm, S=EnvFromSMTP/HdrFromSMTP, R=EnvToSMTP, E=\\r\\n,
		T=DNS/RFC822/SMTP, A=TCP $h {port}
"""

LIST = "bench"


def install_handler(root):
    """pip install mm-handler from the wheelhouse into a world-readable venv."""
    venv = root / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                    "--disable-pip-version-check", "--no-index", "--find-links",
                    str(WHEELHOUSE), "mm-handler"], check=True)
    return venv / "bin" / "mm-handler"


def message(i):
    return (("From: Bench <bench@example.org>\n"
             "To: %s@%s\n"
             "Subject: bench message %d\n"
             "Message-ID: <bench.%d@example.org>\n"
             "Date: Sun, 22 Nov 2026 02:44:03 +0000\n"
             "\n" % (LIST, LIST_DOMAIN, i, i)).encode()
            + b"A list message of a usual size.\n" * 60)


def queue_messages(sendmail, n):
    """Queue n messages over one `sendmail -odq -bs` session."""
    proc = sendmail.ns.popen([SENDMAIL, "-odq", "-bs"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def reply():
        while True:
            line = proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("sendmail -bs went away")
            if line[3:4] != "-":
                return line

    def say(text, want):
        proc.stdin.write(text.encode() + b"\r\n")
        proc.stdin.flush()
        line = reply()
        if not line.startswith(want):
            raise RuntimeError("%r -> %r" % (text[:60], line))

    try:
        reply()
        say("EHLO bench.example.org", "250")
        for i in range(n):
            say("MAIL FROM:<bench@example.org>", "250")
            say("RCPT TO:<%s@%s>" % (LIST, LIST_DOMAIN), "250")
            say("DATA", "354")
            proc.stdin.write(message(i).replace(b"\n", b"\r\n"))
            say(".", "250")
        say("QUIT", "221")
    finally:
        proc.stdin.close()
        proc.wait(60)
        proc.stdout.close()


def route(site, mailer):
    """Point the list domain at `mailer`: the kit's mailman, or native lmtp."""
    if mailer == "mailman":
        site.sendmail.install_mailertable()
    else:
        site.sendmail.install_mailertable(
            "%s\tlmtp:[127.0.0.1]\n" % LIST_DOMAIN)


def one_run(site, mailer, n):
    site.mailman.clear_queues()
    site.sendmail.clear_queue()
    route(site, mailer)
    queue_messages(site.sendmail, n)
    assert len(site.sendmail.queue_ids()) == n
    start = time.monotonic()
    run = site.sendmail.run_queue(timeout=1800)
    elapsed = time.monotonic() - start
    if run.returncode != 0:
        raise RuntimeError("sendmail -qf: %r" % run)
    left = site.sendmail.queue_ids()
    got = len(site.mailman.queue_files("in"))
    if left or got != n:
        raise RuntimeError("%s: %d left in Sendmail's queue, %d of %d in Mailman's"
                           "\n%s" % (mailer, len(left), got, n, site.sendmail.mailq()))
    return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="messages per run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of (mm-handler, native), alternating")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (private namespaces, Sendmail's queue)")
    work = Path(tempfile.mkdtemp(prefix="mmh-bench-sendmail-", dir="/tmp"))
    work.chmod(0o755)
    site = None
    try:
        handler = install_handler(work)
        site = Mailman3Site(work / "site", handler, MAILMAN_VENV, lists=(LIST,),
                            plugin=False)
        site.sendmail.extra_m4 = NATIVE_MAILER.format(port=LMTP_PORT)
        site.start()
        # no SMTP-time maps for either run: the same routing cost for both
        for path in site.maps_dir.glob("virtusertable*"):
            path.unlink()
        times = {"mm-handler": [], "native": []}
        for r in range(args.rounds):
            for name, mailer in (("mm-handler", "mailman"), ("native", "lmtp")):
                t = one_run(site, mailer, args.n)
                times[name].append(t)
                print("round %d  %-10s %4d messages  %7.2f s  %6.1f ms/message"
                      % (r + 1, name, args.n, t, 1000 * t / args.n), flush=True)
        mm = statistics.median(times["mm-handler"])
        native = statistics.median(times["native"])
        print("median: mm-handler %.2f s, native LMTP mailer %.2f s, ratio %.2fx "
              "(goal <= 2x)" % (mm, native, mm / native))
        return 0
    finally:
        if site is not None:
            site.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
