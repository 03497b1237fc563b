"""`mm-handler socketmap`, the server alone: the installed command, spoken
to over its unix socket as Sendmail speaks (netstrings ``LEN:MAP KEY,``).

- every key gets what the generated virtusertable (`mm-handler maps`, the
  same maps.Virtuser) says for it, NOTFOUND where it has no row: Mailman 2,
  Mailman 3's var_dir, the site's own rows, and Mailman 3's LMTP server
  (the real runner, and a scripted one for its faults);
- a list made or removed on disk is answered so at once, the site file
  within a second or two;
- hostile peers lose their own connection and nothing else; 2,000 idle
  connections are kept and one more is answered; memory stays bounded.

The real Sendmail in front of it: tests/test_sendmail_socketmap.py.
"""

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mm_handler import maps
from mm_handler.config import validate
from tests.conftest import render_config
from tests.peers.scripted_lmtp import SILENCE, ScriptedLMTP, refused_endpoint

D1, D2 = "lists.example.test", "example.test"


# -- a server and its clients ------------------------------------------------------

class Client:
    def __init__(self, path, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def ask(self, key, name="mm_handler"):
        request = ("%s %s" % (name, key)).encode("utf-8", "surrogateescape")
        self.send(b"%d:%s," % (len(request), request))
        return self.reply()

    def reply(self):
        """One reply's payload; EOFError when the server closed."""
        while True:
            size, colon, rest = self.buf.partition(b":")
            if colon and len(rest) > int(size):
                assert rest[int(size)] == 44, self.buf
                self.buf = rest[int(size) + 1:]
                return rest[:int(size)].decode("utf-8", "surrogateescape")
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data

    def closed(self, timeout=3.0):
        """True when the server closes this connection within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


class MapServer:
    """The installed `mm-handler socketmap`, its socket in `workdir`."""

    def __init__(self, handler, workdir, sections, nofile=None):
        self.handler = handler
        self.workdir = Path(workdir)
        (self.workdir / "run").mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / "run" / "socketmap"
        sections = {k: dict(v) for k, v in sections.items()}
        sections.setdefault("socketmap", {}).setdefault("listen", "unix:%s" % self.path)
        self.config = self.workdir / "mm-handler.cfg"
        self.config.write_text(render_config(sections))
        self.log = self.workdir / "server.log"
        self.nofile = nofile
        self.proc = None

    def start(self, timeout=10):
        def limit():
            if self.nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.handler), "socketmap", "-C", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={}, cwd="/", start_new_session=True, preexec_fn=limit)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                Client(self.path).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.02)

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode if proc else None

    def rss(self):
        """Resident set size in KiB."""
        for line in Path("/proc/%d/status" % self.proc.pid).read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    def client(self, **kw):
        return Client(self.path, **kw)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def mailman2_sections(lists_dir, log, **extra):
    sections = {
        "mm-handler": {"backend": "mailman2", "syslog_socket": log},
        "mailman2": {"lists_dir": str(lists_dir)},
        "maps": {"domains": "%s %s" % (D1, D2)},
        "socketmap": {"request_timeout": "1"},
    }
    for section, keys in extra.items():
        sections.setdefault(section, {}).update(keys)
    return sections


def make_mailman2_lists(lists_dir, names):
    for name in names:
        (lists_dir / name).mkdir(parents=True, exist_ok=True)
        (lists_dir / name / "config.pck").write_bytes(b"")


# -- the answers are the generated table's -------------------------------------------

def probe_keys(rows, domains):
    """Every key of the table, and the keys around them Sendmail also asks."""
    keys = set()
    for key in list(rows) + ["%s@%s" % (l, d) for d in domains for l in (
            "nolist", "test-foo", "test-", "tes", "owner-nolist", "-bounces",
            "test-confirm", "test-admin", "news-bounces-bounces", "x" * 300,
            "caf\u00e9", "postmaster", "a.b", "test.lists")] + [
            "@other.example", "test@other.example", "test", "", "@", "@@" + D1]:
        local, at, domain = key.rpartition("@")
        keys.add(key)
        keys.add(key.upper())
        if at and local:
            for detail in ("+bob=example.net", "++", "+*", "+"):
                keys.add("%s%s@%s" % (local, detail, domain))
        if at:
            keys.update(("++@" + domain, "+*@" + domain, "@" + domain))
    return sorted(keys)


def assert_same_as_the_table(server, settings, lists, extra_keys=()):
    rows = dict(maps.Tables(settings, lists).virtusertable())
    assert rows, "an empty table proves nothing"
    client = server.client()
    try:
        for key in probe_keys(rows, settings.get("maps", "domains")) + list(extra_keys):
            want = rows.get(key.lower())
            got = client.ask(key)
            assert got == ("NOTFOUND" if want is None else "OK " + want), key
    finally:
        client.close()
    return rows


def test_mailman2_every_key_answered_as_the_generated_table(handler, tmp_path,
                                                             syslog_sink):
    lists_dir = tmp_path / "lists"
    make_mailman2_lists(lists_dir, ["test", "news", "news-bounces", "owner-foo",
                                    "foo", "my.list", "x=y"])
    (lists_dir / "nolist").mkdir()              # no config: no list
    (lists_dir / ".hidden").mkdir()
    site = tmp_path / "site-virtusertable"
    site.write_text("# the site's own\n"
                    "info@%s\tpeople@example.org\n"            # a key of its own
                    "test-owner@%s\tthe-owner@example.org\n"   # wins over the list's
                    "Webmaster@%s\twww@example.org\n"          # wins over the role
                    "@elsewhere.example\terror:nouser gone\n"
                    "bare-key\n" % (D1, D1, D2))
    sections = mailman2_sections(lists_dir, syslog_sink.path, **{
        "mm-handler": {"approved_actions": "post admin bounces join leave owner "
                                           "request subscribe unsubscribe"},
        "maps": {"site_virtusertable": str(site)}})
    settings = validate(sections)
    lists = maps.lists_from_settings(settings)[0]
    with MapServer(handler, tmp_path, sections) as server:
        rows = assert_same_as_the_table(server, settings, lists, [
            "info@" + D1, "bare-key", "@elsewhere.example", "x@elsewhere.example"])
    assert rows["test-owner@" + D1] == "the-owner@example.org"
    assert rows["news-bounces@" + D1] == "news-bounces%3@" + D1 + ".mailman.invalid"
    assert "test-confirm@" + D1 not in rows        # not an approved action


def test_mailman3_var_dir_one_list_per_directory(handler, tmp_path, syslog_sink):
    var = tmp_path / "var"
    for list_id in ("foo.lists.example.test", "bar.example.test", "test.lists.example.test",
                    "orphan.example.org"):
        (var / "lists" / list_id).mkdir(parents=True)
    sections = {"mm-handler": {"backend": "mailman3", "syslog_socket": syslog_sink.path},
                "mailman3": {"var_dir": str(var)},
                "maps": {"domains": "%s %s" % (D1, D2), "roles": "postmaster",
                         "reject": "error:5.1.1:550 Unknown list"}}
    settings = validate(sections)
    lists = maps.lists_from_settings(settings)[0]
    with MapServer(handler, tmp_path, sections) as server:
        rows = assert_same_as_the_table(server, settings, lists,
                                        ["foo.lists@" + D2, "orphan@example.org"])
        client = server.client()
        assert client.ask("foo@" + D1).startswith("OK foo%3@")
        # foo.lists.example.test is foo@lists.example.test only
        assert client.ask("foo.lists@" + D2) == "NOTFOUND"
        assert client.ask("@" + D2) == "OK error:5.1.1:550 Unknown list"
    assert "foo.lists@" + D2 not in rows


def test_made_and_removed_lists_are_answered_at_once(handler, tmp_path, syslog_sink):
    lists_dir = tmp_path / "lists"
    make_mailman2_lists(lists_dir, ["test"])
    with MapServer(handler, tmp_path, mailman2_sections(lists_dir, syslog_sink.path)) \
            as server:
        client = server.client()
        for _ in range(3):
            assert client.ask("fresh-request@" + D1) == "NOTFOUND"
        # at the very next lookup: what the registry says is never kept
        make_mailman2_lists(lists_dir, ["fresh"])
        assert client.ask("fresh-request@" + D1) == \
            "OK fresh-request%%3@%s.mailman.invalid" % D1
        assert client.ask("fresh-request@" + D2) == \
            "OK fresh-request%%3@%s.mailman.invalid" % D2
        shutil.rmtree(lists_dir / "fresh")
        assert client.ask("fresh-request@" + D1) == "NOTFOUND"
        assert client.ask("test@" + D1).startswith("OK test%3@")
        # what --check prints of a server that answers
        from mm_handler.socketmap import check_report
        lines, problems = check_report(validate(mailman2_sections(
            lists_dir, syslog_sink.path, socketmap={"listen": "unix:%s" % server.path})))
        assert problems == [] and lines[-1] == (
            "socketmap unix:%s: answering: @%s -> OK error:5.1.1:550 No such list "
            "address here" % (server.path, D1)), lines


def test_site_rows_are_read_again_when_the_file_changes(handler, tmp_path,
                                                        syslog_sink):
    lists_dir = tmp_path / "lists"
    make_mailman2_lists(lists_dir, ["test"])
    site = tmp_path / "site"
    site.write_text("info@%s\tone@example.org\n" % D1)
    sections = mailman2_sections(lists_dir, syslog_sink.path,
                                 maps={"site_virtusertable": str(site)})
    with MapServer(handler, tmp_path, sections) as server:
        client = server.client()
        assert client.ask("info@" + D1) == "OK one@example.org"
        new = tmp_path / "site.new"
        new.write_text("info@%s\ttwo@example.org\n" % D1)
        new.rename(site)
        deadline = time.monotonic() + 3
        while client.ask("info@" + D1) != "OK two@example.org":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # a file that cannot be read keeps the rows in use
        site.write_bytes(b"info@x \xff\n")
        time.sleep(1.5)
        assert client.ask("info@" + D1) == "OK two@example.org"
    assert "site_virtusertable not read again" in "\n".join(syslog_sink.lines())


def test_unreadable_registry_and_wrong_map_are_temporary(handler, tmp_path,
                                                         syslog_sink):
    sections = mailman2_sections(tmp_path / "no-such-dir", syslog_sink.path)
    with MapServer(handler, tmp_path, sections) as server:
        client = server.client()
        assert client.ask("test@" + D1).startswith("TEMP lists directory ")
        # what does not depend on the lists is still answered
        assert client.ask("@" + D1).startswith("OK error:5.1.1:550 ")
        assert client.ask("postmaster@" + D1) == "OK postmaster"
        assert client.ask("test@" + D1, name="access").startswith("TEMP no map named")
        assert client.ask("test@" + D1, name="virtuser").startswith("TEMP lists dir")
        request = b"mm_handler"                     # no key at all
        client.send(b"%d:%s," % (len(request), request))
        assert client.reply().startswith("PERM ")
        assert client.ask("@" + D2).startswith("OK error:")     # still in step


# -- Mailman 3 without var_dir: its LMTP server says ----------------------------------

def test_lmtp_asked_on_one_kept_connection_answers_cached(handler, tmp_path,
                                                          syslog_sink):
    def rcpt(addr):         # lists test and news-bounces, as Mailman answers
        local = addr.strip("<>").partition("@")[0]
        return "250 2.1.5 Ok" if local in ("test", "news-bounces-request") else \
            "550 Requested action not taken: mailbox unavailable"
    with ScriptedLMTP({"rcpt": rcpt}) as lmtp:
        sections = {"mm-handler": {"backend": "mailman3",
                                   "syslog_socket": syslog_sink.path},
                    "mailman3": {"lmtp": lmtp.endpoint},
                    "maps": {"domains": D1},
                    "socketmap": {"lmtp_cache": "60"}}
        with MapServer(handler, tmp_path, sections) as server:
            client = server.client()
            assert client.ask("test@" + D1).startswith("OK test%3@")
            assert client.ask("test-request@" + D1).startswith("OK test-request%3@")
            assert client.ask("news-bounces@" + D1).startswith("OK news-bounces%3@")
            assert client.ask("nolist@" + D1) == "NOTFOUND"
            for _ in range(3):                  # all from the cache now
                assert client.ask("test@" + D1).startswith("OK ")
                assert client.ask("nolist@" + D1) == "NOTFOUND"
    [session] = lmtp.sessions                   # one connection, kept
    commands = [c.decode() for c in session.commands]
    assert commands[0].startswith("LHLO ")
    # a name Mailman would read as a suffix address is asked as NAME-request
    rcpts = [c for c in commands if c.startswith("RCPT")]
    assert rcpts == ["RCPT TO:<%s@%s>" % (name, D1) for name in (
        "test", "test-request-request", "news-bounces-request", "nolist")]
    assert [c for c in commands[1:] if c != "QUIT"] == [
        x for r in rcpts for x in ("MAIL FROM:<>", r, "RSET")]


def test_lmtp_down_or_silent_is_temporary(handler, tmp_path, syslog_sink):
    holder, refused = refused_endpoint()
    try:
        sections = {"mm-handler": {"backend": "mailman3",
                                   "syslog_socket": syslog_sink.path},
                    "mailman3": {"lmtp": refused},
                    "maps": {"domains": D1},
                    "socketmap": {"lookup_timeout": "1"}}
        with MapServer(handler, tmp_path / "down", sections) as server:
            client = server.client()
            assert client.ask("test@" + D1).startswith("TEMP cannot connect")
            assert client.ask("@" + D1).startswith("OK error:")
    finally:
        holder.close()
    with ScriptedLMTP({"rcpt": SILENCE}) as lmtp:
        sections["mailman3"]["lmtp"] = lmtp.endpoint
        with MapServer(handler, tmp_path / "silent", sections) as server:
            client, other = server.client(), server.client()
            start = time.monotonic()
            assert client.ask("test@" + D1).split()[0] in ("TIMEOUT", "TEMP")
            assert time.monotonic() - start < 2.5
            # the wait held no one else up
            assert other.ask("postmaster@" + D1) == "OK postmaster"


# -- hostile peers -------------------------------------------------------------------

@pytest.fixture
def server(handler, tmp_path, syslog_sink):
    lists_dir = tmp_path / "lists"
    make_mailman2_lists(lists_dir, ["test"])
    sections = mailman2_sections(lists_dir, syslog_sink.path,
                                 socketmap={"max_request": "1024",
                                            "max_connections": "2100"})
    # a low descriptor limit: the server raises its own
    with MapServer(handler, tmp_path, sections, nofile=(256, 20000)) as server:
        yield server


@pytest.mark.parametrize("data", [
    b"99999999999:x,", b"1025:", b"hello world", b":x,", b"5:abcde.",
    b"\x00\x01\x02\x03\x04\x05\x06\x07\x08", b"-1:x,", b"12 :x,",
], ids=["huge-length", "over-max_request", "garbage", "no-length",
        "no-comma", "binary", "negative", "space"])
def test_a_bad_netstring_costs_its_connection_only(server, data, syslog_sink):
    good = server.client()
    assert good.ask("test@" + D1).startswith("OK ")
    bad = server.client()
    bad.send(data)
    assert bad.reply().startswith("PERM ")      # the error, then the end
    assert bad.closed()
    assert good.ask("test@" + D1).startswith("OK ")
    assert server.client().ask("nolist@" + D1) == "NOTFOUND"
    assert "no Sendmail sends" in "\n".join(syslog_sink.lines())


def test_half_a_request_is_dropped_after_request_timeout(server):
    good, half = server.client(), server.client()
    half.send(b"30:mm_handler test@lis")
    start = time.monotonic()
    assert half.reply() == "PERM half a request for 1s"
    assert half.closed(timeout=5)
    assert 0.9 < time.monotonic() - start < 3.5
    assert good.ask("test@" + D1).startswith("OK ")


def test_pipelined_requests_are_answered_in_order(server):
    client = server.client()
    keys = ["test@" + D1, "nolist@" + D1, "@" + D1, "test-request@" + D2]
    client.send(b"".join(b"%d:mm_handler %s," % (11 + len(k), k.encode()) for k in keys))
    replies = [client.reply() for _ in keys]
    assert [r.split()[0] for r in replies] == ["OK", "NOTFOUND", "OK", "OK"]
    assert replies[3] == "OK test-request%%3@%s.mailman.invalid" % D2


def test_a_peer_that_does_not_read_is_not_read_and_memory_stays_bounded(server):
    before = server.rss()
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(str(server.path))
    hog.setblocking(False)
    request = b"mm_handler test@" + D1.encode()
    chunk = b"%d:%s," % (len(request), request) * 4096
    sent, deadline = 0, time.monotonic() + 3
    while time.monotonic() < deadline and sent < 64 << 20:
        try:
            sent += hog.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            break               # unread replies, unread requests: dropped
    # the server stopped reading long before 64 MiB of requests
    assert sent < 16 << 20, sent
    good = server.client()
    start = time.monotonic()
    assert good.ask("test@" + D1).startswith("OK ")
    assert time.monotonic() - start < 0.5
    assert server.rss() - before < 8 * 1024, (before, server.rss())
    hog.close()


def test_two_thousand_idle_connections_and_one_more(server):
    idle = [server.client() for _ in range(2000)]
    try:
        fresh = server.client()
        assert fresh.ask("test@" + D1).startswith("OK ")
        # every one of them is still served
        for client in idle[::97] + idle[-3:]:
            assert client.ask("nolist@" + D1) == "NOTFOUND"
    finally:
        for client in idle:
            client.close()


def test_over_max_connections_new_ones_are_closed_at_once(handler, tmp_path,
                                                         syslog_sink):
    lists_dir = tmp_path / "lists"
    make_mailman2_lists(lists_dir, ["test"])
    sections = mailman2_sections(lists_dir, syslog_sink.path,
                                 socketmap={"max_connections": "20"})
    with MapServer(handler, tmp_path, sections) as server:
        kept = [server.client() for _ in range(19)]     # + the start-up probe's,
        time.sleep(0.2)                                 # closed by now
        kept.append(server.client())
        extra = server.client()
        assert extra.closed(timeout=2)
        assert all(c.ask("test@" + D1).startswith("OK ") for c in kept)
        kept.pop().close()
        time.sleep(0.2)
        assert server.client().ask("test@" + D1).startswith("OK ")
    assert "max_connections" in "\n".join(syslog_sink.lines())


# -- the socket ----------------------------------------------------------------------

def test_the_socket_is_made_replaced_and_removed(handler, tmp_path, syslog_sink):
    lists_dir = tmp_path / "lists"
    make_mailman2_lists(lists_dir, ["test"])
    sections = mailman2_sections(lists_dir, syslog_sink.path,
                                 socketmap={"socket_mode": "0660",
                                            "socket_group": "list"})
    first = MapServer(handler, tmp_path, sections)
    # a socket left by a server that died is replaced
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(first.path))
    stale.close()
    with first:
        st = first.path.stat()
        import grp
        assert oct(st.st_mode & 0o777) == oct(0o660)
        assert st.st_gid == grp.getgrnam("list").gr_gid
        # while it answers, a second server refuses to take its place
        second = MapServer(handler, tmp_path, sections)
        proc = subprocess.run([str(handler), "socketmap", "-C", str(second.config)],
                              capture_output=True, text=True, timeout=20)
        assert proc.returncode == 75 and "another server answers" in proc.stderr
        assert first.client().ask("test@" + D1).startswith("OK ")
    assert first.proc is None and not first.path.exists()
    # something else at the path is never replaced
    first.path.write_text("not a socket")
    proc = subprocess.run([str(handler), "socketmap", "-C", str(first.config)],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 73 and "not a socket" in proc.stderr
    assert first.path.read_text() == "not a socket"


def test_settings_are_checked_and_reported(tmp_path):
    from mm_handler.config import ConfigError
    from mm_handler.socketmap import check_report
    s = validate({"socketmap": {"listen": "inet:1@[127.0.0.1]", "socket_mode": "640",
                                "idle_timeout": "0"}, "maps": {"domains": D1}})
    assert s["socketmap"]["listen"] == ("inet", ("127.0.0.1", 1))
    assert s["socketmap"]["socket_mode"] == 0o640
    for key, bad in (("listen", "unix:relative"), ("listen", "inet:70000@x"),
                     ("listen", "tcp:25@x"), ("socket_mode", "999"),
                     ("max_request", "10"), ("map_names", "a b;c"),
                     ("idle_timeout", "-1"), ("socket_owner", "-x")):
        with pytest.raises(ConfigError):
            validate({"socketmap": {key: bad}}).check_all()
    lines, problems = check_report(s, timeout=0.5)
    text = "\n".join(lines)
    assert "listen inet:1@127.0.0.1" in text and "mode 0640" in text
    assert "no server answers" in text and problems == []
    lines, problems = check_report(validate({}))
    assert problems and "[maps] domains is empty" in problems[0]


def test_not_started_without_list_domains(handler, tmp_path):
    config = tmp_path / "cfg"
    config.write_text("[mm-handler]\nbackend = mailman2\n[socketmap]\nlisten = unix:%s\n"
                      % (tmp_path / "s"))
    proc = subprocess.run([str(handler), "socketmap", "-C", str(config)],
                          capture_output=True, text=True, timeout=20, env={})
    assert proc.returncode == 78 and "[maps] domains is empty" in proc.stderr
    proc = subprocess.run([str(handler), "socketmap", "--bogus"],
                          capture_output=True, text=True, timeout=20, env={})
    assert proc.returncode == 64 and "usage: mm-handler socketmap" in proc.stderr
    assert os.path.exists(str(handler))


def test_alias_domains_keep_the_table_and_the_rules_equal(tmp_path):
    """maps.Virtuser is what Tables.virtusertable writes, alias domains too."""
    settings = validate({"maps": {"domains": D1}})
    tables = maps.Tables(settings, [("test", D1)], site=([], []),
                         aliases={D1: "lists.example.net"})
    rows = dict(tables.virtusertable())
    assert rows["test-request@lists.example.net"] == \
        "test-request%%3@%s.mailman.invalid" % D1
    assert rows["@lists.example.net"].startswith("error:5.1.1:550 ")
    assert rows["postmaster@lists.example.net"] == "postmaster"
    rules = maps.Virtuser(settings, [D1], (), {D1: "lists.example.net"})
    pairs = {("test", D1)}
    for key in probe_keys(rows, [D1, "lists.example.net"]):
        assert rules.value(key, lambda n, d: (n, d) in pairs) == rows.get(key.lower())


def test_the_service_files_start_the_server_where_the_defaults_listen():
    from mm_handler.config import SCHEMA
    kit = Path(__file__).resolve().parent.parent / "sendmail"
    unit = (kit / "mm-handler-socketmap.service").read_text()
    listen = SCHEMA["socketmap"]["listen"][0]
    assert listen == "unix:/run/mm-handler/socketmap"
    assert "RuntimeDirectory=mm-handler\n" in unit
    assert "\nExecStart=/opt/mm-handler/bin/mm-handler socketmap -C " \
           "/etc/mm-handler.cfg\n" in unit
    assert "\nUser=list\n" in unit and "\nExecReload=/bin/kill -HUP $MAINPID\n" in unit
    script = kit / "rc.d" / "mm_handler_socketmap"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "socketmap -C ${mm_handler_socketmap_config}" in text
    assert 'rundir:="/var/run/mm-handler"' in text


def test_inet_listen_and_sighup_reads_the_configuration_again(handler, tmp_path,
                                                               syslog_sink):
    from tests.peers.mailman3 import free_port
    lists_dir = tmp_path / "lists"
    make_mailman2_lists(lists_dir, ["test"])
    port = free_port()
    sections = mailman2_sections(lists_dir, syslog_sink.path, maps={"domains": D1},
                                 socketmap={"listen": "inet:%d@127.0.0.1" % port})
    server = MapServer(handler, tmp_path, sections)
    server.path = tmp_path / "unused"
    with open(server.log, "ab") as log:
        server.proc = subprocess.Popen(
            [str(handler), "socketmap", "-C", str(server.config)], env={},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and server.proc.poll() is None
                time.sleep(0.02)
        client = Client.__new__(Client)
        client.sock, client.buf = sock, b""
        assert client.ask("test@" + D1).startswith("OK ")
        assert client.ask("test@" + D2) == "NOTFOUND"
        sections["maps"]["domains"] = "%s %s" % (D1, D2)
        server.config.write_text(render_config(sections))
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while client.ask("test@" + D2) == "NOTFOUND":   # the same connection
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.ask("@" + D2).startswith("OK error:")
    finally:
        server.stop()
    assert "configuration read again" in "\n".join(syslog_sink.lines())
