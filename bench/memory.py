"""Peak RSS of mm-handler delivering a 100 MB message on each path.

Measured with wait4()'s ru_maxrss of the mm-handler process itself (the
wrapper sink is a separate process).  Goal: <= 32 MiB on both paths.
"""

import sys

from common import (FROM_LINE, SYSTEM_PYTHON, setup, spawn_timed)

SIZE = int(sys.argv[1]) if len(sys.argv) > 1 else 100 * 1024 * 1024


def message(size):
    yield FROM_LINE + b"From: a@example.org\nSubject: big\n\n"
    line = b"y" * 999 + b"\n"
    block = line * 1024
    sent = 0
    while sent < size:
        yield block
        sent += len(block)


def main():
    where, handler, mm2, mm3, lmtp = setup()
    _, _, floor_rss = spawn_timed([SYSTEM_PYTHON, "-c", "pass"], "/dev/null")
    print("memory bench: %.0f MB message; floor `python -c pass` %.1f MiB"
          % (SIZE / 1e6, floor_rss / 1024))
    for name, cfg in (("wrapper path", mm2), ("LMTP path", mm3)):
        seconds, status, rss = spawn_timed(
            [handler, "-C", str(cfg), "-r", "alice@example.org",
             "lists.example.test", "bench"], stdin_bytes_gen=message(SIZE))
        print("  %-13s exit %d  %.2f s  peak RSS %.1f MiB  goal <= 32 MiB: %s"
              % (name, status, seconds, rss / 1024,
                 "met" if rss <= 32 * 1024 and status == 0 else "MISSED"))
    lmtp.close()


if __name__ == "__main__":
    main()
