"""Median wall time per delivery of a 10 KB message, as ratios to the floor.

The floor is `python -I -S -c pass` on the interpreter the mailer runs on.
mm-handler is pip-installed into a fresh venv with this machine's own pip,
exactly as a user gets it, and run as Sendmail runs it (empty environment,
message on stdin).  The runs are interleaved so that machine noise hits
every case alike.  Goals: wrapper path <= 1.8x, LMTP path <= 2.2x.
"""

import statistics
import sys

from common import (SYSTEM_PYTHON, message_10k, setup, spawn_timed)

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 200


def main():
    where, handler, mm2, mm3, lmtp = setup()
    msg = message_10k(where / "msg")
    cases = {
        "floor: python -I -S -c pass": [SYSTEM_PYTHON, "-I", "-S", "-c", "pass"],
        "wrapper path": [handler, "-C", str(mm2), "-r", "alice@example.org",
                         "lists.example.test", "bench"],
        "LMTP path": [handler, "-C", str(mm3), "-r", "alice@example.org",
                      "lists.example.test", "bench"],
    }
    times = {name: [] for name in cases}
    for argv in cases.values():       # warm the page cache and the .pyc files
        spawn_timed(argv, msg)
    for _ in range(ROUNDS):
        for name, argv in cases.items():
            seconds, status, _ = spawn_timed(argv, msg)
            if status != 0:
                sys.exit("%s exited %d" % (name, status))
            times[name].append(seconds)
    floor = statistics.median(times["floor: python -I -S -c pass"])
    goals = {"wrapper path": 1.8, "LMTP path": 2.2}
    print("start-up bench: %d interleaved rounds, 10 KB message, %s"
          % (ROUNDS, handler))
    for name, values in times.items():
        median = statistics.median(values)
        goal = goals.get(name)
        verdict = "" if goal is None else "  goal <= %.1fx: %s" % (
            goal, "met" if median / floor <= goal else "MISSED")
        print("  %-30s median %6.2f ms  %5.2fx floor%s"
              % (name, median * 1000, median / floor, verdict))
    print("  LMTP sink took %d messages" % lmtp.delivered)
    lmtp.close()


if __name__ == "__main__":
    main()
