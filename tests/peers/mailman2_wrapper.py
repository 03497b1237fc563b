#!/usr/bin/python3 -IS
"""A stand-in for GNU Mailman 2's mail wrapper (``mail/mailman``) and scripts.

The real Mailman 2 runs in tests/test_mailman2_real.py (it needs root and a
build); everywhere else the tests run this script in its place.  It answers
as the real wrapper does (tests/test_mailman2_real.py::
test_the_stand_in_answers_as_the_real_wrapper compares the two) and follows
``../shared/docs/mailman2-wrapper.md``, the wrapper's C source
(``src/mail-wrapper.c``, ``src/common.c``) and its scripts
(``scripts/post``, ``bounces``, ``owner``, ``request``, ``join`` ...):

    WRAPPER COMMAND LISTNAME   < message

1. fewer than one argument                    -> exit 5 (MAIL_USAGE_ERROR)
2. COMMAND not one of the ten known commands  -> exit 6 (MAIL_ILLEGAL_COMMAND)
3. the caller's real gid has no group name    -> exit 8 (GROUP_NAME_NOT_FOUND)
4. that name is not the compiled-in group     -> exit 2 (GROUP_MISMATCH)
   (names are compared, as strcmp() does; the compiled-in group is a name:
   configure turns a number into its name, and one it cannot find stays as
   it was given)
5. then "the script" runs (admin is the bounces script, subscribe join,
   unsubscribe leave; owner calls itself "mailowner", request "mailcmd"):
   - no LISTNAME -> exit 1, "<script> script got no listname."
     ("mailowner got no listname." for owner);
   - LISTNAME with a character outside [-+_.=a-z0-9] (upper case included:
     nothing is lower-cased; Mailman logs "Hostile listname"), or no
     LISTS_DIR/LISTNAME/ config.pck, config.pck.last, config.db nor
     config.db.last -> exit 1, "<script> script, list not found: LISTNAME";
   - otherwise the whole of stdin (From_ line included) is written, one
     file per message (atomically: .tmp then rename), into its queue:

       post  -> QFILES/in/        tolist      owner -> QFILES/in/  toowner
       request -> QFILES/commands/ torequest  confirm -> commands/ toconfirm
       join, subscribe -> commands/ tojoin    leave, unsubscribe -> commands/ toleave
       admin, bounces -> QFILES/bounces/ (no flag)

   and the script exits 0.  Nothing is read from stdin before that.

Every fatal() message goes to stderr cut at 1023 bytes (the C vsnprintf
into a 1024-byte buffer) and to the log file (the real one: syslog).

Configuration comes from ``mailman2_wrapper.json`` in the directory that
holds this script (tests copy the script into a private directory and write
the file next to it)::

    {"group": "root",                  # the compiled-in mail group (name or gid)
     "lists_dir": "/.../lists",        # LISTS_DIR
     "qfiles_dir": "/.../qfiles",      # QUEUE_DIR: in/, commands/, bounces/
     "log": "/.../wrapper.log",        # optional: one JSON line per run
     "fault": null}                    # optional fault injection, see FAULTS

Fault modes (for the fault matrix: what the real wrapper cannot be made to
do on demand), applied after the argument and group checks pass, before
stdin is read unless ``"after_read": true``:

    {"fault": "exit", "code": N}            exit N (stderr says so)
    {"fault": "signal", "signal": 9}        kill itself with that signal
    {"fault": "noread"}                     exit 0 without reading stdin
    {"fault": "sleep", "seconds": S}        sleep S seconds, then behave normally
    {"fault": "partial", "bytes": N}        read N bytes, enqueue them, exit 0
    {"fault": "linger", "seconds": S}       behave normally, but leave a child
                                            holding stdout/stderr open S seconds

Exits 2 and 8 need no fault mode: run it with another group, or with a gid
that has no name (``setpriv --regid=GID``, ``subprocess.run(group=GID)``).

``"started": PATH`` (optional) writes the pid to PATH once the argument and
group checks pass, before any fault and before stdin is read, so that a
test can act while the message is on its way.

The log line records argv, real/effective gid, the outcome, the queue, the
queue file and the metadata, so that tests can check exactly what
mm-handler ran.
"""

import grp
import hashlib
import json
import os
import re
import signal
import sys
import time

# src/common.h
GROUP_MISMATCH = 2
SETREGID_FAILURE = 3
EXECVE_FAILURE = 4
MAIL_USAGE_ERROR = 5
MAIL_ILLEGAL_COMMAND = 6
GROUP_NAME_NOT_FOUND = 8

# src/common.c fatal(): vsnprintf() into char log_entry[1024]
FATAL_BUFSIZE = 1024

# src/mail-wrapper.c: the only commands the wrapper will run
COMMANDS = ("admin", "bounces", "confirm", "join", "leave", "owner", "request",
            "post", "subscribe", "unsubscribe")
# scripts/Makefile.in: admin, subscribe, unsubscribe are copies of these
SCRIPT = {"admin": "bounces", "subscribe": "join", "unsubscribe": "leave"}
# each script: what it calls itself, its queue (mm_cfg.*QUEUE_DIR) and its flag
SCRIPTS = {
    "post": ("post", "in", "tolist"),
    "owner": ("mailowner", "in", "toowner"),
    "request": ("mailcmd", "commands", "torequest"),
    "confirm": ("confirm", "commands", "toconfirm"),
    "join": ("join", "commands", "tojoin"),
    "leave": ("leave", "commands", "toleave"),
    "bounces": ("bounces", "bounces", None),
}
# Defaults.py: ACCEPTABLE_LISTNAME_CHARACTERS; Utils.list_exists()
ACCEPTABLE_LISTNAME_CHARACTERS = "[-+_.=a-z0-9]"
LIST_FILES = ("config.pck", "config.pck.last", "config.db", "config.db.last")

CONFIG_NAME = "mailman2_wrapper.json"


def load_config():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, CONFIG_NAME)) as f:
        return json.load(f)


def log(config, **record):
    path = config.get("log")
    if not path:
        return
    record.setdefault("argv", sys.argv[1:])
    record.setdefault("gid", os.getgid())
    record.setdefault("egid", os.getegid())
    record.setdefault("pid", os.getpid())
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def fatal(config, code, text):
    """src/common.c fatal(): syslog (here: the log file), stderr, exit."""
    data = text.encode("utf-8", "surrogateescape")[:FATAL_BUFSIZE - 1]
    log(config, outcome="exit %d" % code,
        stderr=data.decode("utf-8", "backslashreplace"))
    os.write(2, data + b"\n")
    os._exit(code)


def group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def compiled_group(config):
    """configure's MM_FIND_GROUP_NAME: a gid becomes its name; a name (or a
    gid) it cannot find is compiled in as given."""
    group = str(config.get("group", "root"))
    if group.isdigit():
        return group_name(int(group)) or group
    return group


def check_caller(config):
    """src/common.c check_caller() for the mail wrapper."""
    parentgroup = compiled_group(config)
    mygid = os.getgid()
    mygroup = group_name(mygid)
    if mygroup is None:
        fatal(config, GROUP_NAME_NOT_FOUND,
              "Failure to find group name for GID %d.  Mailman\n"
              "expected the mail wrapper to be executed as group\n"
              "\"%s\", but the system's mail server executed the\n"
              "wrapper as GID %d for which the name could not be\n"
              "found.  Try adding GID %d to your system as \"%s\",\n"
              "or tweak your mail server to run the wrapper as group\n"
              "\"%s\"." % (mygid, parentgroup, mygid, mygid, parentgroup,
                           parentgroup))
    if parentgroup != mygroup:
        fatal(config, GROUP_MISMATCH,
              "Group mismatch error.  Mailman expected the mail\n"
              "wrapper script to be executed as group \"%s\", but\n"
              "the system's mail server executed the mail script as\n"
              "group \"%s\".  Try tweaking the mail server to run the\n"
              "script as group \"%s\", or re-run configure, \n"
              "providing the command line option `--with-mail-gid=%s'."
              % (parentgroup, mygroup, parentgroup, mygroup))


def list_exists(config, listname):
    """Utils.list_exists(): an acceptable name and one of the config files."""
    if re.sub(ACCEPTABLE_LISTNAME_CHARACTERS, "", listname):
        return False                    # Mailman logs "Hostile listname"
    path = os.path.join(config["lists_dir"], listname)
    return any(os.path.exists(os.path.join(path, name)) for name in LIST_FILES)


def read_stdin(limit=None):
    """The whole of stdin as bytes (or the first `limit` bytes)."""
    parts = []
    got = 0
    while limit is None or got < limit:
        want = 65536 if limit is None else min(65536, limit - got)
        data = os.read(0, want)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def enqueue(config, queue, listname, text):
    """Switchboard.enqueue(): one file per message in QFILES/<queue>/
    (made when missing, as Switchboard does), atomically."""
    qdir = os.path.join(config["qfiles_dir"], queue)
    os.makedirs(qdir, exist_ok=True)
    now = time.time()
    digest = hashlib.sha1(text + repr((listname, queue, now, os.getpid()))
                          .encode("utf-8", "surrogateescape")).hexdigest()
    base = os.path.join(qdir, "%r+%s" % (now, digest))
    with open(base + ".tmp", "wb") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(base + ".tmp", base + ".msg")
    return base + ".msg"


def main():
    config = load_config()
    argv = sys.argv
    if len(argv) < 2:
        fatal(config, MAIL_USAGE_ERROR, "Usage: %s program [args...]" % argv[0])
    command = argv[1]
    if command not in COMMANDS:
        fatal(config, MAIL_ILLEGAL_COMMAND, "Illegal command: %s" % command)
    check_caller(config)

    if config.get("started"):
        with open(config["started"] + ".tmp", "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(config["started"] + ".tmp", config["started"])
    fault = config.get("fault")
    if fault and config.get("after_read"):
        read_stdin()
    if fault == "exit":
        fatal(config, int(config["code"]),
              "injected fault: exit %d" % int(config["code"]))
    if fault == "signal":
        log(config, outcome="signal %d" % int(config["signal"]))
        # a real crash: the default action, even if the parent ignored it
        signum = int(config["signal"])
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        time.sleep(10)
        os._exit(99)
    if fault == "noread":
        log(config, outcome="exit 0 without reading stdin")
        os._exit(0)
    if fault == "sleep":
        time.sleep(float(config["seconds"]))

    # --- the script (scripts/post, scripts/bounces, ...) ---------------------
    script, queue, flag = SCRIPTS[SCRIPT.get(command, command)]
    if len(argv) < 3:
        fatal(config, 1, "mailowner got no listname." if script == "mailowner"
              else "%s script got no listname." % script)
    listname = argv[2]
    if not list_exists(config, listname):
        fatal(config, 1, "%s script, list not found: %s" % (script, listname))
    if fault == "partial":
        text = read_stdin(int(config["bytes"]))
    else:
        text = read_stdin()
    path = enqueue(config, queue, listname, text)
    lingering = None
    if fault == "linger":
        lingering = os.fork()
        if lingering == 0:          # keeps fds 1 and 2 open, reads nothing
            os.close(0)
            time.sleep(float(config["seconds"]))
            os._exit(0)
    extra = {} if lingering is None else {"lingering": lingering}
    metadata = {"listname": listname, "_plaintext": 1}
    if flag:
        metadata[flag] = 1
    log(config, outcome="queued", queue=queue, queue_file=path, listname=listname,
        metadata=metadata, size=len(text), **extra)
    return 0


# --- for the tests: install a private copy ------------------------------------

QUEUES = ("in", "commands", "bounces")


class Installed:
    """A private copy of this stand-in with its lists and queue directories.

    ``Installed(directory, lists=["test"])`` copies the script to
    ``directory/mail/mailman`` (mode 0755), makes ``directory/lists/<name>/
    config.pck`` for each list and writes the configuration next to the
    script.  ``configure(fault=..., ...)`` changes it between runs.  The
    queue directories under ``directory/qfiles`` are made by the first
    message that goes there (by whoever runs the wrapper).
    """

    def __init__(self, directory, lists=(), group="root", **config):
        import shutil
        self.root = os.path.abspath(str(directory))
        self.path = os.path.join(self.root, "mail", "mailman")
        self.lists_dir = os.path.join(self.root, "lists")
        self.qfiles_dir = os.path.join(self.root, "qfiles")
        self.log_path = os.path.join(self.root, "wrapper.log")
        for d in (self.root, os.path.dirname(self.path), self.lists_dir,
                  self.qfiles_dir):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        shutil.copyfile(os.path.abspath(__file__), self.path)
        os.chmod(self.path, 0o755)
        for name in lists:
            self.add_list(name)
        self.config = {"group": group, "lists_dir": self.lists_dir,
                       "qfiles_dir": self.qfiles_dir, "log": self.log_path,
                       "fault": None}
        self.configure(**config)

    def add_list(self, name, filename="config.pck"):
        os.makedirs(os.path.join(self.lists_dir, name), exist_ok=True)
        with open(os.path.join(self.lists_dir, name, filename), "wb") as f:
            f.write(b"(dp0\n.")       # an empty pickled dict, as a placeholder

    def configure(self, **changes):
        self.config.update(changes)
        path = os.path.join(os.path.dirname(self.path), CONFIG_NAME)
        with open(path + ".tmp", "w") as f:
            json.dump(self.config, f)
        os.rename(path + ".tmp", path)

    def queued(self, queue=None):
        """Queue files in QFILES/in/, commands/ and bounces/ (or only in
        `queue`), oldest first, as (path, bytes); the queue of each is
        os.path.basename(os.path.dirname(path))."""
        found = []
        for name in (QUEUES if queue is None else (queue,)):
            qdir = os.path.join(self.qfiles_dir, name)
            if os.path.isdir(qdir):
                # every file, a left-over .tmp too: a test must see it
                found += [(float(f.split("+")[0]), os.path.join(qdir, f))
                          for f in os.listdir(qdir)]
        out = []
        for _, path in sorted(found):
            with open(path, "rb") as f:
                out.append((path, f.read()))
        return out

    def runs(self):
        """One dict per wrapper run (argv, gid, outcome, queue, metadata ...)."""
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            return [json.loads(line) for line in f]

    def clear(self):
        for path, _ in self.queued():
            os.unlink(path)
        if os.path.exists(self.log_path):
            os.unlink(self.log_path)


if __name__ == "__main__":
    sys.exit(main())
