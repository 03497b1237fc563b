"""Issue 5, load: 50 mm-handler processes at once into one real Mailman 3 runner."""

import subprocess

from tests.conftest import sample_message

PROCESSES = 50


def test_fifty_concurrent_deliveries_each_land_exactly_once(handler, mm3, mm3_config):
    config = mm3_config(var_dir=True)
    procs = []
    for n in range(PROCESSES):
        proc = subprocess.Popen(
            [str(handler), "-C", str(config), "-r", "alice@example.org",
             "lists.example.test", "test"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={}, cwd="/")
        procs.append(proc)
    results = []
    for n, proc in enumerate(procs):
        out, err = proc.communicate(sample_message(
            subject="load %d" % n, message_id="<load-%d@example.org>" % n), timeout=120)
        results.append((proc.returncode, err))
    assert [code for code, _ in results] == [0] * PROCESSES, results
    ids = sorted(msg["Message-ID"] for msg, _ in mm3.read_queue("in"))
    assert ids == sorted("<load-%d@example.org>" % n for n in range(PROCESSES))
    assert mm3.queued() == {"in": PROCESSES}
