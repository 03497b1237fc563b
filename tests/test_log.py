"""log: where syslog lines go, and that a missing or stuck syslog never
slows or fails a delivery."""

import os
import socket
import time

from mm_handler import log


def test_the_default_socket_follows_the_platform(monkeypatch):
    seen = []

    def exists(path):
        seen.append(path)
        return path == "/var/run/log"           # FreeBSD, NetBSD
    monkeypatch.setattr(log.os.path, "exists", exists)
    assert log.default_socket() == "/var/run/log"
    assert seen == ["/dev/log", "/var/run/log"]
    monkeypatch.setattr(log.os.path, "exists", lambda p: p == "/var/run/syslog")
    assert log.default_socket() == "/var/run/syslog"    # macOS
    monkeypatch.setattr(log.os.path, "exists", lambda p: False)
    assert log.default_socket() == "/dev/log"
    assert log.Syslog("/x/y").path == "/x/y"
    lazy = log.Syslog()             # found at the first line, not before
    assert lazy.path == ""
    lazy.send(log.LOG_INFO, "x")
    assert lazy.path == "/dev/log"


def test_a_missing_socket_costs_nothing(tmp_path):
    sink = log.Syslog(str(tmp_path / "no-such-socket"))
    start = time.monotonic()
    for _ in range(100):
        sink.send(log.LOG_INFO, "line")
    assert time.monotonic() - start < 0.5
    assert sink.failed


def test_a_syslog_that_never_reads_is_given_up_after_one_timeout(tmp_path):
    path = str(tmp_path / "stuck")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    try:
        sink = log.Syslog(path)
        start = time.monotonic()
        for _ in range(200):        # far more than the socket's queue holds
            sink.send(log.LOG_INFO, "x" * 1500)
        took = time.monotonic() - start
        assert sink.failed
        assert took < 2.5, took     # one 1 s timeout, not one per line
    finally:
        server.close()
        os.unlink(path)
