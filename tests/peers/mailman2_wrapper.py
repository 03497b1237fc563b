#!/usr/bin/python3 -IS
"""A stand-in for GNU Mailman 2's mail wrapper (``mail/mailman``) and scripts.

Mailman 2 is Python 2 software and is not packaged for this machine, so the
tests run this script in its place.  It follows
``../shared/docs/mailman2-wrapper.md`` and the wrapper's C source
(``src/mail-wrapper.c``, ``src/common.c``, ``scripts/post`` ...):

    WRAPPER COMMAND LISTNAME   < message

1. fewer than one argument                    -> exit 5 (MAIL_USAGE_ERROR)
2. COMMAND not one of the ten known commands  -> exit 6 (MAIL_ILLEGAL_COMMAND)
3. the mail group name cannot be resolved     -> exit 8 (GROUP_NAME_NOT_FOUND)
4. the caller's real gid is not that group    -> exit 2 (GROUP_MISMATCH)
5. then "the script" runs: no LISTS_DIR/<name>/config.pck (nor config.db)
   -> exit 1 with "<command> script, list not found: <name>" on stderr;
   otherwise the whole of stdin (From_ line included) is written into
   QFILES/in/ as one file per message (atomically: .tmp then rename), and
   the script exits 0.

Configuration comes from ``mailman2_wrapper.json`` in the directory that
holds this script (tests copy the script into a private directory and write
the file next to it)::

    {"group": "root",                  # the compiled-in mail group (name or gid)
     "lists_dir": "/.../lists",        # LISTS_DIR
     "qfiles_dir": "/.../qfiles",      # QUEUE_DIR; messages land in its in/
     "log": "/.../wrapper.log",        # optional: one JSON line per run
     "fault": null}                    # optional fault injection, see FAULTS

Fault modes (for the fault matrix), applied after the argument and group
checks pass, before stdin is read unless ``"after_read": true``:

    {"fault": "exit", "code": N}            exit N (stderr says so)
    {"fault": "signal", "signal": 9}        kill itself with that signal
    {"fault": "noread"}                     exit 0 without reading stdin
    {"fault": "sleep", "seconds": S}        sleep S seconds, then behave normally
    {"fault": "partial", "bytes": N}        read N bytes, enqueue them, exit 0
    {"fault": "linger", "seconds": S}       behave normally, but leave a child
                                            holding stdout/stderr open S seconds

``"started": PATH`` (optional) writes the pid to PATH once the argument and
group checks pass, before any fault and before stdin is read, so that a
test can act while the message is on its way.

The log line records argv, real/effective gid, the outcome and the queue
file, so that tests can check exactly what mm-handler ran.
"""

import hashlib
import json
import os
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

# src/mail-wrapper.c: the only commands the wrapper will run
COMMANDS = ("admin", "bounces", "confirm", "join", "leave", "owner", "request",
            "post", "subscribe", "unsubscribe")
# what each script puts into the metadata of the incoming queue entry
METADATA = {"post": "tolist", "admin": "tobounce", "bounces": "tobounce",
            "confirm": "toconfirm", "join": "tojoin", "leave": "toleave",
            "owner": "toowner", "request": "torequest",
            "subscribe": "tojoin", "unsubscribe": "toleave"}

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
    log(config, outcome="exit %d" % code, stderr=text)
    sys.stderr.write("%s\n" % text)
    sys.stderr.flush()
    os._exit(code)


def mail_gid(config, group):
    if isinstance(group, int):
        return group
    if str(group).isdigit():
        return int(group)
    # /etc/group by hand: no import of grp needed, and the same answer
    try:
        with open("/etc/group") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 3 and parts[0] == group:
                    return int(parts[2])
    except OSError:
        pass
    fatal(config, GROUP_NAME_NOT_FOUND,
          "Failure to find group name %s.  Try adding this group\n"
          "to your system, or re-run configure, providing an\n"
          "existing group name with the command line option\n"
          "--with-mail-gid." % group)


def check_caller(config):
    group = config.get("group", "root")
    wanted = mail_gid(config, group)
    got = os.getgid()
    if got != wanted:
        fatal(config, GROUP_MISMATCH,
              'Group mismatch error.  Mailman expected the mail\n'
              'wrapper script to be executed as group "%s", but\n'
              'the system\'s mail server executed the mail script as\n'
              'group "%s".  Try tweaking the mail server to run the\n'
              'script as group "%s", or re-run configure,\n'
              'providing the command line option `--with-mail-gid=%s\'.'
              % (group, got, group, got))


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


def enqueue(config, command, listname, text):
    """Switchboard.enqueue(): one file per message in QFILES/in/, atomically."""
    inq = os.path.join(config["qfiles_dir"], "in")
    os.makedirs(inq, exist_ok=True)
    now = time.time()
    digest = hashlib.sha1(text + repr((listname, command, now, os.getpid()))
                          .encode()).hexdigest()
    base = os.path.join(inq, "%r+%s" % (now, digest))
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
    if len(argv) < 3:
        fatal(config, 1, "%s script got no listname." % command)
    listname = argv[2].lower()
    listdir = os.path.join(config["lists_dir"], listname)
    if not (os.path.exists(os.path.join(listdir, "config.pck"))
            or os.path.exists(os.path.join(listdir, "config.db"))):
        fatal(config, 1, "%s script, list not found: %s" % (command, listname))
    if fault == "partial":
        text = read_stdin(int(config["bytes"]))
    else:
        text = read_stdin()
    path = enqueue(config, command, listname, text)
    lingering = None
    if fault == "linger":
        lingering = os.fork()
        if lingering == 0:          # keeps fds 1 and 2 open, reads nothing
            os.close(0)
            time.sleep(float(config["seconds"]))
            os._exit(0)
    extra = {} if lingering is None else {"lingering": lingering}
    log(config, outcome="queued", queue_file=path, listname=listname,
        metadata={METADATA[command]: 1}, size=len(text), **extra)
    return 0


# --- for the tests: install a private copy ------------------------------------

class Installed:
    """A private copy of this stand-in with its lists and queue directories.

    ``Installed(directory, lists=["test"])`` copies the script to
    ``directory/mail/mailman`` (mode 0755), makes ``directory/lists/<name>/
    config.pck`` for each list and writes the configuration next to the
    script.  ``configure(fault=..., ...)`` changes it between runs.
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

    def queued(self):
        """Queue files in QFILES/in/, oldest first, as (path, bytes)."""
        inq = os.path.join(self.qfiles_dir, "in")
        if not os.path.isdir(inq):
            return []
        names = sorted(os.listdir(inq), key=lambda n: float(n.split("+")[0]))
        out = []
        for name in names:
            with open(os.path.join(inq, name), "rb") as f:
                out.append((os.path.join(inq, name), f.read()))
        return out

    def runs(self):
        """One dict per wrapper run (argv, gid, outcome, ...)."""
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
