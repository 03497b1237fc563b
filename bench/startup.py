"""Median wall time per delivery of a 10 KB message, as ratios to the floor.

The floor is `python -I -S -c pass` on the interpreter the mailer runs on.
mm-handler is pip-installed into a fresh venv with this machine's own pip,
exactly as a user gets it, and run as Sendmail runs it (empty environment,
message on stdin).  The runs are interleaved so that machine noise hits
every case alike.  Goals: wrapper path <= 1.8x, LMTP path <= 2.2x.

    python startup.py [ROUNDS] [--baseline REV] [--python 3.9|PATH]

With --baseline, mm-handler as it was at git revision REV is installed
beside it and measured in the same interleaved rounds: before and after in
one run.  With --python, the mailer and the floor run on that interpreter
(a version number means pyenv's build of it); the wheelhouse must hold a
chardet wheel for it (`make test-pythons` puts one there).
"""

import glob
import statistics
import sys

from common import (SYSTEM_PYTHON, install_revision, message_10k, setup,
                    spawn_timed)

ARGS = sys.argv[1:]
BASELINE = ARGS[ARGS.index("--baseline") + 1] if "--baseline" in ARGS else None
ROUNDS = int(ARGS[0]) if ARGS and ARGS[0].isdigit() else 200


def interpreter():
    if "--python" not in ARGS:
        return SYSTEM_PYTHON
    wanted = ARGS[ARGS.index("--python") + 1]
    if wanted.startswith("/"):
        return wanted
    found = sorted(glob.glob("/root/.pyenv/versions/%s.*/bin/python3" % wanted))
    if not found:
        sys.exit("no CPython %s under /root/.pyenv/versions" % wanted)
    return found[-1]


def main():
    python = interpreter()
    where, handler, mm2, mm3, lmtp = setup(python)
    msg = message_10k(where / "msg")
    argv = ["-r", "alice@example.org", "lists.example.test", "bench"]
    cases = {
        "floor: python -I -S -c pass": [python, "-I", "-S", "-c", "pass"],
        "wrapper path": [handler, "-C", str(mm2)] + argv,
        "LMTP path": [handler, "-C", str(mm3)] + argv,
    }
    if BASELINE:
        old = str(install_revision(where, BASELINE, python))
        cases["wrapper path at " + BASELINE] = [old, "-C", str(mm2)] + argv
        cases["LMTP path at " + BASELINE] = [old, "-C", str(mm3)] + argv
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
    print("start-up bench: %d interleaved rounds, 10 KB message, %s on %s"
          % (ROUNDS, handler, python))
    for name, values in times.items():
        median = statistics.median(values)
        goal = goals.get(name.split(" at ")[0])
        verdict = "" if goal is None else "  goal <= %.1fx: %s" % (
            goal, "met" if median / floor <= goal else "MISSED")
        print("  %-30s median %6.2f ms  %5.2fx floor%s"
              % (name, median * 1000, median / floor, verdict))
    print("  LMTP sink took %d messages" % lmtp.delivered)
    lmtp.close()


if __name__ == "__main__":
    main()
