"""Fuzz mm-handler with the hostile-input properties of tests/test_hostile.py.

    .venv/bin/python bench/fuzz.py [--examples N] [--workers W] [--batch B]

Runs the same hypothesis strategies and the same property checks as the test
(tests/test_hostile.py: documented exit codes only, no file outside the
configured directories opened or stat'ed, the wrapper argv, no CR/LF/NUL
in LMTP command lines or headers, byte-exact delivery, nothing lost), for
at least 100,000 examples by default, split over W worker processes and
fresh hypothesis runs of B examples each (distinct seeds), so that memory
stays flat.  Prints the number of examples run and the result; exits 1 and
prints the shrunk falsifying example when a property breaks.
"""

import argparse
import functools
import multiprocessing
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

from hypothesis import seed  # noqa: E402

import tests.test_hostile as hostile  # noqa: E402


def _counted(prop, counter):
    @functools.wraps(prop)
    def run(*args, **kwargs):
        counter[0] += 1
        return prop(*args, **kwargs)
    return run


def worker(index, examples, batch, queue):
    counter = [0]
    failures = []
    started = time.monotonic()
    try:
        plan = [[prop, strategies, int(examples * share)]
                for prop, strategies, _, share in hostile.PROPERTIES]
        plan[0][2] += examples - sum(n for _, _, n in plan)
        batch_no = 0
        for prop, strategies, budget in plan:
            while budget > 0 and not failures:
                n = min(batch, budget)
                before = counter[0]
                batch_seed = 1_000_003 * index + batch_no
                batch_no += 1
                test = seed(batch_seed)(hostile.hypothesis_test(
                    _counted(prop, counter), strategies, n))
                try:
                    test()
                except BaseException as exc:   # a property broke: report it
                    failures.append("%s (seed %d):\n%s" % (
                        prop.__name__, batch_seed,
                        "".join(traceback.format_exception(exc))[-6000:]))
                budget -= max(counter[0] - before, 1)
                sys.stderr.write("fuzz: worker %d: %d examples, %.0f s\n" % (
                    index, counter[0], time.monotonic() - started))
                sys.stderr.flush()
    finally:
        hostile.teardown_module(None)
    queue.put((index, counter[0], failures, time.monotonic() - started))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=2_000)
    args = parser.parse_args()

    share = -(-args.examples // args.workers)
    queue = multiprocessing.get_context("fork").Queue()
    ctx = multiprocessing.get_context("fork")
    started = time.monotonic()
    procs = [ctx.Process(target=worker, args=(i, share, args.batch, queue))
             for i in range(args.workers)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - started
    total = sum(count for _, count, _, _ in results)
    failures = [f for _, _, fs, _ in results for f in fs]
    crashed = [p.exitcode for p in procs if p.exitcode != 0]
    for f in failures:
        print("FALSIFIED: " + f)
    result = "FAIL" if failures or crashed else "OK"
    print("fuzz: %d examples in %.0f s (%d workers, %.1f ms each): %s%s"
          % (total, elapsed, args.workers, 1000 * elapsed * args.workers / max(total, 1),
             result, "" if not failures else ", %d properties broken" % len(failures)))
    if total < args.examples and result == "OK":
        print("fuzz: fewer examples than asked (%d < %d)" % (total, args.examples))
        return 1
    return 0 if result == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
