"""``mm-handler maps``: Sendmail maps that refuse unknown list addresses at RCPT.

Writes, in the output directory (``[maps] output_dir``):

``virtusertable``
    one line per valid list address (every approved action, ``owner-LIST``
    too), sending it to ``LOCAL%3@DOMAIN.PSEUDO`` (``%3`` carries any
    ``+detail``: VERP and confirmation addresses pass); the role addresses
    (``[maps] roles``) to ``[maps] role_target`` or the local alias of the
    same name; and per list domain a catch-all ``@DOMAIN
    error:5.1.1:550 ...`` entry (``[maps] reject``), so that Sendmail answers
    550 5.1.1 at RCPT time for every other address in the domain.  With
    ``reject`` empty there is no catch-all: other addresses are left to
    Sendmail (a domain shared with people's mailboxes).
``mailertable``
    ``.PSEUDO  mailman:%1`` (gives the mailer $h = the real list domain back)
    and ``DOMAIN  mailman:DOMAIN`` per domain, for sites that use it as is
    or merge it into their own.
``virtuser-domains``
    the list domains, one a line, for ``VIRTUSER_DOMAIN_FILE``.

A site's own virtusertable or mailertable lines can be merged in first
(``site_virtusertable``, ``site_mailertable``): their keys win.

Each file is written, fresh (O_EXCL), in a private directory the run makes
inside the output directory; with ``--makemap`` (or ``run_makemap = yes``)
makemap builds its map there; then each is renamed over its final name,
the sources first (Sendmail opens the new map on its next lookup).  All of
it happens under an exclusive flock() on ``OUTPUT_DIR/.mm-handler-maps.lock``,
shared with the Mailman 3 plug-in, and the lists are read under it.  Root
may run this in a directory another user owns: see "writing" below for what
is refused (exit 73) and why.

The lists come from Mailman 2's ``lists_dir`` (registry.Mailman2Lists),
Mailman 3's ``var_dir`` (``lists/<list>.<domain>`` directories, split at
the longest of ``[maps] domains``) or, from the plug-in
(mm_handler.mailman3_mta), Mailman's own list manager.  When the lists
cannot all be examined, nothing is written (exit 69).

This module is never on the delivery path.
"""

import errno
import fcntl
import os
import stat
import sys

from . import registry
from .address import ACTIONS, is_domain, is_list_name, readings
from .config import ConfigError, config_path, load
from .log import LOG_ERR, LOG_INFO, Syslog
from .status import (EX_CANTCREAT, EX_CONFIG, EX_OK, EX_SOFTWARE,
                     EX_UNAVAILABLE, EX_USAGE)

USAGE = """\
usage: mm-handler maps [-C FILE] [--output DIR] [--makemap]

Write Sendmail's virtusertable, mailertable and virtuser-domains sources for
every list (see README.sendmail), atomically, under a lock; with --makemap
(or [maps] run_makemap = yes) build the .db files with makemap too.
"""

LOCK_NAME = ".mm-handler-maps.lock"
MAP_SUFFIX = {"hash": ".db", "btree": ".db", "cdb": ".cdb"}
DEFAULT_REJECT = "error:5.1.1:550 No such list address here"


class MapsError(Exception):
    """The maps could not be written; `code` is the exit status to use."""

    def __init__(self, text, code=EX_CANTCREAT):
        super().__init__(text)
        self.code = code


# -- which addresses ---------------------------------------------------------------

def list_locals(name, actions):
    """Every local part of list `name` for the approved `actions`."""
    out = []
    for action in ACTIONS:
        if action not in actions:
            continue
        out.append(name if action == "post" else name + "-" + action)
        if action == "owner":
            out.append("owner-" + name)
    return out


def split_list_ids(ids, domains):
    """Mailman 3 list ids (``local.domain``) -> [(local, domain)], unmatched.

    The id alone is ambiguous (``a.b.example`` may be ``a@b.example`` or
    ``a.b@example``).  It is split against the configured `domains`, at the
    longest one it ends with: one list per directory, so with both
    ``lists.example.test`` and ``example.test`` configured,
    ``foo.lists.example.test`` is foo@lists.example.test and never also
    foo.lists@example.test.  Ids that end with no domain, or whose local
    part is no safe list name, are returned apart.
    """
    found, unmatched = [], []
    for list_id in ids:
        best = ""
        for domain in domains:
            if len(domain) > len(best) and list_id.endswith("." + domain):
                best = domain
        local = list_id[:-len(best) - 1] if best else ""
        if best and is_list_name(local):
            found.append((local, best))
        else:
            unmatched.append(list_id)
    return found, unmatched


def list_reader(settings):
    """A function that reads ([(list name, domain)], warnings) from the disk.

    The configuration is checked at once (MapsError, exit 78); the lists are
    read only when the function is called, under the maps lock.  Whenever
    the lists directory cannot be examined completely (a permission, an I/O
    error) the function raises MapsError: no maps are better than maps that
    leave a real list out.
    """
    domains = settings.get("maps", "domains")
    if settings.get("mm-handler", "backend") == "mailman2":
        if not domains:
            raise MapsError("[maps] domains is empty: Mailman 2 lists have no "
                            "domain of their own, name the list domains there",
                            EX_CONFIG)
        lists = registry.Mailman2Lists(settings.get("mailman2", "lists_dir"))

        def read():
            names, skipped = _ask(lists.survey)
            warnings = ["skipped %r in %s: %s" % (entry, lists.lists_dir, why)
                        for entry, why in skipped if not entry.startswith(".")]
            return [(n, d) for n in names for d in domains], warnings
        return read
    var_dir = settings.get("mailman3", "var_dir")
    if not var_dir:
        raise MapsError("[mailman3] var_dir is empty: set it to Mailman 3's "
                        "var directory, or let the Mailman 3 plug-in "
                        "(mm_handler.mailman3_mta.Sendmail) write the maps",
                        EX_CONFIG)
    if not domains:
        raise MapsError("[maps] domains is empty: Mailman 3's list directories "
                        "do not say where the list name ends and the domain "
                        "begins; name the list domains there", EX_CONFIG)
    lists = registry.Mailman3Lists(var_dir)

    def read():
        found, unmatched = split_list_ids(_ask(lists.names), domains)
        warnings = ["skipped list %r in %s: in none of the [maps] domains"
                    % (i, lists.lists_dir) for i in unmatched]
        return found, warnings
    return read


def _ask(question):
    try:
        return question()
    except registry.RegistryError as exc:
        raise MapsError("%s; the maps are left as they were" % exc,
                        EX_UNAVAILABLE) from None


def lists_from_settings(settings):
    """[(list name, domain)] from the disk, and a list of warnings."""
    return list_reader(settings)()


# -- what the virtusertable says for one key ---------------------------------------

class Virtuser:
    """The value the generated virtusertable gives for one key, or None.

    The one place that decides it: `mm-handler maps` writes a row for every
    key it has a value for (Tables.virtusertable), and `mm-handler
    socketmap` answers Sendmail's lookups with it, one key at a time.  Pure:
    whether list NAME exists in DOMAIN is the caller's `exists(name,
    domain)`, asked only for safe names (address.readings) in a list domain.

    The first that has the key wins: the site's own entries (`site_rows`,
    the first of a repeated key), the role addresses of each list domain,
    every address of an approved action of a list (``LOCAL%3@DOMAIN.PSEUDO``),
    the catch-all ``@DOMAIN`` ([maps] reject, when not empty).  An alias
    domain (`aliases`, {list domain: alias}) has the same keys, valued as in
    its list domain.  Keys are compared lower-cased, as Sendmail folds them.
    """

    def __init__(self, settings, domains, site_rows=(), aliases=None):
        maps = settings["maps"]
        self.pseudo = maps["pseudo_domain"]
        self.roles = frozenset(maps["roles"])
        self.role_target = maps["role_target"]
        self.reject = maps["reject"]
        self.actions = settings.get("mm-handler", "approved_actions")
        self.home = {domain: domain for domain in domains}
        for domain, alias in (aliases or {}).items():
            self.home.setdefault(alias, domain)
        self.site = {}
        for key, value in site_rows:
            self.site.setdefault(key.lower(), value)

    def value(self, key, exists):
        key = key.lower()
        if key in self.site:
            return self.site[key]
        local, at, domain = key.rpartition("@")
        home = self.home.get(domain) if at else None
        if home is None:
            return None
        if not local:
            return self.reject or None
        if local in self.roles:
            return self.role_target or local
        if self.is_list_address(local, home, exists):
            return "%s%%3@%s.%s" % (local, home, self.pseudo)
        return None

    def is_list_address(self, local, domain, exists):
        """LOCAL@DOMAIN is an address of an approved action of a list that
        `exists`."""
        return any(exists(name, domain)
                    for name in self.candidates(local, domain))

    def candidates(self, local, domain):
        """The lists LOCAL@DOMAIN would be an approved address of, in the
        order address.readings gives them (none with a +detail)."""
        if "+" in local:
            return ()
        return tuple(t.name for t in readings(local + "@" + domain, domain)
                     if t.action in self.actions)


# -- the map sources ---------------------------------------------------------------

class Tables:
    """The three map sources as lists of (key, value) or lines.

    Every [maps] value was checked when the configuration was read
    (config.py); `site` is (virtusertable rows, mailertable rows) of the
    site's own sources, read here when not given.
    """

    def __init__(self, settings, lists, default_domains=(), site=None,
                 aliases=None):
        self.settings = settings
        maps = settings["maps"]
        self.pseudo = maps["pseudo_domain"]
        self.mailer = maps["mailer"]
        self.roles = maps["roles"]
        self.role_target = maps["role_target"]
        # empty: no catch-all, other addresses are left to Sendmail (a
        # domain shared with people's mailboxes)
        self.reject = maps["reject"]
        self.actions = settings.get("mm-handler", "approved_actions")
        # The list domains: every address in them is a list address or refused.
        domains = set(maps["domains"]) or {
            d.lower() for d in default_domains if is_domain(d.lower())}
        if not domains:
            raise MapsError("no list domains: name them in [maps] domains",
                            EX_CONFIG)
        self.domains = sorted(domains)
        pairs = {(n.lower(), d.lower()) for n, d in lists}
        self.lists = sorted((n, d) for n, d in pairs
                            if is_list_name(n) and d in domains)
        self.skipped = sorted("%s@%s" % pair for pair in pairs
                              if pair[1] not in domains or not is_list_name(pair[0]))
        # Alias domains (Mailman 3's IDomain.alias_domain): {list domain:
        # alias}.  Every address of the domain is served at the alias too,
        # rewritten to the list domain's pseudo-domain address, so that the
        # mailer still gets the real list domain as $h.  An alias that is a
        # list domain itself is served as that, not as an alias.
        self.alias_of = {}
        self.ignored_aliases = []       # [(domain, alias, why)]
        for domain, alias in sorted((aliases or {}).items()):
            domain, alias = domain.lower(), (alias or "").lower()
            if domain not in domains:
                continue                # not a list domain: nothing to alias
            why = ("not a domain name" if not is_domain(alias) else
                   "a list domain itself" if alias in domains else
                   "already the alias of another domain"
                   if alias in self.alias_of.values() else None)
            if why:
                self.ignored_aliases.append((domain, alias, why))
            else:
                self.alias_of[domain] = alias
        if site is None:
            site = read_site_maps(settings)
        self.site_virtusertable, self.site_mailertable = site
        self.list_addresses = sum(len(list_locals(n, self.actions))
                                  for n, _ in self.lists)

    def virtusertable(self):
        """(key, value) rows: each key Virtuser has a value for, in the
        order site entries, roles, list addresses, catch-alls."""
        rules = Virtuser(self.settings, self.domains, self.site_virtusertable,
                         self.alias_of)
        pairs = set(self.lists)
        served = self.domains + sorted(self.alias_of.values())
        keys = [key for key, _ in self.site_virtusertable]
        for domain in served:
            keys.extend("%s@%s" % (role, domain) for role in self.roles)
        for name, domain in self.lists:
            for local in list_locals(name, self.actions):
                keys.extend("%s@%s" % (local, where) for where in (
                    domain, self.alias_of.get(domain)) if where)
        if self.reject:
            keys.extend("@" + domain for domain in served)
        rows, seen = [], set()
        for key in keys:
            key = key.lower()
            if key not in seen:
                seen.add(key)
                value = rules.value(key, lambda n, d: (n, d) in pairs)
                if value is not None:
                    rows.append((key, value))
        return rows

    def mailertable(self):
        entries = {}
        order = []
        for key, value in self.site_mailertable + [
                ("." + self.pseudo, "%s:%%1" % self.mailer)] + [
                (d, "%s:%s" % (self.mailer, d)) for d in self.domains] + [
                # an alias domain: the mailer gets the list domain as $h
                (a, "%s:%s" % (self.mailer, d)) for d, a in sorted(
                    self.alias_of.items())]:
            if key.lower() not in entries:
                entries[key.lower()] = value
                order.append(key.lower())
        return [(key, entries[key]) for key in order]

    def header(self, what):
        return ("# %s, written by `mm-handler maps`: %s.\n"
                "# Do not edit: it is rewritten whenever the lists change.\n"
                % (what, self.summary()))

    def summary(self):
        n_lists = len({n for n, _ in self.lists})
        n_alias = len(self.alias_of)
        return "%d list address%s of %d list%s in %d domain%s%s" % (
            self.list_addresses, "" if self.list_addresses == 1 else "es",
            n_lists, "" if n_lists == 1 else "s",
            len(self.domains), "" if len(self.domains) == 1 else "s",
            " (and %d alias domain%s)" % (n_alias, "" if n_alias == 1 else "s")
            if n_alias else "")

    def sources(self):
        """{file name: text} for every map source."""
        def table(what, rows):
            return self.header(what) + "".join(
                "%s\t%s\n" % (key, value) for key, value in rows)
        return {
            "virtusertable": table("virtusertable", self.virtusertable()),
            "mailertable": table("mailertable", self.mailertable()),
            # a class file: one name a line, nothing else
            "virtuser-domains": "".join(d + "\n" for d in self.domains + sorted(
                self.alias_of.values())),
        }


def read_site_maps(settings):
    """(virtusertable rows, mailertable rows) of the site's own sources."""
    maps = settings["maps"]
    return (_site_lines(maps["site_virtusertable"]),
            _site_lines(maps["site_mailertable"]))


def _site_lines(path):
    """(key, value) pairs of a site's own map source, comments skipped."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise MapsError("cannot read %s: %s" % (path, exc.strerror),
                        EX_UNAVAILABLE) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MapsError("%s is not UTF-8 text (byte 0x%02x at offset %d)"
                        % (path, data[exc.start], exc.start), EX_CONFIG) from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if any(c < " " and c != "\t" or c == "\x7f" for c in line):
            raise MapsError("%s line %d: a control character" % (path, number),
                            EX_CONFIG)
        parts = line.split(None, 1)
        rows.append((parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return rows


# -- writing -----------------------------------------------------------------------
#
# The output directory belongs to the user that writes the maps (the list
# user, or Mailman's), and root runs here too: that user may have planted
# anything in it.  So, as every user:
#
# - the directory is opened once (O_NOFOLLOW) and everything after is done
#   relative to that descriptor; it must not be writable by group or others;
# - no name in it is ever opened for writing: each run makes a private
#   directory of its own (mode 0700, random name) inside it, creates fresh
#   files there (O_CREAT|O_EXCL|O_NOFOLLOW), runs makemap in it (its cwd,
#   set with fchdir on the open descriptor: it never sees a path it could be
#   raced on), and
#   renames the results over the final names (a rename replaces a link or
#   whatever else is there; it never writes through it);
# - links, FIFOs and other non-regular files at the final names or the lock
#   are refused (they are no accident);
# - the lock is opened read-only (flock needs no more), O_NOFOLLOW and
#   O_NONBLOCK (a FIFO does not hang the run), checked with fstat, created
#   0644 and never truncated or changed after;
# - when root writes, every file it creates is given to the directory's
#   owner, so that the maps look the same whoever wrote them last.

SOURCE_NAMES = ("virtusertable", "mailertable", "virtuser-domains")
MAPPED_NAMES = ("virtusertable", "mailertable")
KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
         (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


class Unsafe(MapsError):
    """Something in or about the output directory that no honest run made."""

    def __init__(self, text):
        super().__init__(text + ": refused, nothing written", EX_CANTCREAT)


def _kind(mode):
    for test, name in KINDS:
        if test(mode):
            return name
    return "an odd file"


class OutputDir:
    """The output directory, opened once and checked; see the notes above."""

    def __init__(self, path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                              | os.O_CLOEXEC)
        except FileNotFoundError:
            raise MapsError("output directory %s does not exist" % path) from None
        except OSError as exc:
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                mode = 0
            if stat.S_ISLNK(mode):
                raise Unsafe("output directory %s is a symbolic link" % path) from None
            if mode and not stat.S_ISDIR(mode):
                raise MapsError("output directory %s is not a directory" % path) from None
            raise MapsError("cannot open output directory %s: %s"
                            % (path, exc.strerror)) from None
        st = os.fstat(self.fd)
        self.owner = (st.st_uid, st.st_gid)
        mode = stat.S_IMODE(st.st_mode)
        writable = ("others" if mode & 0o002 else "its group" if mode & 0o020 else "")
        if writable:
            self.close()
            raise Unsafe("output directory %s is writable by %s (mode %04o); make it "
                         "0755, owned by the user that writes the maps"
                         % (path, writable, mode))

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def name(self, name):
        return os.path.join(self.path, name)

    def check_entries(self, names):
        """Each final name is absent or a regular file."""
        for name in names:
            try:
                mode = os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise MapsError("cannot examine %s: %s"
                                % (self.name(name), exc.strerror)) from None
            if stat.S_ISLNK(mode):
                raise Unsafe("%s is a symbolic link" % self.name(name))
            if not stat.S_ISREG(mode):
                raise Unsafe("%s is not a regular file (%s)" % (self.name(name),
                                                                _kind(mode)))

    def give(self, fd):
        """As root: the new file is the directory owner's; 0644 in any case."""
        os.fchmod(fd, 0o644)
        if os.geteuid() == 0 and os.fstat(fd).st_uid != self.owner[0]:
            os.fchown(fd, *self.owner)

    def lock(self):
        return Lock(self)


class Lock:
    """An exclusive flock() on OUTPUT_DIR/.mm-handler-maps.lock (see above)."""

    def __init__(self, directory):
        self.dir = directory if isinstance(directory, OutputDir) else None
        self.path = (directory.name(LOCK_NAME) if self.dir
                     else os.path.join(directory, LOCK_NAME))
        self.fd = None

    def _open(self, dir_fd):
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        for _ in range(10):
            try:
                fd = os.open(LOCK_NAME, flags | os.O_CREAT | os.O_EXCL, 0o644,
                             dir_fd=dir_fd)
                return fd, True
            except FileExistsError:
                pass
            try:
                return os.open(LOCK_NAME, flags, dir_fd=dir_fd), False
            except FileNotFoundError:
                continue                    # removed in between: create it
        raise MapsError("cannot open lock file %s: it keeps disappearing" % self.path)

    def __enter__(self):
        own = None
        if self.dir is None:
            own = self.dir = OutputDir(os.path.dirname(self.path) or ".")
        try:
            try:
                fd, created = self._open(self.dir.fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise Unsafe("lock file %s is a symbolic link" % self.path) from None
                raise MapsError("cannot open lock file %s: %s"
                                % (self.path, exc.strerror)) from None
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                os.close(fd)
                raise Unsafe("lock file %s is not a regular file (%s)"
                             % (self.path, _kind(mode)))
            if created:
                self.dir.give(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.fd = fd
        except BaseException:
            if own is not None:
                own.close()
            raise
        self._own = own
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        if self._own is not None:
            self._own.close()


class Workspace:
    """A private directory (0700, random name) inside the output directory."""

    def __init__(self, out):
        self.out = out
        for _ in range(100):
            name = ".mm-handler-maps-%s" % os.urandom(8).hex()
            try:
                os.mkdir(name, 0o700, dir_fd=out.fd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise MapsError("cannot write in %s: %s"
                                % (out.path, exc.strerror)) from None
            break
        else:
            raise MapsError("cannot make a private directory in %s" % out.path)
        self.name = name
        try:
            self.fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                              | os.O_CLOEXEC, dir_fd=out.fd)
        except OSError:
            raise Unsafe("%s was replaced as soon as it was made"
                         % out.name(name)) from None
        st = os.fstat(self.fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            os.close(self.fd)
            raise Unsafe("%s was replaced as soon as it was made" % out.name(name))
        self.ident = (st.st_dev, st.st_ino)

    def create(self, base, data):
        """A new file `.BASE.XXXXXXXX` holding `data`; returns its name."""
        for _ in range(100):
            name = ".%s.%s" % (base, os.urandom(4).hex())
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
            except FileExistsError:
                continue
            break
        else:
            raise MapsError("cannot find a free temporary name in %s" % self.out.path)
        try:
            while data:
                data = data[os.write(fd, data):]
            self.out.give(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        return name

    def makemap(self, makemap, map_type, source, suffix, final):
        """Build SOURCE + suffix with makemap, run inside this directory."""
        import subprocess
        from functools import partial
        output = source + suffix
        if _lexists(output, self.fd):
            raise Unsafe("%s appeared in a private directory" % output)
        stdin = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=self.fd)
        try:
            proc = subprocess.run([makemap, map_type, source], stdin=stdin,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=300, pass_fds=(self.fd,),
                                  # its cwd is this directory, reached by the
                                  # open descriptor (no path to race; no /proc
                                  # needed, so the same on every platform)
                                  preexec_fn=partial(os.fchdir, self.fd),
                                  env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        except OSError as exc:
            raise MapsError("cannot run %s: %s" % (makemap, exc.strerror),
                            EX_UNAVAILABLE) from None
        except subprocess.TimeoutExpired:
            raise MapsError("%s %s %s took more than 300 s" % (
                makemap, map_type, final), EX_UNAVAILABLE) from None
        finally:
            os.close(stdin)
        if proc.returncode != 0:
            raise MapsError("%s %s %s failed (exit %d): %s" % (
                makemap, map_type, final, proc.returncode,
                proc.stdout.decode("utf-8", "replace").strip()), EX_UNAVAILABLE)
        # what makemap made: a regular file, opened without following or
        # blocking, then made the directory owner's 0644 (makemap gives
        # 0640; Sendmail, as root, skips a map that is not root's unless
        # others may read it)
        try:
            before = os.stat(output, dir_fd=self.fd, follow_symlinks=False)
            fd = os.open(output, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as exc:
            raise MapsError("%s %s %s made no %s: %s" % (
                makemap, map_type, final, final + suffix, exc.strerror),
                EX_UNAVAILABLE) from None
        try:
            st = os.fstat(fd)
            if not (stat.S_ISREG(st.st_mode) and stat.S_ISREG(before.st_mode)
                    and (st.st_dev, st.st_ino) == (before.st_dev, before.st_ino)):
                raise Unsafe("%s made %s, not a regular file" % (makemap, _kind(
                    st.st_mode if not stat.S_ISREG(st.st_mode) else before.st_mode)))
            self.out.give(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        return output

    def install(self, staged):
        """rename() each (temporary name, final name), then sync the directory."""
        for name, final in staged:
            os.rename(name, final, src_dir_fd=self.fd, dst_dir_fd=self.out.fd)
        os.fsync(self.out.fd)

    def remove(self):
        """Remove what is left, then the directory (if it is still ours)."""
        try:
            for name in os.listdir(self.fd):
                try:
                    os.unlink(name, dir_fd=self.fd)
                except OSError:
                    pass
        finally:
            os.close(self.fd)
        try:
            st = os.stat(self.name, dir_fd=self.out.fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self.ident:
                os.rmdir(self.name, dir_fd=self.out.fd)
        except OSError:
            pass


def _lexists(name, dir_fd):
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def write_maps(settings, lists, output_dir=None, run_makemap=None,
               default_domains=(), alias_domains=None):
    """Write every map source (and .db with makemap) atomically, under the lock.

    `lists` ([(name, domain)]), `default_domains` and `alias_domains`
    ({list domain: alias domain}, Mailman 3's) may be functions: they are
    then called under the lock, in that order, so that the list set is the
    one of the moment the maps are written.  Returns a Report.  MapsError on failure
    (Unsafe when the directory, the lock or a final name is not what it
    should be); whatever was there before stays in place when a step fails.
    """
    maps = settings["maps"]
    output_dir = output_dir or maps["output_dir"]
    if run_makemap is None:
        run_makemap = maps["run_makemap"]
    suffix = MAP_SUFFIX[maps["map_type"]]
    site = read_site_maps(settings)
    finals = list(SOURCE_NAMES) + (
        [name + suffix for name in MAPPED_NAMES] if run_makemap else [])
    with OutputDir(output_dir) as out:
        out.check_entries(finals)           # refuse before even the lock is made
        with out.lock():
            out.check_entries(finals)
            tables = Tables(settings, lists() if callable(lists) else lists,
                            default_domains() if callable(default_domains)
                            else default_domains, site,
                            alias_domains() if callable(alias_domains)
                            else alias_domains)
            sources = tables.sources()
            work = Workspace(out)
            try:
                staged, built = [], []
                for name in SOURCE_NAMES:
                    temp = work.create(name, sources[name].encode("utf-8"))
                    staged.append((temp, name))
                    if run_makemap and name in MAPPED_NAMES:
                        built.append((work.makemap(maps["makemap"], maps["map_type"],
                                                   temp, suffix, out.name(name)),
                                      name + suffix))
                # the sources first, then the maps Sendmail reads
                work.install(staged + built)
            except OSError as exc:
                raise MapsError("cannot install the maps in %s: %s"
                                % (output_dir, exc.strerror)) from None
            finally:
                work.remove()
    return Report(output_dir, tables, run_makemap, suffix)


class Report:
    def __init__(self, output_dir, tables, made, suffix):
        self.output_dir = output_dir
        self.tables = tables
        self.made = made
        self.suffix = suffix

    def __str__(self):
        return "wrote %s in %s%s" % (
            self.tables.summary(), self.output_dir,
            " (and the %s maps)" % self.suffix if self.made else "")


# -- the command -------------------------------------------------------------------

def parse_args(argv):
    config = output = None
    makemap = None
    args = list(argv)
    while args:
        opt = args.pop(0)
        if opt in ("-h", "--help"):
            return "help", None, None, None
        if opt in ("-C", "--output"):
            if not args:
                raise MapsError("option %s needs a value" % opt, EX_USAGE)
            value = args.pop(0)
            if opt == "-C":
                config = value
            else:
                output = value
        elif opt.startswith("-C") and len(opt) > 2:
            config = opt[2:]
        elif opt.startswith("--output="):
            output = opt[len("--output="):]
        elif opt == "--makemap":
            makemap = True
        else:
            raise MapsError("unexpected argument %r" % opt[:60], EX_USAGE)
    if output is not None and not output.startswith("/"):
        output = os.path.abspath(output)
    return "maps", config, output, makemap


def main(argv):
    """``mm-handler maps ...``; returns the exit status.

    Every outcome is one line on stdout (written) or stderr (not written,
    and why: warnings first) and one syslog line.
    """
    log = None
    try:
        mode, config, output, makemap = parse_args(argv)
        if mode == "help":
            sys.stdout.write(USAGE)
            return EX_OK
        try:
            settings = load(config_path(config)).check_all()
        except ConfigError as exc:
            raise MapsError(str(exc), EX_CONFIG) from None
        log = Syslog(settings.get("mm-handler", "syslog_socket"),
                     settings.get("mm-handler", "syslog_facility"))
        read = list_reader(settings)

        def lists():                # called under the lock
            found, warnings = read()
            for warning in warnings:
                sys.stderr.write("mm-handler maps: warning: %s\n" % warning)
                log.send(LOG_ERR, "maps: warning: %s" % warning)
            return found
        report = write_maps(settings, lists, output, makemap or None)
        sys.stdout.write("mm-handler maps: %s\n" % report)
        log.send(LOG_INFO, "maps: %s" % report)
        return EX_OK
    except MapsError as exc:
        sys.stderr.write("mm-handler maps: %s\n" % exc)
        if exc.code == EX_USAGE:
            sys.stderr.write(USAGE)
        else:
            (log or Syslog()).send(LOG_ERR, "maps: %s: %s" % (
                "refused" if isinstance(exc, Unsafe) else "failed", exc))
        return exc.code
    except Exception as exc:       # noqa: BLE001 - one line, not a traceback
        sys.stderr.write("mm-handler maps: internal error: %s: %s\n"
                         % (type(exc).__name__, exc))
        (log or Syslog()).send(LOG_ERR, "maps: internal error: %s: %s"
                               % (type(exc).__name__, exc))
        return EX_SOFTWARE
