"""Messages per second into a real Mailman 3 LMTP runner: sequential and 8 at a time.

Needs `make test`'s venvs (.venv-mailman holds mailman==3.3.10).  Every
message is checked into Mailman's queue afterwards, so a fast wrong answer
cannot pass for throughput.
"""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import ROOT, install, message_10k, workdir, write_config

sys.path.insert(0, str(ROOT))
from tests.peers.mailman3 import Mailman3Runner, free_port  # noqa: E402

COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 500


def deliver(handler, config, message):
    proc = subprocess.run([handler, "-C", str(config), "-r", "alice@example.org",
                           "lists.example.test", "bench"], input=message,
                          capture_output=True, env={}, cwd="/")
    return proc.returncode


def main():
    where = workdir()
    handler = str(install(where))
    runner = Mailman3Runner(ROOT / ".venv-mailman", where / "mailman", free_port())
    runner.create_list("bench@lists.example.test")
    runner.start()
    try:
        config = write_config(where, "mm3.cfg", "[mm-handler]\nbackend = mailman3\n"
                              "syslog_socket = %s/nolog\n[mailman3]\nlmtp = %s\n"
                              "var_dir = %s\n" % (where, runner.endpoint, runner.var_dir))
        message = message_10k(where / "msg").read_bytes()
        print("throughput: %d messages of 10 KB into Mailman 3.3.10's LMTP runner" % COUNT)
        for workers in (1, 8):
            runner.clear_queues()
            start = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                codes = list(pool.map(lambda _: deliver(handler, config, message),
                                      range(COUNT)))
            seconds = time.perf_counter() - start
            queued = len(runner.queue_files("in"))
            ok = codes.count(0) == COUNT and queued == COUNT
            print("  %d at a time: %.2f s, %.0f msg/s, %d queued%s"
                  % (workers, seconds, COUNT / seconds, queued,
                     "" if ok else "  (MISMATCH: exits %r)" % sorted(set(codes))))
    finally:
        runner.stop()


if __name__ == "__main__":
    main()
