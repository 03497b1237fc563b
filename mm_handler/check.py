"""``mm-handler --check``: tell a person what the configuration amounts to.

Not on the delivery path, so it may take its time: it lists the lists,
greets every LMTP server, looks at the wrapper, and looks at the Sendmail
side the way Sendmail will see it (below).  Exit 0 when delivery could
work, 78 (EX_CONFIG) when something needs fixing.

Every finding is a ``FAIL`` line (counted: exit 78) or a ``WARN`` line (not
fatal), followed by one ``fix:`` line saying what to run.

The Sendmail side is checked only where ``mm-handler maps`` has written
something in ``[maps] output_dir``; a site without those maps gets one
neutral line.  Then:

- ``[maps] sendmail_cf`` (the .cf Sendmail reads; /etc/mail/sendmail.cf
  while config.SCHEMA has no such key) must exist and name our
  maps: a ``Kvirtuser`` map (or a member of a ``sequence`` map of that
  name) reading ``OUTPUT_DIR/virtusertable`` with the class of ``[maps]
  map_type``, a ``Kmailertable`` map (ours, or the site's own, which must
  then route ``.PSEUDO_DOMAIN`` to the mailer), and the mailer
  ``M<[maps] mailer>`` whose P= is a program its U= user can run;
- each map Sendmail opens (the .db or .cdb of the virtusertable and the
  mailertable) and every directory above it must pass the checks Sendmail
  makes when it opens a map (see "Sendmail's safe-file rules" below), and
  what ``mm-handler maps`` itself needs (no link or odd file at a final
  name, an output directory that is no link and not writable by group or
  others);
- each map is newer than its source (else Sendmail answers from the old
  map: run makemap);
- the lists in the virtusertable are the lists on disk: a list missing from
  the maps is refused at RCPT (FAIL), an entry for a list that is gone is
  only accepted at RCPT and refused by mm-handler (WARN).

Not on the delivery path: imports are free here.
"""

import errno
import grp
import os
import pwd
import stat
import subprocess
import sys

from . import maps, registry
from .address import ACTIONS
from .status import EX_CONFIG, EX_OK

DEFAULT_SENDMAIL_CF = "/etc/mail/sendmail.cf"
STEP_NOTE = ("expected at README.sendmail step 2, before Mailman is set up "
             "(step 3g): run --check again then")


class Findings:
    """What --check prints: plain lines, FAIL and WARN findings with a fix."""

    def __init__(self, out):
        self.out = out
        self.fails = []
        self.warns = []
        self.early = 0          # fails that are expected before Mailman runs

    def say(self, text):
        self.out.write(text + "\n")

    def _finding(self, kind, text, fix):
        self.say("%s %s" % (kind, text))
        if fix:
            self.say("     fix: %s" % fix)

    def fail(self, text, fix=None, early=False):
        self.fails.append(text)
        self.early += bool(early)
        self._finding("FAIL", text, fix)

    def warn(self, text, fix=None):
        self.warns.append(text)
        self._finding("WARN", text, fix)

    def result(self):
        def count(n, word):
            return "%d %s%s" % (n, word, "" if n == 1 else "s")
        warned = (", " + count(len(self.warns), "warning")) if self.warns else ""
        if not self.fails:
            return "result: OK" + warned
        text = "result: " + count(len(self.fails), "problem") + warned
        if self.early == len(self.fails):
            text += " (%s)" % STEP_NOTE
        return text


def run_check(settings, out=sys.stdout):
    f = Findings(out)
    backend = settings.get("mm-handler", "backend")
    f.say("config %s: OK" % settings.path)
    f.say("backend: %s" % backend)
    f.say("approved actions: %s" % " ".join(
        sorted(settings.get("mm-handler", "approved_actions"))))
    f.say("unknown lists: %s; unapproved actions: %s" % (
        settings.get("mm-handler", "unknown_list"),
        settings.get("mm-handler", "unapproved_action")))
    lists = registry.for_settings(settings)
    names = None                    # None: not known (not checked, or failed)
    if isinstance(lists, registry.NoLists):
        f.say("lists: not checked on disk ([mailman3] var_dir is empty); "
              "the LMTP server decides")
    else:
        names = _list_names(f, lists, backend)
    if backend == "mailman2":
        wrapper = settings.get("mailman2", "wrapper")
        if os.access(wrapper, os.X_OK):
            f.say("wrapper %s: executable" % wrapper)
        else:
            f.fail("wrapper %s: missing or not executable by uid %d"
                   % (wrapper, os.geteuid()),
                   "set [mailman2] wrapper to Mailman 2's mail/mailman "
                   "(Debian: /usr/lib/mailman/mail/mailman)")
    else:
        _check_lmtp(f, settings)
    SendmailSide(settings, f, names).check()
    if settings.written("socketmap"):
        from .socketmap import check_report
        lines, problems = check_report(settings)
        for line in lines:
            f.say(line)
        for problem in problems:
            f.fail(problem, "fix [socketmap] (README.sendmail section 11)")
    else:
        f.say("socketmap: no [socketmap] section (the live lookup is not used)")
    f.say(f.result())
    return EX_OK if not f.fails else EX_CONFIG


def _list_names(f, lists, backend):
    try:
        names = lists.names()
    except (registry.RegistryError, OSError) as exc:
        if backend == "mailman3" and not os.path.lexists(lists.lists_dir):
            f.fail("lists: %s" % exc, "none until Mailman 3 creates its first "
                   "list: %s; otherwise set [mailman3] var_dir to Mailman 3's var "
                   "directory (the one that holds lists/)" % STEP_NOTE, early=True)
        else:
            f.fail("lists: %s" % exc, "make %s readable and searchable by uid "
                   "%d, or set [%s] %s" % (lists.lists_dir, os.geteuid(), backend,
                                           "lists_dir" if backend == "mailman2"
                                           else "var_dir"))
        return None
    if names:
        f.say("lists in %s: %d: %s" % (lists.lists_dir, len(names),
                                       " ".join(names[:50])))
    else:
        f.say("lists in %s: 0 - no lists yet: expected until the first list "
              "is created (README.sendmail step 3g or 3h); nothing to fix"
              % lists.lists_dir)
    return names


def _check_lmtp(f, settings):
    from . import lmtp
    for endpoint in settings.get("mailman3", "lmtp"):
        name = lmtp.describe_endpoint(endpoint)
        try:
            conn = lmtp.Connection(endpoint, min(
                10.0, settings.get("mailman3", "timeout")))
            try:
                greeting = conn.reply()
            finally:
                conn.close()
            if greeting.code == 220:
                f.say("LMTP %s: reachable: %s" % (name, greeting))
            else:
                f.fail("LMTP %s: answered %s" % (name, greeting),
                       "point [mailman3] lmtp at Mailman 3's LMTP runner "
                       "([mta] lmtp_host:lmtp_port in mailman.cfg)")
        except lmtp.ExchangeError as exc:
            f.fail("LMTP %s: not reachable: %s" % (name, exc),
                   "start Mailman 3 (mailman start), or set [mailman3] lmtp to "
                   "its [mta] lmtp_host:lmtp_port; %s" % STEP_NOTE, early=True)


# -- the sendmail.cf, read as Sendmail reads it ----------------------------------
#
# Sendmail 8.17's readcf.c: a line that starts with a space or a tab
# continues the one before (fgetfolded()); "#" starts a comment line;
# K lines are makemapentry() + map_parseargs() (map.c), M lines makemailer()
# with munchstring(), O lines setoption(), C and F lines word classes.

# map classes whose file Sendmail opens with safefile(), and the extension
# smdb_add_extension() puts on the K line's file name
MAP_EXTENSIONS = {"hash": ".db", "btree": ".db", "cdb": ".cdb"}


class MapSpec:
    def __init__(self, name, cls, flags, path, args):
        self.name = name            # virtuser
        self.cls = cls              # hash
        self.flags = flags          # {"o"}
        self.path = path            # the K line's file, as written
        self.args = args            # what follows (sequence: member maps)

    def file(self):
        """The file Sendmail opens (smdb_add_extension)."""
        ext = MAP_EXTENSIONS.get(self.cls)
        if not ext or not self.path:
            return None
        return self.path if self.path.endswith(ext) else self.path + ext

    def source(self):
        ext = MAP_EXTENSIONS.get(self.cls, "")
        if self.path and ext and self.path.endswith(ext):
            return self.path[:-len(ext)]
        return self.path

    def __str__(self):
        return "K%s %s%s %s" % (self.name, self.cls, "".join(
            " -" + f for f in sorted(self.flags)), self.path or "")


class SendmailCf:
    """What mm-handler needs to know of a sendmail.cf."""

    def __init__(self, path, text):
        self.path = path
        self.maps = {}
        self.mailers = {}
        self.options = {}
        self.classes = {}           # class -> set of words (C lines)
        self.class_files = {}       # class -> [file] (F lines)
        for line in _cf_lines(text):
            kind, rest = line[0], line[1:]
            if kind == "K":
                spec = _parse_map(rest)
                if spec:
                    self.maps[spec.name] = spec
            elif kind == "M":
                name, fields = _parse_mailer(rest)
                if name:
                    self.mailers[name] = fields
            elif kind == "O" and rest[:1] in (" ", "\t"):
                key, _, value = rest.strip().partition("=")
                self.options[key.strip().lower()] = value.strip()
            elif kind in "CF":
                cls, rest = _class_name(rest)
                if not cls:
                    continue
                if kind == "C":
                    self.classes.setdefault(cls, set()).update(
                        w.lower() for w in rest.split())
                else:
                    words = rest.split()
                    if words[:1] and words[0].startswith("-o"):
                        words = words[1:]
                    if words and words[0].startswith("/"):
                        self.class_files.setdefault(cls, []).append(words[0])

    def dont_blame(self):
        """The DontBlameSendmail flags (lower case), "safe" clearing them."""
        flags = set()
        word = ""
        for c in self.options.get("dontblamesendmail", "") + " ":
            if c.isalnum():
                word += c
                continue
            if word.lower() == "safe":
                flags.clear()
            elif word:
                flags.add(word.lower())
            word = ""
        return flags

    def class_words(self, cls):
        """The words of a class, its files (F lines) read as Sendmail does."""
        words = set(self.classes.get(cls, ()))
        for path in self.class_files.get(cls, ()):
            try:
                with open(path, encoding="latin-1") as f:
                    for line in f:
                        words.update(w.lower() for w in line.split("#")[0].split())
            except OSError:
                pass
        return words


def _same(path, other):
    return bool(path) and os.path.normpath(path) == os.path.normpath(other)


def _cf_lines(text):
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        if raw[:1] in (" ", "\t") and lines:
            lines[-1] += "\n" + raw
        else:
            lines.append(raw)
    return [line for line in lines if line and line[0] != "#"]


def _class_name(rest):
    if rest.startswith("{"):
        end = rest.find("}")
        return (rest[1:end], rest[end + 1:]) if end > 1 else (None, "")
    return (rest[:1], rest[1:]) if rest[:1].strip() else (None, "")


def _parse_map(rest):
    """makemapentry() and map_parseargs(): 'name class [-flags] [file] [args]'."""
    words = rest.split(None, 2)
    if len(words) < 2:
        return None
    name, cls = words[0], words[1].lower()
    p = words[2] if len(words) > 2 else ""
    flags, i, n = set(), 0, len(p)
    while True:
        while i < n and p[i].isspace():
            i += 1
        if i >= n or p[i] != "-":
            break
        i += 1
        flags.add(p[i:i + 1])
        if p[i:i + 1] in ("k", "v"):    # their value may follow white space
            i += 1
            while i < n and p[i].isspace():
                i += 1
        while i < n and not p[i].isspace():
            i += 1
    rest = p[i:].split()
    if cls in ("sequence", "switch"):   # member maps, no file
        return MapSpec(name, cls, flags, None, rest)
    return MapSpec(name, cls, flags, rest[0] if rest else None, rest[1:])


def _parse_mailer(rest):
    """makemailer(): 'name, P=..., F=..., A=...' -> (name, {code: value})."""
    i, n = 0, len(rest)
    while i < n and rest[i] != "," and not rest[i].isspace():
        i += 1
    name, fields = rest[:i], {}
    i += 1
    while i < n:
        while i < n and (rest[i] == "," or rest[i].isspace()):
            i += 1
        if i >= n:
            break
        code = rest[i]
        while i < n and rest[i] not in "=,":
            i += 1
        if i >= n or rest[i] != "=":
            return name, None               # "mailer %s: `=' expected"
        i += 1
        while i < n and rest[i].isspace():
            i += 1
        value, i = _munch(rest, i, ",")
        fields[code] = value.strip()
    return name, fields


def _munch(text, i, delim):
    """munchstring(): up to `delim` outside quotes; backslash escapes."""
    out, quoted, n = [], False, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            i += 1
            out.append({"r": "\r", "n": "\n", "f": "\f", "b": "\b"}.get(
                text[i], text[i]))
        elif c == '"':
            quoted = not quoted
        elif quoted or c != delim:
            out.append(c)
        else:
            break
        i += 1
    return "".join(out), i


# -- Sendmail's safe-file rules ---------------------------------------------------
#
# Sendmail 8.17 opens a hash or btree map read-only in db_map_open(), a cdb
# map in cdb_map_open() (sendmail/map.c), only after
#
#     safefile(file, RunAsUid, RunAsGid, RunAsUserName, sff, S_IREAD, &st)
#
# with sff = SFF_ROOTOK|SFF_REGONLY, plus SFF_NOWLINK unless DontBlameSendmail
# has LinkedMapInWritableDir, plus SFF_SAFEDIRPATH unless it has
# MapInUnsafeDirPath.  What safefile() and safedirpath() (libsmutil/
# safefile.c) then demand, and what is implemented below, rule by rule:
#
#  1. every directory from / down to the map's own (safedirpath()):
#     symbolic links are followed, a link is not judged itself, its target
#     path is, component by component (more than MAXSYMLINKS links: ELOOP);
#     a directory writable by others, or by its group unless
#     GroupWritableDirPathSafe, is unsafe (E_SM_WWDIR, E_SM_GWDIR) unless it
#     has the sticky bit and DontBlameSendmail has TrustStickyBit.  With
#     MapInUnsafeDirPath that is a warning only, but then (SFF_NOWLINK) a map
#     that is a symbolic or hard link in such a path is refused
#     (E_SM_NOSLINK, E_SM_NOHLINK) unless LinkedMapInWritableDir;
#  2. each directory searchable by RunAsUid (root unless RunAsUser): its
#     owner with u+x, its group (RunAsGid, or a group whose members include
#     RunAsUserName) with g+x, else o+x (EACCES) - root is no exception;
#  3. the map itself, a symbolic link followed: it exists (ENOENT: the map
#     is "missing"), is a regular file (E_SM_REGONLY), and is readable by
#     RunAsUid as its permission bits say: owned by RunAsUid or TrustedUser
#     -> u+r, else group RunAsGid or a group of RunAsUserName -> g+r, else
#     o+r (EACCES: a 0640 map of the list user is skipped, "[uid 38, ...
#     mode 4] EACCES" under -d44.5).
#
# A group- or world-writable map file is no reason for Sendmail to refuse
# it (SFF_NOGWFILES and SFF_NOWWFILES are not in sff): --check warns only.

MAXSYMLINKS = 20            # Linux <sys/param.h>
# the DontBlameSendmail flags that change the rules above
MAP_RULES = {"truststickybit": "TrustStickyBit",
             "groupwritabledirpathsafe": "GroupWritableDirPathSafe",
             "mapinunsafedirpath": "MapInUnsafeDirPath",
             "linkedmapinwritabledir": "LinkedMapInWritableDir"}


class SafeFile:
    """safefile() for a map Sendmail opens read-only, as configured."""

    def __init__(self, dont_blame=(), uid=0, gid=0, user="root", trusted_uid=0):
        self.dbs = set(dont_blame)
        self.uid, self.gid, self.user = uid, gid, user
        self.trusted_uid = trusted_uid

    def _in_group(self, gid):
        if gid == self.gid:
            return True
        try:
            return self.user in grp.getgrgid(gid).gr_mem
        except KeyError:
            return False

    def dirpath(self, path, safedirpath, level=0):
        """safedirpath(): None when safe, else (error, directory, stat)."""
        if level > MAXSYMLINKS:
            return ("ELOOP", path, None)
        unsafe = stat.S_IWOTH | (0 if "groupwritabledirpathsafe" in self.dbs
                                 else stat.S_IWGRP)
        for s in _prefixes(path or "/"):
            try:
                st = os.lstat(s)
            except OSError as exc:
                return (errno.errorcode.get(exc.errno, "EIO"), s, None)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(s)
                if not target.startswith("/"):
                    target = os.path.join(os.path.dirname(s), target)
                elif target == s:
                    return ("ELOOP", s, None)
                bad = self.dirpath(target, safedirpath, level + 1)
                if bad:
                    return bad
                continue
            # (without SFF_SAFEDIRPATH a writable directory is only a warning)
            if (safedirpath and st.st_mode & unsafe
                    and not ("truststickybit" in self.dbs
                             and st.st_mode & stat.S_ISVTX)):
                return ("E_SM_WWDIR" if st.st_mode & stat.S_IWOTH else "E_SM_GWDIR",
                        s, st)
            if self.uid != 0:       # "let the OS determine access"
                continue
            if st.st_uid == self.uid and st.st_mode & stat.S_IXUSR:
                continue
            if self._in_group(st.st_gid) and st.st_mode & stat.S_IXGRP:
                continue
            if not st.st_mode & stat.S_IXOTH:
                return ("EACCES", s, st)
        return None

    def map_file(self, fn):
        """None when Sendmail opens map file `fn`, else (error, path, stat)."""
        safedir = "mapinunsafedirpath" not in self.dbs
        nowlink = "linkedmapinwritabledir" not in self.dbs
        directory = fn.rpartition("/")[0] if "/" in fn else "."
        try:
            st, file_error = os.stat(fn), None
        except OSError as exc:
            st, file_error = None, exc.errno
        checkpath, nolink = True, False
        if nowlink and not safedir:
            if self.dirpath(directory, True) is None:
                checkpath = False
            else:
                try:
                    st = os.lstat(fn)
                except OSError as exc:
                    return (errno.errorcode.get(exc.errno, "EIO"), fn, None)
                nolink = True       # the directory is writable: no links
        if checkpath:
            bad = self.dirpath(directory, safedir)
            if bad:
                return bad
        if file_error:
            return (errno.errorcode.get(file_error, "EIO"), fn, None)
        if nolink and stat.S_ISLNK(st.st_mode):
            return ("E_SM_NOSLINK", fn, st)
        if not stat.S_ISREG(st.st_mode):
            return ("E_SM_REGONLY", fn, st)
        if nolink and st.st_nlink != 1:
            return ("E_SM_NOHLINK", fn, st)
        need = stat.S_IRUSR
        if st.st_uid == self.uid or (self.uid == 0 and st.st_uid == self.trusted_uid):
            pass
        elif self._in_group(st.st_gid):
            need >>= 3
        else:
            need >>= 6
        if st.st_mode & need != need:
            return ("EACCES", fn, st)
        return None


def _prefixes(path):
    """The paths safedirpath() looks at: "/", "/a", "/a/b", ... (no . or ..)."""
    out = ["/"] if path.startswith("/") else []
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        if not parts[i - 1] or parts[i - 1] in (".", ".."):
            continue
        out.append("/".join(parts[:i]))
    return out


def _owner(st):
    def name(get, ident):
        try:
            return get(ident)[0]
        except KeyError:
            return str(ident)
    return "%s:%s" % (name(pwd.getpwuid, st.st_uid), name(grp.getgrgid, st.st_gid))


def _describe(verdict, rules):
    """(why Sendmail refuses, the one-line fix) for a safefile() verdict."""
    code, path, st = verdict
    mode = "mode %04o, %s" % (stat.S_IMODE(st.st_mode), _owner(st)) if st else ""
    if code in ("E_SM_WWDIR", "E_SM_GWDIR"):
        who = "others" if code == "E_SM_WWDIR" else "its group"
        if code == "E_SM_WWDIR" and st.st_mode & stat.S_ISVTX:
            return ("directory %s is writable by %s (%s; sticky, but the .cf has no "
                    "DontBlameSendmail=TrustStickyBit)" % (path, who, mode),
                    "move [maps] output_dir out of %s (or confDONT_BLAME_SENDMAIL "
                    "with TrustStickyBit in the .mc)" % path)
        return ("directory %s is writable by %s (%s)" % (path, who, mode),
                "chmod %s %s" % ("o-w" if code == "E_SM_WWDIR" else "g-w", path))
    if code == "EACCES" and st is not None and stat.S_ISDIR(st.st_mode):
        return ("directory %s is not searchable by %s as Sendmail checks it (%s)"
                % (path, rules.user, mode), "chmod o+x %s" % path)
    # the map file itself ("it")
    if code == "EACCES":
        return ("it is not readable by %s as Sendmail checks it (%s: neither "
                "%s's nor the TrustedUser's, so others need read)"
                % (rules.user, mode, rules.user), "chmod 0644 %s" % path)
    if code == "ENOENT":
        return ("%s does not exist" % path, None)
    if code == "E_SM_REGONLY":
        return ("it is not a regular file (%s)" % maps._kind(st.st_mode),
                "rm -r %s" % path)
    if code in ("E_SM_NOSLINK", "E_SM_NOHLINK"):
        return ("it is a %s link in a writable directory path (MapInUnsafeDirPath "
                "without LinkedMapInWritableDir)"
                % ("symbolic" if code == "E_SM_NOSLINK" else "hard"),
                "make the directories above %s safe (chmod go-w)" % path)
    number = getattr(errno, code, None)
    return ("%s: %s" % (path, os.strerror(number) if number else code), None)


# -- the Sendmail side ---------------------------------------------------------------

class SendmailSide:
    """The checks of the module docstring, in the order they are printed."""

    def __init__(self, settings, findings, names):
        self.settings = settings
        self.f = findings
        self.names = names          # the lists on disk; None: not known
        m = settings["maps"]
        self.out_dir = m["output_dir"].rstrip("/") or "/"
        self.map_type = m["map_type"]
        self.suffix = maps.MAP_SUFFIX[self.map_type]
        self.mailer = m["mailer"]
        self.pseudo = m["pseudo_domain"]
        # [maps] sendmail_cf, once config.SCHEMA has it
        self.cf_path = m.get("sendmail_cf") or DEFAULT_SENDMAIL_CF
        self.cf = None
        self.rules = None
        self.program = None         # the mailer's P=, when it is there
        self.done = set()           # (error, path) already reported

    def out(self, name):
        return os.path.join(self.out_dir, name)

    def check(self):
        finals = list(maps.SOURCE_NAMES) + [n + self.suffix for n in maps.MAPPED_NAMES]
        present = [n for n in finals if os.path.lexists(self.out(n))]
        if not present:
            self.f.say("sendmail: no maps in %s ([maps] output_dir): the Sendmail "
                       "side is not checked (a site without mm-handler's SMTP-time "
                       "maps, or before README.sendmail step 3g)" % self.out_dir)
            return
        self.f.say("sendmail: maps in %s: %s" % (self.out_dir, " ".join(present)))
        self.read_cf()
        mailertable = None
        live = False
        if self.cf:
            self.check_mailer()
            live = self.socketmap()
            if not live and self.check_virtuser():
                self.check_virthost()
            mailertable = self.check_mailertable()
        self.check_output_dir(present)
        entries = []
        if not live:
            source = self.out("virtusertable")
            entries.append(("virtusertable", source, source + self.suffix,
                            self.map_type, True))
        if mailertable is not None:
            entries.append(("mailertable", mailertable.source(), mailertable.file(),
                            mailertable.cls,
                            _same(mailertable.source(), self.out("mailertable"))))
        self.check_maps(entries)
        if not live:
            self.compare_lists()

    def socketmap(self):
        """MAILMAN_SOCKETMAP (sendmail/mailman.m4): no virtusertable is read."""
        spec = self.cf.maps.get("mm_handler")
        if spec is None or spec.cls != "socket" or "virtuser" in self.cf.maps:
            return False
        self.f.say("sendmail.cf: %s: list addresses are looked up live (mm-handler "
                   "socketmap); the virtusertable in %s is not read, nor compared "
                   "with the lists" % (spec, self.out_dir))
        return True

    # -- fixes ---------------------------------------------------------------------

    def maps_fix(self):
        """The command that rewrites the maps, as the output directory's owner."""
        command = "%s maps -C %s --makemap" % (self.program or "mm-handler",
                                               self.settings.path)
        try:
            uid = os.stat(self.out_dir).st_uid
            if uid != os.geteuid():
                command = "runuser -u %s -- %s" % (pwd.getpwuid(uid).pw_name, command)
        except (OSError, KeyError):
            pass
        return command

    def cf_fix(self, what):
        return ("%s in your .mc, then m4 your.mc > %s and restart Sendmail "
                "(README.sendmail step 3)" % (what, self.cf_path))

    # -- sendmail.cf ---------------------------------------------------------------

    def read_cf(self):
        try:
            with open(self.cf_path, "rb") as f:
                text = f.read().decode("latin-1")
            st = os.stat(self.cf_path)
        except FileNotFoundError:
            self.f.fail("sendmail.cf %s does not exist: Sendmail is not set up to "
                        "use the maps in %s" % (self.cf_path, self.out_dir),
                        "build it: m4 mailman.mc > %s (README.sendmail step 3b), or "
                        "set [maps] sendmail_cf to the .cf Sendmail reads"
                        % self.cf_path)
            return
        except OSError as exc:
            self.f.fail("sendmail.cf %s: cannot read it: %s" % (self.cf_path,
                                                                  exc.strerror),
                        "run mm-handler --check as root")
            return
        self.cf = SendmailCf(self.cf_path, text)
        options = self.cf.options
        uid, gid, user = 0, 0, "root"
        run_as = options.get("runasuser", "")
        if run_as:
            name, _, group = run_as.partition(":")
            try:
                pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
                uid, gid, user = pw.pw_uid, pw.pw_gid, pw.pw_name
                if group:
                    gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            except (KeyError, ValueError):
                pass
        trusted = 0
        name = options.get("trusteduser", "")
        try:
            trusted = int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid
        except (KeyError, ValueError):
            pass
        self.rules = SafeFile(self.cf.dont_blame(), uid, gid, user, trusted)
        rules = [MAP_RULES[flag] for flag in sorted(self.rules.dbs) if flag in MAP_RULES]
        self.f.say("sendmail.cf %s: maps opened as %s%s, DontBlameSendmail %s" % (
            self.cf_path, user, " (TrustedUser %s)" % name if trusted else "",
            ",".join(rules) or "safe (for maps)"))
        if stat.S_IMODE(st.st_mode) & 0o022:
            self.f.warn("sendmail.cf %s is writable by %s (mode %04o): Sendmail "
                        "warns about dangerous write permissions"
                        % (self.cf_path, "others" if st.st_mode & 0o002 else
                           "its group", stat.S_IMODE(st.st_mode)),
                        "chmod go-w %s" % self.cf_path)

    def check_mailer(self):
        name = self.mailer
        fields = self.cf.mailers.get(name, False)
        if fields is False:
            self.f.fail("sendmail.cf %s defines no mailer %s: Sendmail cannot hand "
                        "list mail to mm-handler" % (self.cf_path, name),
                        self.cf_fix("MAILER(`%s') after MAILER(`smtp')" % name))
            return
        if fields is None:
            self.f.fail("sendmail.cf %s: the M%s line cannot be read (Sendmail: "
                        "\"`=' expected\")" % (self.cf_path, name),
                        self.cf_fix("MAILER(`%s') from sendmail/mailman.m4" % name))
            return
        path = fields.get("P", "")
        fix_path = self.cf_fix("define(`MAILMAN_MAILER_PATH', `/opt/mm-handler/bin/"
                               "mm-handler') before MAILER(`%s')" % name)
        if not path:
            self.f.fail("mailer %s in %s has no P= (no program to run)"
                        % (name, self.cf_path), fix_path)
            return
        if path.startswith("["):
            self.f.warn("mailer %s is Sendmail's built-in P=%s, not mm-handler"
                        % (name, path), "set [maps] mailer to the mailer that runs "
                        "mm-handler, or %s" % fix_path)
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            self.f.fail("mailer %s: P=%s: %s: list mail stays queued (\"Cannot exec\")"
                        % (name, path, exc.strerror),
                        "install mm-handler there (python3 -m venv %s; pip install "
                        "mm-handler), or %s" % (os.path.dirname(os.path.dirname(path)),
                                                fix_path))
            return
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            self.f.fail("mailer %s: P=%s is not an executable file" % (name, path),
                        "chmod 0755 %s" % path)
            return
        self.program = path
        self.f.say("mailer %s: P=%s U=%s A=%s" % (name, path, fields.get("U", "-"),
                                                   fields.get("A", "-")))
        if "U" in fields:
            self.check_mailer_user(name, path, fields["U"])
        self.check_mailer_config(name, fields.get("A", ""))

    def check_mailer_user(self, name, path, user_spec):
        """The U= user must reach P= and its interpreter ("Cannot exec")."""
        user, _, group = user_spec.partition(":")
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            gid = pw.pw_gid
            if group:
                gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except (KeyError, ValueError):
            self.f.fail("mailer %s: U=%s: no such user or group" % (name, user_spec),
                        "create it (adduser --system --ingroup list mm-handler, "
                        "README.sendmail step 2) or " +
                        self.cf_fix("define(`MAILMAN_MAILER_USER', `USER:GROUP')"))
            return
        if os.geteuid() != 0:
            self.f.say("mailer %s: whether U=%s can run it is not checked (not root)"
                       % (name, user_spec))
            return
        interpreter = ""
        try:
            with open(path, "rb") as f:
                first = f.readline(256)
            if first.startswith(b"#!"):
                words = first[2:].decode("latin-1").split()
                interpreter = words[0] if words else ""
        except OSError:
            pass
        # test(1) asks access(2) as that user: the kernel's own answer
        script = 'test -x "$1" && { test -z "$2" || { test -r "$1" && test -x "$2"; }; }'
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", script, "sh", path, interpreter],
                user=pw.pw_uid, group=gid,
                extra_groups=os.getgrouplist(pw.pw_name, gid),
                cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=10,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            ok = proc.returncode == 0
        except (OSError, subprocess.SubprocessError):
            return
        if not ok:
            self.f.fail("mailer %s: its user %s cannot run %s%s: Sendmail logs "
                        "\"Cannot exec\" and list mail stays queued"
                        % (name, pw.pw_name, path, " (or its interpreter %s)"
                           % interpreter if interpreter else ""),
                        "let %s reach it: chmod o+rx every directory above it; make "
                        "the venv from /usr/bin/python3 (README.sendmail section 8)"
                        % pw.pw_name)

    def check_mailer_config(self, name, argv):
        from .config import DEFAULT_PATH
        words = argv.split()
        used = DEFAULT_PATH         # Sendmail passes no $MM_HANDLER_CONFIG
        for i, word in enumerate(words):
            if word == "-C" and i + 1 < len(words):
                used = words[i + 1]
                break
        if os.path.realpath(used) != os.path.realpath(self.settings.path):
            self.f.warn("mailer %s runs with configuration %s, this check read %s"
                        % (name, used, self.settings.path),
                        "mm-handler --check -C %s" % used)

    def map_spec(self, name, want):
        """The K line named `name` or, for a sequence, its member reading `want`."""
        spec = self.cf.maps.get(name)
        if spec is None or spec.cls not in ("sequence", "switch"):
            return spec
        for member in spec.args:
            sub = self.cf.maps.get(member)
            if sub is not None and _same(sub.source(), want):
                return sub
        return spec

    def check_virtuser(self):
        want = self.out("virtusertable")
        fix = self.cf_fix("FEATURE(`virtusertable', `%s -o %s')" % (self.map_type, want))
        spec = self.map_spec("virtuser", want)
        if spec is None:
            self.f.fail("sendmail.cf %s has no virtusertable (Kvirtuser): the maps "
                        "in %s are not used, unknown list addresses are not refused "
                        "at RCPT" % (self.cf_path, self.out_dir), fix)
            return None
        if not _same(spec.source(), want):
            self.f.fail("sendmail.cf %s does not name the virtusertable %s: %s"
                        % (self.cf_path, want, spec), fix)
            return None
        if spec.cls != self.map_type:
            self.f.fail("sendmail.cf %s opens %s as a %s map, [maps] map_type is %s"
                        % (self.cf_path, want, spec.cls, self.map_type),
                        "set [maps] map_type = %s, then %s" % (spec.cls, self.maps_fix())
                        if spec.cls in MAP_EXTENSIONS else fix)
            return None
        self.f.say("sendmail.cf: %s" % spec)
        return spec

    def check_mailertable(self):
        spec = self.map_spec("mailertable", self.out("mailertable"))
        if spec is None:
            self.f.fail("sendmail.cf %s has no mailertable (Kmailertable): the list "
                        "domains are not routed to the mailer %s"
                        % (self.cf_path, self.mailer),
                        self.cf_fix("FEATURE(`mailertable')"))
            return None
        if spec.cls not in MAP_EXTENSIONS or not spec.path:
            self.f.say("sendmail.cf: %s (not checked)" % spec)
            return None
        self.f.say("sendmail.cf: %s" % spec)
        source = spec.source()
        if _same(source, self.out("mailertable")):
            return spec
        # the site's own mailertable: it must route the pseudo-domain
        try:
            with open(source, encoding="utf-8", errors="replace") as f:
                rows = {}
                for line in f:
                    words = line.split()
                    if words and not words[0].startswith("#") and len(words) > 1:
                        rows.setdefault(words[0].lower(), words[1])
        except OSError as exc:
            self.f.warn("mailertable %s: cannot read it (%s): whether it routes "
                        ".%s to the mailer %s is not checked"
                        % (source, exc.strerror, self.pseudo, self.mailer),
                        "run mm-handler --check as root")
            return spec
        makemap = "makemap %s %s < %s" % (spec.cls, source, source)
        if not rows.get("." + self.pseudo, "").startswith(self.mailer + ":"):
            self.f.fail("mailertable %s has no '.%s %s:%%1' line: the list addresses "
                        "the virtusertable sends to *.%s go nowhere"
                        % (source, self.pseudo, self.mailer, self.pseudo),
                        "add that line (see %s), then %s"
                        % (self.out("mailertable"), makemap))
        for domain in self.domains():
            if not rows.get(domain, "").startswith(self.mailer + ":"):
                self.f.warn("mailertable %s has no '%s %s:%s' line: without the "
                            "virtusertable, mail for %s does not reach mm-handler"
                            % (source, domain, self.mailer, domain, domain),
                            "add it, then %s" % makemap)
        return spec

    def check_virthost(self):
        """FEATURE(virtusertable) looks up domains in {VirtHost} or w only."""
        known = self.cf.class_words("VirtHost") | self.cf.class_words("w")
        for domain in self.domains():
            if domain not in known:
                self.f.warn("sendmail.cf %s: %s is not in class {VirtHost}: Sendmail "
                            "never asks the virtusertable for it (unless it is one "
                            "of this host's own names)" % (self.cf_path, domain),
                            self.cf_fix("VIRTUSER_DOMAIN_FILE(`-o %s')"
                                        % self.out("virtuser-domains")))

    # -- the files -----------------------------------------------------------------

    def check_output_dir(self, present):
        """What `mm-handler maps` refuses (maps.OutputDir, check_entries)."""
        try:
            st = os.lstat(self.out_dir)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            self.f.fail("output directory %s is a symbolic link: mm-handler maps "
                        "refuses to write there (exit 73)" % self.out_dir,
                        "set [maps] output_dir (and the .cf) to the real directory "
                        "%s" % os.path.realpath(self.out_dir))
        elif stat.S_IMODE(st.st_mode) & 0o022:
            code = "E_SM_WWDIR" if st.st_mode & 0o002 else "E_SM_GWDIR"
            # Sendmail may trust it (TrustStickyBit, GroupWritableDirPathSafe)
            refused = self.rules and self.rules.dirpath(self.out_dir, True)
            if refused and refused[:2] == (code, self.out_dir):
                self.done.add(refused[:2])
            self.f.fail("output directory %s is writable by %s (mode %04o): "
                        "mm-handler maps refuses it (exit 73)%s" % (
                            self.out_dir, "others" if code == "E_SM_WWDIR"
                            else "its group", stat.S_IMODE(st.st_mode),
                            ", and Sendmail will not open the maps in it"
                            if (code, self.out_dir) in self.done else ""),
                        "chmod go-w %s" % self.out_dir)
        for name in present:
            path = self.out(name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                continue
            self.done.add(("final", path))
            # a symbolic link Sendmail follows; anything else it refuses too
            refused = (self.rules and name.endswith(self.suffix)
                       and self.rules.map_file(path))
            self.f.fail("%s is %s: %smm-handler maps refuses to replace it (exit 73)"
                        % (path, maps._kind(st.st_mode), "Sendmail will not open "
                           "it, and " if refused else ""),
                        "rm %s; %s" % (path, self.maps_fix()))

    def check_maps(self, entries):
        """The maps Sendmail opens: safe, there, newer than their sources.

        `entries`: (what, source, map file, class, ours).  One finding per
        cause: maps refused for the same directory are named together.
        """
        refused = {}
        for what, source, map_file, cls, ours in entries:
            fix = (self.maps_fix() if ours else
                   "makemap %s %s < %s" % (cls, source, source))
            verdict = self.rules.map_file(map_file) if self.rules else None
            if verdict and verdict[:2] == ("ENOENT", map_file):
                self.f.fail("%s %s is missing: Sendmail will not open the map%s" % (
                    what, map_file, ", unknown list addresses are not refused at "
                    "RCPT" if what == "virtusertable" else ""), fix)
            elif verdict:
                refused.setdefault(verdict[:2], [verdict, fix]).append(
                    "%s %s" % (what, map_file))
            else:
                self.check_fresh(what, source, map_file, fix)
        for key, (verdict, fix, *names) in refused.items():
            if key in self.done or ("final", key[1]) in self.done:
                continue
            why, how = _describe(verdict, self.rules)
            self.f.fail("%s: Sendmail will not open %s: %s" % (
                " and ".join(names), "it" if len(names) == 1 else "them", why),
                how or fix)

    def check_fresh(self, what, source, map_file, fix):
        try:
            mst, sst = os.stat(map_file), os.stat(source)
        except OSError as exc:
            if exc.filename == source or not self.rules:
                self.f.fail("%s %s: %s" % (what, exc.filename, exc.strerror), fix)
            return
        for path, st in ((map_file, mst), (source, sst)):
            if stat.S_IMODE(st.st_mode) & 0o022 and ("final", path) not in self.done:
                self.f.warn("%s is writable by %s (mode %04o): Sendmail reads it all "
                            "the same, and anyone there can change where list mail "
                            "goes" % (path, "others" if st.st_mode & 0o002 else
                                      "its group", stat.S_IMODE(st.st_mode)),
                            "chmod go-w %s" % path)
        if mst.st_mtime_ns < sst.st_mtime_ns:
            self.f.fail("%s %s is older than its source %s: Sendmail still answers "
                        "from the old map" % (what, map_file, source), fix)
        elif self.rules:
            self.f.say("%s %s: safe for Sendmail, newer than its source"
                       % (what, map_file))

    # -- the lists -----------------------------------------------------------------

    def domains(self):
        """The list domains: [maps] domains, else those of virtuser-domains."""
        domains = self.settings.get("maps", "domains")
        if domains:
            return list(domains)
        try:
            with open(self.out("virtuser-domains"), encoding="utf-8",
                      errors="replace") as f:
                return [w.lower() for w in f.read().split()]
        except OSError:
            return []

    def compare_lists(self):
        if self.names is None:
            if isinstance(registry.for_settings(self.settings), registry.NoLists):
                self.f.say("maps and lists: not compared ([mailman3] var_dir is "
                           "empty; the Mailman 3 plug-in keeps the maps current)")
            return
        source = self.out("virtusertable")
        try:
            with open(source, encoding="utf-8", errors="replace") as f:
                rows = [line.split(None, 1) for line in f
                        if line.strip() and not line.startswith("#")]
        except OSError:
            return                  # reported with the map
        table = {row[0].lower(): row[1].strip() if len(row) > 1 else ""
                 for row in rows}
        domains = self.domains()
        if self.settings.get("mm-handler", "backend") == "mailman2":
            pairs = {(n.lower(), d) for n in self.names for d in domains}
        else:
            found, unmatched = maps.split_list_ids(self.names, domains)
            pairs = set(found)
            if unmatched:
                self.f.say("maps and lists: %d list director%s in none of the "
                           "domains %s: %s" % (len(unmatched), "y is" if len(
                               unmatched) == 1 else "ies are", " ".join(domains),
                               " ".join(unmatched[:10])))
        actions = self.settings.get("mm-handler", "approved_actions")
        expected = {}
        for name, domain in pairs:
            for local in maps.list_locals(name, actions):
                expected["%s@%s" % (local, domain)] = (name, domain)
        missing = {}
        for key, pair in expected.items():
            if key not in table:
                missing.setdefault(pair, []).append(key)
        routed = "." + self.pseudo
        stale = [key for key, value in table.items()
                 if key not in expected and "@" in key and not key.startswith("@")
                 and value.lower().endswith(routed) and "%3@" in value]
        if missing:
            total = {pair: len(maps.list_locals(pair[0], actions)) for pair in missing}
            shown = ["%s@%s" % pair + ("" if len(keys) == total[pair] else
                                       " (%d of %d addresses)" % (len(keys), total[pair]))
                     for pair, keys in sorted(missing.items())]
            their = "its" if len(shown) == 1 else "their"
            self.f.fail("maps: %s missing from %s: %s" % (
                _some("list", shown), source,
                "Sendmail refuses %s mail at RCPT (550 5.1.1)" % their
                if self.settings.get("maps", "reject") else
                "the virtusertable does not send %s mail to mm-handler" % their),
                self.maps_fix())
        if stale:
            gone = sorted(_stale_lists(stale))
            self.f.warn("maps: %s routes %s that no longer exist%s: %s - Sendmail "
                        "accepts their mail at RCPT, mm-handler then refuses it "
                        "(a DSN instead of 550)" % (
                            source, _some("list", gone, show=False),
                            "s" if len(gone) == 1 else "", ", ".join(gone[:10])
                            + (" and %d more" % (len(gone) - 10) if len(gone) > 10
                               else "")),
                        self.maps_fix())
        if not missing and not stale:
            if pairs:
                self.f.say("maps: %s routes every list on disk (%d)"
                           % (source, len({n for n, _ in pairs})))
            else:
                self.f.say("maps: no lists yet, and none in %s (expected until the "
                           "first list is created)" % source)


def _some(word, items, show=True):
    """'list a@b' / '3 lists: a@b, c@d, ...' (at most 10 named)."""
    count = "%d %s%s" % (len(items), word, "" if len(items) == 1 else "s")
    if not show:
        return count
    named = ", ".join(items[:10]) + (" and %d more" % (len(items) - 10)
                                     if len(items) > 10 else "")
    return "%s (%s)" % (count, named)


def _stale_lists(keys):
    """List addresses of lists that are gone -> the lists ('name@domain')."""
    by_domain = {}
    for key in keys:
        local, _, domain = key.rpartition("@")
        by_domain.setdefault(domain, set()).add(local)
    lists = set()
    for domain, locals_ in by_domain.items():
        for local in locals_:
            base = local
            if local.startswith("owner-") and local[6:] in locals_:
                base = local[6:]
            else:
                for action in ACTIONS[1:]:
                    if local.endswith("-" + action) and \
                            local[:-len(action) - 1] in locals_:
                        base = local[:-len(action) - 1]
                        break
            lists.add("%s@%s" % (base, domain))
    return lists
