"""``mm-handler socketmap``: the live list lookup, a Sendmail socket map server.

Sendmail's socket map (map class ``socket``, ``SOCKETMAP`` in ``sendmail
-d0.1``) asks one key at a time over a connection that each Sendmail
process opens on its first lookup and keeps: the request is the netstring
``LEN:MAPNAME KEY,`` (the key lower-cased and cut to 256 bytes by Sendmail),
the reply ``LEN:STATUS VALUE,`` with STATUS ``OK`` (VALUE is the map's
value; ``%1``..``%9`` in it are Sendmail's), ``NOTFOUND``, ``TEMP`` or
``TIMEOUT`` (a temporary failure) or ``PERM``.  Sendmail waits ``-d``
seconds for a reply (30 by default), and a reply that is late, short or
malformed is a temporary failure for which it closes the connection;
the next lookup opens a new one.

The answer for each key is exactly the value the generated virtusertable
(`mm-handler maps`) would give for it, computed by the same function
(maps.Virtuser), live:

- Mailman 2 (``[mailman2] lists_dir``) and Mailman 3 with ``[mailman3]
  var_dir``: every lookup looks at the disk, so a list created or removed
  is answered at once;
- Mailman 3 without ``var_dir`` (Mailman on another host): Mailman's LMTP
  server is asked ``MAIL FROM:<>``, ``RCPT TO:<list@domain>``, ``RSET`` on a
  connection kept open, and the answer is cached ``[socketmap] lmtp_cache``
  seconds;
- the site's own entries (``[maps] site_virtusertable``) are read again
  within a second of a change.

A key that cannot be answered (the lists directory unreadable, the LMTP
server down or slow past ``lookup_timeout``) gets ``TEMP``: with the kit's
map flag -T<TMPF>, Sendmail then answers 451 at RCPT.  An answer that would
be late is never given (see LATE below): the connection is closed instead.

One process, one thread for the connections (asyncio), any number of
connections: each Sendmail child keeps its own.  A peer that sends what no
Sendmail sends (a length over ``max_request``, garbage, half a request for
``request_timeout`` seconds) gets a PERM answer and loses its connection,
nothing else; a peer that does not read its replies is not read either.  Runs in the
foreground (systemd and rc.d wrap it); SIGTERM or SIGINT stop it, SIGHUP
reads the configuration again.

This module is never on the delivery path.
"""

import asyncio
import os
import resource
import signal
import socket
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from . import lmtp, registry
from .address import Target
from .config import ConfigError, config_path, load
from .log import LOG_ERR, LOG_INFO, LOG_WARNING, Syslog, display
from .maps import MapsError, Virtuser, _site_lines, split_list_ids
from .status import (EX_CANTCREAT, EX_CONFIG, EX_OK, EX_SOFTWARE,
                     EX_TEMPFAIL, EX_USAGE)

USAGE = """\
usage: mm-handler socketmap [-C FILE]

Answer Sendmail's socket map lookups live from the list registry: for every
key, what the generated virtusertable would say (README.sendmail, section
11).  Runs in the foreground until SIGTERM; SIGHUP reads FILE again.
"""

BACKLOG = 1024
# Never late.  Sendmail waits -d seconds for an answer; when that runs out
# in an SMTP session it says 451 and keeps the connection, so the next
# lookup of that process would read the late answer as its own.  So an
# answer is written within LATE seconds of the request's arrival (an LMTP
# one within lookup_timeout + LATE), or the connection is closed instead;
# bytes read after the event loop was held up past LATE (the process
# stopped, starved, a stat() that hung) are not answered either.  Keep
# MAILMAN_SOCKETMAP_TIMEOUT (the map's -d) above lookup_timeout + LATE.
LATE = 1.0
TICK = 0.2                  # the event loop's heartbeat, seconds
SUSPECT = 0.5               # after a hold-up, bytes read this long are old
RECENT_MAX = 4096           # answers kept until the next heartbeat, at most
MEMO_MAX = 65536            # local parts whose candidate lists are remembered
SITE_CHECK = 1.0            # seconds between looks at site_virtusertable
WRITE_HIGH = 64 * 1024      # a peer that lets this much pile up is not read
LMTP_CACHE_MAX = 10000      # (name, domain) answers kept at most
# Mailman 3's LMTP server reads LIST-SUFFIX as LIST's SUFFIX address
# (runners/lmtp.py SUBADDRESS_NAMES): a list whose name ends so is asked
# about as NAME-request, which only NAME itself can answer.
MAILMAN3_SUBADDRESSES = frozenset(("bounces", "confirm", "join", "leave", "owner",
                                   "request", "subscribe", "unsubscribe"))


class SetupError(Exception):
    """The server cannot start; `code` is the exit status."""

    def __init__(self, text, code=EX_CONFIG):
        super().__init__(text)
        self.code = code


class Pending(Exception):
    """The answer needs the LMTP server's word on list `pair` first."""

    def __init__(self, pair):
        super().__init__(pair)
        self.pair = pair


class Unanswerable(Exception):
    """The answer cannot be known now (a temporary failure)."""


class LiveVirtuser(Virtuser):
    """maps.Virtuser with the pure part remembered: which lists a local
    part could belong to depends on nothing but the text and the settings
    (whether those lists exist is asked every time)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.memo = {}

    def candidates(self, local, domain):
        names = self.memo.get((local, domain))
        if names is None:
            if len(self.memo) >= MEMO_MAX:
                self.memo.clear()
            names = self.memo[local, domain] = super().candidates(local, domain)
        return names


def netstring(data):
    return b"%d:%s," % (len(data), data)


def describe_listen(listen):
    family, address = listen
    if family == "unix":
        return "unix:" + address
    return "%s:%d@%s" % (family, address[1], address[0])


# -- the answers -------------------------------------------------------------------

class Lookup:
    """Key -> (status, text) from the configuration and the registry."""

    def __init__(self, settings):
        self.settings = settings
        conf = settings["socketmap"]
        self.map_names = frozenset(n.encode() for n in conf["map_names"])
        domains = settings.get("maps", "domains")
        backend = settings.get("mm-handler", "backend")
        if not domains:
            raise SetupError("[maps] domains is empty: name the list domains "
                             "there (the live lookup answers for them)")
        self.domains = domains
        self.recent = {}        # request -> reply, this heartbeat only
        self.consulted = False
        self.site_path = settings.get("maps", "site_virtusertable")
        self.site_seen = None
        self.site_next = 0.0
        self.rules = LiveVirtuser(settings, domains, self._read_site())
        self.prober = None
        if backend == "mailman2":
            lists = registry.Mailman2Lists(settings.get("mailman2", "lists_dir"))
            self.source = "Mailman 2 lists in %s" % lists.lists_dir
            base = lists.lists_dir + "/"

            def exists(name, domain):
                # no directory: no list (two stats, not one per config
                # name); the registry says why when it cannot look
                if not os.path.isdir(base + name) and os.path.isdir(base):
                    return False
                return lists.exists(Target(name, "post", "", domain))
            self.registry_exists = exists
        elif settings.get("mailman3", "var_dir"):
            lists = registry.Mailman3Lists(settings.get("mailman3", "var_dir"))
            self.source = "Mailman 3 lists in %s" % lists.lists_dir

            def exists(name, domain):
                # one list per directory, split at the longest domain, as
                # `mm-handler maps` reads them
                found, _ = split_list_ids([name + "." + domain], domains)
                return found == [(name, domain)] and lists.exists(
                    Target(name, "post", "", domain))
            self.registry_exists = exists
        else:
            self.prober = LmtpProber(settings.get("mailman3", "lmtp"),
                                     conf["lookup_timeout"], conf["lmtp_cache"])
            self.source = "Mailman 3's LMTP server %s (answers kept %gs)" % (
                ", ".join(map(lmtp.describe_endpoint, settings.get("mailman3", "lmtp"))),
                conf["lmtp_cache"])
            self.registry_exists = self.prober.known

    def _read_site(self):
        """The site's own rows; MapsError when the file cannot be read."""
        if not self.site_path:
            return []
        try:
            st = os.stat(self.site_path)
            self.site_seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            self.site_seen = None
        return _site_lines(self.site_path)

    def check_site(self, now, log):
        """Read site_virtusertable again if it changed (looked at once a
        second at most); a file that cannot be read keeps the rows in use."""
        if not self.site_path or now < self.site_next:
            return
        self.site_next = now + SITE_CHECK
        try:
            st = os.stat(self.site_path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            seen = None
        if seen == self.site_seen:
            return
        try:
            rows = self._read_site()
        except MapsError as exc:
            self.site_seen = seen
            log(LOG_ERR, "socketmap: site_virtusertable not read again, the "
                "rows in use stay: %s" % exc)
            return
        self.rules = LiveVirtuser(self.settings, self.domains, rows)
        self.forget()
        log(LOG_INFO, "socketmap: site_virtusertable read again: %d row%s"
            % (len(rows), "" if len(rows) == 1 else "s"))

    def answer(self, request):
        """One request's payload -> the reply's payload.  Pending when an
        LMTP answer is needed first.  An OK or NOTFOUND the registry had no
        part in (roles, catch-alls, +detail and site keys) is kept until the
        next heartbeat (forget(): at most TICK seconds); what the registry
        said never is, so a list made or removed is answered so at once."""
        hit = self.recent.get(request)
        if hit is not None:
            return hit
        self.consulted = False
        reply = self._answer(request)
        if not self.consulted and reply[:1] in (b"O", b"N") \
                and len(self.recent) < RECENT_MAX:
            self.recent[request] = reply
        return reply

    def _exists(self, name, domain):
        self.consulted = True
        return self.registry_exists(name, domain)

    def forget(self):
        self.recent.clear()

    def _answer(self, request):
        name, space, key = request.partition(b" ")
        if not space:
            return b"PERM malformed request: no space after the map name"
        if name not in self.map_names:
            # a misconfigured map: temporary, so that nothing is refused
            return b"TEMP no map named " + display(
                name.decode("ascii", "replace"), 40).encode()
        try:
            value = self.rules.value(key.decode("utf-8", "surrogateescape"),
                                     self._exists)
        except (registry.RegistryError, Unanswerable) as exc:
            return b"TEMP " + display(str(exc), 200).encode()
        if value is None:
            return b"NOTFOUND"
        return b"OK " + value.encode("utf-8", "surrogateescape")


class LmtpProber:
    """Does list NAME exist in DOMAIN?  Mailman 3's LMTP server says, on a
    connection kept open; answers are cached `ttl` seconds.

    probe() runs in one worker thread (it blocks); known() and learn() in
    the event loop.
    """

    def __init__(self, endpoints, timeout, ttl):
        self.endpoints = endpoints
        self.timeout = timeout
        self.ttl = ttl
        self.cache = {}         # (name, domain) -> (exists, until)
        self.conn = None

    def known(self, name, domain):
        hit = self.cache.get((name, domain))
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        raise Pending((name, domain))

    def learn(self, pair, exists):
        now = time.monotonic()
        if len(self.cache) >= LMTP_CACHE_MAX:
            self.cache = {k: v for k, v in self.cache.items() if v[1] > now}
            if len(self.cache) >= LMTP_CACHE_MAX:
                self.cache.clear()
        # lmtp_cache = 0 still keeps it long enough for the requests
        # waiting for it to be answered
        self.cache[pair] = (exists, now + max(self.ttl, 0.5))

    def forget(self, pair):
        self.cache.pop(pair, None)

    def probe(self, name, domain):
        """True or False; Unanswerable when the server cannot say."""
        local = name + "-request" if name.rpartition("-")[2] in \
            MAILMAN3_SUBADDRESSES else name
        for _ in range(2):
            fresh = self.conn is None
            try:
                conn = self._connection()
                reply = conn.command("MAIL FROM:<>")
                if reply.code != 250:
                    raise Unanswerable("LMTP %s: MAIL FROM:<> answered %s"
                                       % (conn.name, reply))
                reply = conn.command("RCPT TO:<%s@%s>" % (local, domain))
                reset = conn.command("RSET")
                if reset.code != 250:
                    raise Unanswerable("LMTP %s: RSET answered %s" % (conn.name, reset))
            except (lmtp.ExchangeError, Unanswerable) as exc:
                self.close()
                if fresh:
                    raise Unanswerable(str(exc)) from None
                continue        # a kept connection the server had closed
            if reply.code == 250:
                return True
            if reply.code in (550, 551, 553):
                return False
            raise Unanswerable("LMTP %s: RCPT answered %s" % (conn.name, reply))
        raise Unanswerable("LMTP: no answer")

    def _connection(self):
        if self.conn is not None:
            return self.conn
        errors = []
        for endpoint in self.endpoints:
            try:
                conn = lmtp.Connection(endpoint, self.timeout)
            except lmtp.ExchangeError as exc:
                errors.append(str(exc))
                continue
            try:
                greeting = conn.reply()
                if greeting.code != 220:
                    raise Unanswerable("LMTP %s: greeting %s" % (conn.name, greeting))
                hello = conn.command("LHLO " + (socket.gethostname() or "localhost"))
                if hello.code != 250:
                    raise Unanswerable("LMTP %s: LHLO answered %s" % (conn.name, hello))
            except (lmtp.ExchangeError, Unanswerable) as exc:
                conn.sock.close()
                errors.append(str(exc))
                continue
            self.conn = conn
            return conn
        raise Unanswerable("; ".join(errors) or "no LMTP server")

    def close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass


# -- the connections ---------------------------------------------------------------

class MapConnection(asyncio.Protocol):
    """One client (a Sendmail process): requests answered in order, one at
    a time, each within LATE seconds of its arrival (LMTP answers: within
    lookup_timeout) or never: see "never late" above."""

    __slots__ = ("server", "transport", "buf", "busy", "paused", "since", "last",
                 "arrived", "closed")

    def __init__(self, server):
        self.server = server
        self.transport = None
        self.buf = bytearray()
        self.busy = False       # an LMTP answer is awaited
        self.paused = False     # the peer does not read its replies
        self.since = 0.0        # when the unfinished request began
        self.last = 0.0         # last request answered (idle_timeout)
        self.arrived = 0.0      # when the bytes in buf were read
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        server = self.server
        if len(server.conns) >= server.max_connections:
            server.refused += 1
            server.warn_once("full", "socketmap: %d connections: new ones are "
                             "closed at once ([socketmap] max_connections)"
                             % len(server.conns))
            transport.abort()
            self.closed = True
            return
        server.conns.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.last = server.now

    def connection_lost(self, exc):
        self.closed = True
        self.server.conns.discard(self)
        self.server.partial.discard(self)

    def pause_writing(self):
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self):
        self.paused = False
        self.transport.resume_reading()
        self.process()

    def data_received(self, data):
        now = time.monotonic()
        server = self.server
        if now - server.tick > LATE or now < server.suspect_until:
            # these bytes may have waited past LATE (here, or in a
            # connection accepted since): Sendmail may have given up on
            # the request
            return self.drop("the server was held up %.1fs" % max(
                now - server.tick, server.held))
        self.arrived = now
        self.buf += data
        self.process()

    def drop(self, why):
        """Closed rather than answered late: Sendmail, whose read timed out,
        would take a late answer for the answer to its next request."""
        server = self.server
        server.dropped += 1
        server.warn_once("late", "socketmap: %s: connections with a request "
                         "waiting were closed rather than answered late (they "
                         "get 451; logged once a minute)" % why)
        self.buf = bytearray()
        self.closed = True
        self.transport.abort()

    def fail(self, why):
        """What no Sendmail sends: a PERM answer saying so, and this
        connection ends; nothing else."""
        server = self.server
        server.bad += 1
        server.warn_once("bad", "socketmap: a peer sent what no Sendmail sends "
                         "(%s): its connection closed (logged once a minute)" % why)
        self.buf = bytearray()
        self.closed = True
        transport = self.transport
        transport.write(netstring(b"PERM " + why.encode("ascii", "replace")))
        if transport.get_write_buffer_size():
            transport.abort()       # it does not read: nothing is kept for it
        else:
            transport.close()

    def process(self):
        server = self.server
        buf = self.buf
        while buf and not (self.busy or self.paused or self.closed):
            colon = buf.find(b":", 0, 8)
            if colon <= 0:
                if colon == 0 or len(buf) >= 8 or not buf.isdigit():
                    return self.fail("no netstring length")
                break
            size = buf[:colon]
            if not size.isdigit():
                return self.fail("no netstring length")
            size = int(size)
            if size > server.max_request:
                return self.fail("a request of %d bytes" % size)
            end = colon + 1 + size
            if len(buf) <= end:
                break
            if buf[end] != 44:          # ","
                return self.fail("no comma after the netstring")
            request = bytes(buf[colon + 1:end])
            del buf[:end + 1]
            try:
                reply = server.lookup.answer(request)
            except Pending as pending:
                self.busy = True
                server.loop.create_task(self.slow(request, pending.pair,
                                                  self.arrived))
                break
            late = time.monotonic() - self.arrived
            if late > LATE:
                return self.drop("an answer took %.1fs" % late)
            self.transport.write(netstring(reply))
            self.last = server.now
        if buf and not self.closed:
            if self not in server.partial:
                self.since = server.now
                server.partial.add(self)
        else:
            server.partial.discard(self)

    async def slow(self, request, pair, arrived):
        """Ask the LMTP server about each list the answer needs, then answer."""
        server = self.server
        budget = server.lookup_timeout
        try:
            while True:
                left = arrived + budget - time.monotonic()
                await asyncio.wait_for(server.probe(pair), max(left, 0.001))
                try:
                    reply = server.lookup.answer(request)
                    break
                except Pending as pending:
                    pair = pending.pair
        except asyncio.TimeoutError:
            reply = b"TIMEOUT the LMTP server did not answer in %gs" % (budget,)
        except Unanswerable as exc:
            reply = b"TEMP " + display(str(exc), 200).encode()
        if self.closed:
            return
        late = time.monotonic() - arrived
        if late > budget + LATE:
            return self.drop("an LMTP answer took %.1fs" % late)
        self.busy = False
        self.transport.write(netstring(reply))
        self.last = server.now
        self.process()


class Server:
    def __init__(self, settings, log):
        self.settings = settings
        self.log = log
        self.configure(settings)
        self.lookup = Lookup(settings)
        self.conns = set()
        self.partial = set()
        self.refused = self.bad = self.dropped = 0
        self.tick = time.monotonic()    # the event loop's heartbeat
        self.suspect_until = 0.0        # after a hold-up: bytes may be old
        self.held = 0.0
        self.warned = {}
        self.loop = None
        self.now = time.monotonic()
        self.inflight = {}
        self.executor = None
        self.listener = None
        self.unix_path = self.unix_ident = None
        self.stopping = None

    def configure(self, settings):
        conf = settings["socketmap"]
        self.listen = conf["listen"]
        self.max_connections = conf["max_connections"]
        self.max_request = conf["max_request"]
        self.request_timeout = conf["request_timeout"]
        self.idle_timeout = conf["idle_timeout"]
        self.lookup_timeout = conf["lookup_timeout"]

    def warn_once(self, what, text, every=60.0):
        """One log line per `every` seconds for a kind of trouble."""
        if self.now >= self.warned.get(what, 0.0):
            self.warned[what] = self.now + every
            self.log(LOG_WARNING, text)

    # -- LMTP answers, one thread --------------------------------------------

    async def probe(self, pair):
        """The LMTP server's answer for `pair`, shared by every request
        waiting for it; Unanswerable when it cannot be had."""
        future = self.inflight.get(pair)
        if future is None:
            prober = self.lookup.prober
            future = self.loop.run_in_executor(self.executor, prober.probe, *pair)
            self.inflight[pair] = future

            def done(f, pair=pair, prober=prober):
                self.inflight.pop(pair, None)
                if not f.cancelled() and f.exception() is None:
                    prober.learn(pair, f.result())
            future.add_done_callback(done)
        await asyncio.shield(future)

    # -- the listening socket ------------------------------------------------

    def open_listener(self):
        family, address = self.listen
        if family != "unix":
            try:
                infos = socket.getaddrinfo(
                    address[0], address[1],
                    socket.AF_INET6 if family == "inet6" else socket.AF_INET,
                    socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
                sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(infos[0][4])
                sock.listen(BACKLOG)
            except OSError as exc:
                raise SetupError("cannot listen on %s: %s" % (
                    describe_listen(self.listen), exc.strerror or exc),
                    EX_CANTCREAT) from None
            sock.setblocking(False)
            return sock
        return self._unix_listener(address)

    def _unix_listener(self, path):
        """Bound under a fresh name, given its mode and owner, listening,
        then renamed over PATH: a client never finds it half made.  A
        socket already at PATH is replaced only when nobody answers there."""
        conf = self.settings["socketmap"]
        where = os.path.dirname(path) or "/"
        if not os.path.isdir(where):
            raise SetupError("cannot listen on unix:%s: no directory %s (systemd's "
                             "RuntimeDirectory= or the rc.d script makes it)"
                             % (path, where), EX_CANTCREAT)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise SetupError("cannot examine %s: %s" % (path, exc.strerror),
                             EX_CANTCREAT) from None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise SetupError("%s exists and is not a socket: refused" % path,
                                 EX_CANTCREAT)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(2.0)
                probe.connect(path)
                running = True
            except OSError:
                running = False     # a socket left by a server that died
            finally:
                probe.close()
            if running:
                raise SetupError("another server answers at %s" % path, EX_TEMPFAIL)
        temp = os.path.join(where, ".%s.%d.new" % (os.path.basename(path), os.getpid()))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            sock.bind(temp)
            try:
                os.chmod(temp, conf["socket_mode"])
                owner, group = conf["socket_owner"], conf["socket_group"]
                if owner or group:
                    os.chown(temp, _uid(owner) if owner else -1,
                             _gid(group) if group else -1)
                sock.listen(BACKLOG)
                os.rename(temp, path)
            except BaseException:
                try:
                    os.unlink(temp)
                except OSError:
                    pass
                raise
        except (OSError, KeyError) as exc:
            sock.close()
            raise SetupError("cannot listen on unix:%s: %s" % (
                path, getattr(exc, "strerror", None) or exc), EX_CANTCREAT) from None
        st = os.stat(path)
        self.unix_path, self.unix_ident = path, (st.st_dev, st.st_ino)
        sock.setblocking(False)
        return sock

    def remove_socket(self):
        """Unlink the unix socket, if it is still the one this server made."""
        if self.unix_path is None:
            return
        try:
            st = os.lstat(self.unix_path)
            if (st.st_dev, st.st_ino) == self.unix_ident:
                os.unlink(self.unix_path)
        except OSError:
            pass
        self.unix_path = None

    # -- running -------------------------------------------------------------

    async def serve(self, ready=None):
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1,
                                           thread_name_prefix="mm-handler-lmtp")
        sock = self.open_listener()
        try:
            self.listener = await self.loop.create_server(
                lambda: MapConnection(self), sock=sock, backlog=BACKLOG)
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(signum, self.stopping.set)
            self.loop.add_signal_handler(signal.SIGHUP, self.reload)
            self.log(LOG_INFO, "socketmap: answering on %s for %s; lists: %s; "
                     "up to %d connections" % (
                         describe_listen(self.listen), " ".join(self.lookup.domains),
                         self.lookup.source, self.max_connections))
            if ready is not None:
                ready()
            sweeper = self.loop.create_task(self.sweep())
            await self.stopping.wait()
            sweeper.cancel()
        finally:
            self.remove_socket()
            if self.listener is not None:
                self.listener.close()
            for conn in list(self.conns):
                conn.transport.abort()
            if self.lookup.prober is not None:
                self.executor.submit(self.lookup.prober.close)
            self.executor.shutdown(wait=False)
        self.log(LOG_INFO, "socketmap: stopped")

    async def sweep(self):
        """The heartbeat (every TICK seconds: an event loop held up longer
        than LATE shows in MapConnection.data_received), and once a second
        the unfinished requests past request_timeout, idle connections
        past idle_timeout, and site_virtusertable."""
        beats = max(int(round(min(1.0, self.request_timeout / 2) / TICK)), 1)
        while True:
            for _ in range(beats):
                self.beat()
                await asyncio.sleep(TICK)
            self.beat()
            self.now = now = self.tick
            late = now - self.request_timeout
            for conn in [c for c in self.partial if c.since < late]:
                conn.fail("half a request for %gs" % self.request_timeout)
            if self.idle_timeout:
                idle = now - self.idle_timeout
                for conn in [c for c in self.conns if c.last < idle and not c.busy
                             and not c.buf]:
                    conn.closed = True
                    conn.transport.close()
            self.lookup.check_site(now, self.log)

    def beat(self):
        """A heartbeat.  One that comes late means the loop was held up:
        whatever is read for a little while (connections waiting to be
        accepted too) may be that old."""
        now = time.monotonic()
        if now - self.tick > LATE:
            self.held = now - self.tick
            self.suspect_until = now + SUSPECT
        self.tick = now
        self.lookup.forget()

    def reload(self):
        """SIGHUP: the configuration again (the listening socket stays)."""
        try:
            settings = load(self.settings.path).check_all()
            lookup = Lookup(settings)
        except (ConfigError, SetupError, MapsError) as exc:
            self.log(LOG_ERR, "socketmap: SIGHUP: configuration not taken, the "
                     "one in use stays: %s" % exc)
            return
        if settings["socketmap"]["listen"] != self.listen:
            self.log(LOG_WARNING, "socketmap: SIGHUP: a new [socketmap] listen "
                     "needs a restart; still on %s" % describe_listen(self.listen))
        old = self.lookup.prober
        self.settings = settings
        listen = self.listen
        self.configure(settings)
        self.listen = listen
        self.lookup = lookup
        if old is not None:
            self.executor.submit(old.close)
        self.log(LOG_INFO, "socketmap: configuration read again; lists: %s"
                 % lookup.source)


def _uid(name):
    import pwd
    return int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid


def _gid(name):
    import grp
    return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid


def raise_file_limit(connections, log):
    """Descriptors for `connections` clients and some more: the soft limit
    raised to what is needed (and the hard one, for root)."""
    want = connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if hard != resource.RLIM_INFINITY and hard < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
                return want
            except (ValueError, OSError):
                pass
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        except (ValueError, OSError):
            top = soft
        if top < want:
            log(LOG_WARNING, "socketmap: descriptor limit %d (hard %d): about %d "
                "connections at most, not %d" % (top, hard, max(top - 64, 1),
                                                  connections))
        return top
    return soft


# -- the command -------------------------------------------------------------------

class Logger:
    """One line to stderr (the service manager's journal) and to syslog; a
    syslog that failed is tried again a minute later."""

    def __init__(self, settings=None):
        self.settings = settings
        self.syslog = None
        self.retry = 0.0

    def __call__(self, priority, text):
        try:
            sys.stderr.write("mm-handler %s\n" % text)
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        if self.settings is None:       # no configuration: stderr only
            return
        now = time.monotonic()
        if self.syslog is None or (self.syslog.failed and now >= self.retry):
            self.syslog = Syslog(self.settings.get("mm-handler", "syslog_socket"),
                                 self.settings.get("mm-handler", "syslog_facility"))
        self.syslog.send(priority, text)
        if self.syslog.failed:
            self.retry = now + 60.0


def parse_args(argv):
    config = None
    args = list(argv)
    while args:
        opt = args.pop(0)
        if opt in ("-h", "--help"):
            return "help", None
        if opt == "-C":
            if not args:
                raise SetupError("option -C needs a value", EX_USAGE)
            config = args.pop(0)
        elif opt.startswith("-C") and len(opt) > 2:
            config = opt[2:]
        else:
            raise SetupError("unexpected argument %r" % opt[:60], EX_USAGE)
    return "run", config


def main(argv):
    """``mm-handler socketmap ...``; returns the exit status."""
    log = Logger()
    try:
        mode, config = parse_args(argv)
        if mode == "help":
            sys.stdout.write(USAGE)
            return EX_OK
        try:
            settings = load(config_path(config)).check_all()
        except ConfigError as exc:
            raise SetupError(str(exc), EX_CONFIG) from None
        log.settings = settings
        try:
            server = Server(settings, log)
        except MapsError as exc:
            raise SetupError(str(exc), exc.code) from None
        raise_file_limit(server.max_connections, log)
        asyncio.run(server.serve())
        return EX_OK
    except SetupError as exc:
        log(LOG_ERR, "socketmap: not started: %s" % exc)
        if exc.code == EX_USAGE:
            sys.stderr.write(USAGE)
        return exc.code
    except Exception as exc:        # noqa: BLE001 - one line, not a traceback
        log(LOG_ERR, "socketmap: internal error: %s: %s" % (type(exc).__name__, exc))
        return EX_SOFTWARE


# -- for --check -------------------------------------------------------------------

def check_report(settings, timeout=2.0):
    """([lines], [problems]) for `mm-handler --check`: the [socketmap]
    values, and whether a server answers there (the catch-all of the first
    list domain is asked)."""
    conf = settings["socketmap"]
    lines = ["socketmap: listen %s (owner %s, group %s, mode %04o); map names %s" % (
        describe_listen(conf["listen"]), conf["socket_owner"] or "-",
        conf["socket_group"] or "-", conf["socket_mode"],
        " ".join(sorted(conf["map_names"]))),
        "socketmap limits: %d connections, %d-byte requests, request timeout %gs, "
        "idle timeout %s, lookup timeout %gs, LMTP answers kept %gs" % (
            conf["max_connections"], conf["max_request"], conf["request_timeout"],
            "%gs" % conf["idle_timeout"] if conf["idle_timeout"] else "none",
            conf["lookup_timeout"], conf["lmtp_cache"])]
    problems = []
    domains = settings.get("maps", "domains")
    if not domains:
        problems.append("socketmap: [maps] domains is empty: the live lookup "
                        "cannot start")
        return lines, problems
    family, address = conf["listen"]
    key = "@" + domains[0]
    name = sorted(conf["map_names"])[0]
    try:
        if family == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET6 if family == "inet6"
                                 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(netstring(("%s %s" % (name, key)).encode()))
            reply = b""
            while not reply.endswith(b",") and len(reply) < 4096:
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        finally:
            sock.close()
        lines.append("socketmap %s: answering: %s -> %s" % (
            describe_listen(conf["listen"]), key,
            display(reply.partition(b":")[2][:-1].decode("utf-8", "replace"))))
    except OSError as exc:
        lines.append("socketmap %s: no server answers (%s)" % (
            describe_listen(conf["listen"]), exc.strerror or exc))
    return lines, problems
