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

Each file is written as ``NAME.new`` and renamed over ``NAME``; with
``--makemap`` (or ``run_makemap = yes``) makemap builds ``NAME.new.db``,
which is renamed over ``NAME.db`` (Sendmail opens the new map on its next
lookup).  All of it happens under an exclusive flock() on
``OUTPUT_DIR/.mm-handler-maps.lock``, shared with the Mailman 3 plug-in.

The lists come from Mailman 2's ``lists_dir``, Mailman 3's ``var_dir``
(``lists/<list>.<domain>`` directories, split with ``[maps] domains``) or,
from the plug-in (mm_handler.mailman3_mta), Mailman's own list manager.

This module is never on the delivery path.
"""

import fcntl
import os
import sys

from .address import ACTIONS, is_domain, is_list_name
from .config import ConfigError, config_path, load
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
    """Mailman 3 list ids (``local.domain``) -> [(local, domain)].

    The id alone is ambiguous (``a.b.example`` may be ``a@b.example`` or
    ``a.b@example``), so it is split against the configured `domains`;
    every split that gives a valid list name is kept (the LMTP server stays
    the final judge).  Ids that match no domain are returned apart.
    """
    found, unmatched = [], []
    for list_id in ids:
        hits = []
        for domain in domains:
            if list_id.endswith("." + domain):
                local = list_id[:-len(domain) - 1]
                if is_list_name(local):
                    hits.append((local, domain))
        if hits:
            found.extend(hits)
        else:
            unmatched.append(list_id)
    return found, unmatched


def lists_from_settings(settings):
    """[(list name, domain)] from the disk, and a list of warnings."""
    domains = domains_setting(settings)
    if settings.get("mm-handler", "backend") == "mailman2":
        lists_dir = settings.get("mailman2", "lists_dir")
        if not domains:
            raise MapsError("[maps] domains is empty: Mailman 2 lists have no "
                            "domain of their own, name the list domains there",
                            EX_CONFIG)
        names = _listdir(lists_dir)
        good = [n for n in names if is_list_name(n) and (
            os.path.exists(os.path.join(lists_dir, n, "config.pck"))
            or os.path.exists(os.path.join(lists_dir, n, "config.db")))]
        warnings = ["skipped %r in %s: not a list" % (n, lists_dir)
                    for n in names if n not in good and not n.startswith(".")]
        return [(n, d) for n in good for d in domains], warnings
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
    lists_dir = os.path.join(var_dir, "lists")
    found, unmatched = split_list_ids(_listdir(lists_dir), domains)
    warnings = ["skipped list %r in %s: in none of the [maps] domains"
                % (i, lists_dir) for i in unmatched]
    return found, warnings


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        raise MapsError("cannot list %s: %s" % (path, exc.strerror),
                        EX_UNAVAILABLE) from None


def domains_setting(settings):
    domains = [d.lower() for d in settings.get("maps", "domains")]
    bad = [d for d in domains if not is_domain(d)]
    if bad:
        raise MapsError("[maps] domains: %r is not a domain name" % bad[0],
                        EX_CONFIG)
    return domains


# -- the map sources ---------------------------------------------------------------

def _check_value(key, text):
    """A map value from the configuration: printable ASCII on one line."""
    if not all(" " <= c < "\x7f" for c in text):
        raise MapsError("[maps] %s must be printable ASCII on one line" % key,
                        EX_CONFIG)
    return text.strip()


class Tables:
    """The three map sources as lists of (key, value) or lines."""

    def __init__(self, settings, lists, default_domains=()):
        maps = settings["maps"]
        self.pseudo = maps["pseudo_domain"].strip(".").lower()
        if not is_domain(self.pseudo):
            raise MapsError("[maps] pseudo_domain %r is not a domain name"
                            % maps["pseudo_domain"], EX_CONFIG)
        self.mailer = maps["mailer"]
        if not (self.mailer and all(c.isascii() and (c.isalnum() or c in "_-")
                                    for c in self.mailer)):
            raise MapsError("[maps] mailer %r is not a Sendmail mailer name"
                            % self.mailer, EX_CONFIG)
        self.roles = [r.lower() for r in maps["roles"]]
        for role in self.roles:
            if not all(c.isascii() and (c.isalnum() or c in "._-") for c in role):
                raise MapsError("[maps] roles: %r is not a local part" % role,
                                EX_CONFIG)
        self.role_target = _check_value("role_target", maps["role_target"])
        # empty: no catch-all, other addresses are left to Sendmail (a
        # domain shared with people's mailboxes)
        self.reject = _check_value("reject", maps["reject"])
        if self.reject and not self.reject.startswith("error:"):
            raise MapsError("[maps] reject must be a Sendmail error: value, e.g. "
                            "%r, or empty" % DEFAULT_REJECT, EX_CONFIG)
        self.actions = settings.get("mm-handler", "approved_actions")
        # The list domains: every address in them is a list address or refused.
        domains = set(domains_setting(settings)) or {
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
        self.site_virtusertable = _site_lines(maps["site_virtusertable"])
        self.site_mailertable = _site_lines(maps["site_mailertable"])
        self.list_addresses = sum(len(list_locals(n, self.actions))
                                  for n, _ in self.lists)

    def virtusertable(self):
        entries = {}
        order = []

        def add(key, value):
            key = key.lower()
            if key not in entries:
                entries[key] = value
                order.append(key)

        for key, value in self.site_virtusertable:
            add(key, value)
        for domain in self.domains:
            for role in self.roles:
                add("%s@%s" % (role, domain), self.role_target or role)
        for name, domain in self.lists:
            for local in list_locals(name, self.actions):
                add("%s@%s" % (local, domain),
                    "%s%%3@%s.%s" % (local, domain, self.pseudo))
        if self.reject:
            for domain in self.domains:
                add("@" + domain, self.reject)
        return [(key, entries[key]) for key in order]

    def mailertable(self):
        entries = {}
        order = []
        for key, value in self.site_mailertable + [
                ("." + self.pseudo, "%s:%%1" % self.mailer)] + [
                (d, "%s:%s" % (self.mailer, d)) for d in self.domains]:
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
        return "%d list address%s of %d list%s in %d domain%s" % (
            self.list_addresses, "" if self.list_addresses == 1 else "es",
            n_lists, "" if n_lists == 1 else "s",
            len(self.domains), "" if len(self.domains) == 1 else "s")

    def sources(self):
        """{file name: text} for every map source."""
        def table(what, rows):
            return self.header(what) + "".join(
                "%s\t%s\n" % (key, value) for key, value in rows)
        return {
            "virtusertable": table("virtusertable", self.virtusertable()),
            "mailertable": table("mailertable", self.mailertable()),
            # a class file: one name a line, nothing else
            "virtuser-domains": "".join(d + "\n" for d in self.domains),
        }


def _site_lines(path):
    """(key, value) pairs of a site's own map source, comments skipped."""
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise MapsError("cannot read %s: %s" % (path, exc.strerror),
                        EX_UNAVAILABLE) from None
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        rows.append((parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return rows


# -- writing -----------------------------------------------------------------------

class Lock:
    """An exclusive flock() on OUTPUT_DIR/.mm-handler-maps.lock."""

    def __init__(self, directory):
        self.path = os.path.join(directory, LOCK_NAME)
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise MapsError("cannot open lock file %s: %s"
                            % (self.path, exc.strerror)) from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _write_new(path, text):
    """Write `text` to path + '.new', flushed to disk; returns that name."""
    new = path + ".new"
    try:
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(new, 0o644)
    except OSError as exc:
        raise MapsError("cannot write %s: %s" % (new, exc.strerror)) from None
    return new


def _makemap(makemap, map_type, source):
    """makemap TYPE SOURCE < SOURCE (builds SOURCE + suffix)."""
    import subprocess
    try:
        with open(source, "rb") as stdin:
            proc = subprocess.run([makemap, map_type, source], stdin=stdin,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=300, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except OSError as exc:
        raise MapsError("cannot run %s: %s" % (makemap, exc.strerror),
                        EX_UNAVAILABLE) from None
    except subprocess.TimeoutExpired:
        raise MapsError("%s %s %s took more than 300 s" % (makemap, map_type, source),
                        EX_UNAVAILABLE) from None
    if proc.returncode != 0:
        raise MapsError("%s %s %s failed (exit %d): %s" % (
            makemap, map_type, source, proc.returncode,
            proc.stdout.decode("utf-8", "replace").strip()), EX_UNAVAILABLE)


def write_maps(settings, lists, output_dir=None, run_makemap=None,
               default_domains=()):
    """Write every map source (and .db with makemap) atomically, under the lock.

    Returns a Report.  MapsError on failure; whatever was there before stays
    in place when a step fails.
    """
    maps = settings["maps"]
    output_dir = output_dir or maps["output_dir"]
    if run_makemap is None:
        run_makemap = maps["run_makemap"]
    tables = Tables(settings, lists, default_domains)
    sources = tables.sources()
    suffix = MAP_SUFFIX[maps["map_type"]]
    if not os.path.isdir(output_dir):
        raise MapsError("output directory %s does not exist" % output_dir)
    with Lock(output_dir):
        staged = []         # (new, final) renames, done only when all succeed
        try:
            for name, text in sources.items():
                path = os.path.join(output_dir, name)
                new = _write_new(path, text)
                staged.append((new, path))
                if run_makemap and name != "virtuser-domains":
                    _makemap(maps["makemap"], maps["map_type"], new)
                    staged.append((new + suffix, path + suffix))
                    # makemap gives 0640; Sendmail (as root) refuses a map
                    # that is not root's unless "other" may read it
                    os.chmod(new + suffix, 0o644)
            # the sources first, then the maps Sendmail reads
            for new, final in sorted(staged, key=lambda s: s[1].endswith(suffix)):
                os.rename(new, final)
        except OSError as exc:
            raise MapsError("cannot install the maps in %s: %s"
                            % (output_dir, exc.strerror)) from None
        finally:
            for new, _ in staged:
                try:
                    os.unlink(new)
                except OSError:
                    pass
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
    """``mm-handler maps ...``; returns the exit status."""
    try:
        mode, config, output, makemap = parse_args(argv)
        if mode == "help":
            sys.stdout.write(USAGE)
            return EX_OK
        try:
            settings = load(config_path(config))
        except ConfigError as exc:
            raise MapsError(str(exc), EX_CONFIG) from None
        lists, warnings = lists_from_settings(settings)
        for warning in warnings:
            sys.stderr.write("mm-handler maps: warning: %s\n" % warning)
        report = write_maps(settings, lists, output, makemap or None)
        sys.stdout.write("mm-handler maps: %s\n" % report)
        return EX_OK
    except MapsError as exc:
        sys.stderr.write("mm-handler maps: %s\n" % exc)
        if exc.code == EX_USAGE:
            sys.stderr.write(USAGE)
        return exc.code
    except Exception as exc:       # noqa: BLE001 - one line, not a traceback
        sys.stderr.write("mm-handler maps: internal error: %s: %s\n"
                         % (type(exc).__name__, exc))
        return EX_SOFTWARE
