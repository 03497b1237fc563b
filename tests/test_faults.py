"""Issue 5's fault matrix: one table, one row per fault.

Every row runs the installed command as Sendmail would (empty environment,
cwd /, the message on a pipe) inside a private mount namespace whose /dev/log
is this test's syslog sink, so that even the lines logged before the
configuration is read are seen.  Each row asserts:

- the exit code;
- the whole of stderr (the line that reaches the sender's DSN);
- the one syslog line (mm-handler's own, whichever socket it used);
- where the message is afterwards: "mailman" (exactly one copy, byte-exact),
  "kept" (exit 75: still in Sendmail's queue, nothing in Mailman) or
  "bounced" (a permanent code, nothing in Mailman) or "letter" (exit 0: the
  unknown-list letter went to the sender through sendmail, nothing in Mailman).

LMTP rows talk to tests/peers/scripted_lmtp.py, wrapper rows run the Mailman 2
stand-in tests/peers/mailman2_wrapper.py.  Rows marked user="nobody" run the
handler as uid/gid 65534, because root can read any file; the "wrapper exit
8" row runs it as root with a gid that has no name (mailer_gid), which is
how the real wrapper's exit 8 comes about.

Templates: {A} the recipient address, {N} the LMTP server, {R} the refused
endpoint, {W} the wrapper, {CFG} the config file, {LISTS} the lists
directory, {SM} the bounce's sendmail, {SPOOL} the spool directory, {SIZE}
the message size; "…" matches anything.
"""

import grp
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from tests.conftest import FROM_LINE, SyslogSink, render_config, sample_message
from tests.peers.mailman2_wrapper import Installed
from tests.peers.scripted_lmtp import CLOSE, RESET, SILENCE, ScriptedLMTP, refused_endpoint

HOST = "lists.example.test"
ADDRESS = "test@" + HOST
MESSAGE = sample_message(subject="fault matrix", body=b"Body line.\n.dot line\n")
BIG = sample_message(subject="big", body=b"".join(b"%07d %s\n" % (i, b"z" * 100)
                                                 for i in range(10000)))   # ~1 MB
NOBODY = 65534


def nameless_gid(gid=54321):
    """A gid /etc/group has no name for."""
    while True:
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid
        gid += 1


NAMELESS_GID = nameless_gid()

# Run the command in a private mount namespace with /dev/log = the sink.
NAMESPACE_SCRIPT = """set -e
S=$1; SINK=$2; shift 2
/bin/mount -t tmpfs -o mode=755 tmpfs "$S"
for d in null zero random urandom; do : > "$S/$d"; /bin/mount --bind "/dev/$d" "$S/$d"; done
: > "$S/log"; /bin/mount --bind "$SINK" "$S/log"
/bin/mount --move "$S" /dev
exec "$@"
"""


class Row:
    def __init__(self, id, kind, code, where, stderr, log, message=MESSAGE,
                 user=None, **setup):
        self.id = id
        self.kind = kind            # lmtp | wrapper | local
        self.code = code
        self.where = where          # mailman | kept | bounced
        self.stderr = stderr        # the whole of stderr, one line
        self.log = log              # reason/reply pair or a whole line, see below
        self.message = message
        self.user = user
        self.setup = setup

    def __repr__(self):
        return self.id


def lmtp(id, code, where, stderr, reason, reply="-", **setup):
    return Row(id, "lmtp", code, where, stderr, (reason, reply), **setup)


def wrap(id, code, where, stderr, reason, reply="-", **setup):
    return Row(id, "wrapper", code, where, stderr, (reason, reply), **setup)


def local(id, code, where, stderr, log, **setup):
    return Row(id, "local", code, where, stderr, log, **setup)


# what the stand-in says, line by line: the real wrapper's words (src/common.c,
# checked against the real one in tests/test_mailman2_real.py); the trailing
# space after "re-run configure," is the real wrapper's
GROUP_MISMATCH = [       # compiled for "nogroup", run as root (gid 0)
    'Group mismatch error.  Mailman expected the mail',
    'wrapper script to be executed as group "nogroup", but',
    "the system's mail server executed the mail script as",
    'group "root".  Try tweaking the mail server to run the',
    'script as group "nogroup", or re-run configure, ',
    "providing the command line option `--with-mail-gid=root'."]
GROUP_MISSING = [        # compiled for "root", run with a gid that has no name
    "Failure to find group name for GID %d.  Mailman" % NAMELESS_GID,
    "expected the mail wrapper to be executed as group",
    "\"root\", but the system's mail server executed the",
    "wrapper as GID %d for which the name could not be" % NAMELESS_GID,
    "found.  Try adding GID %d to your system as \"root\"," % NAMELESS_GID,
    "or tweak your mail server to run the wrapper as group",
    "\"root\"."]


def cut(text, limit=200):
    return text[:limit] + ("..." if len(text) > limit else "")


def on_stderr(lines):
    """The wrapper's words in our stderr line: one line, the first 200 characters."""
    return cut(" ".join(lines))


def in_syslog(lines):
    """The wrapper's words in a syslog field: " -> ', each newline escaped
    once as \\x0a (the whole line is cut at 1800 characters)."""
    return "\n".join(lines).replace('"', "'").replace("\n", "\\x0a")


WRAPPER_1 = "wrapper exit 1: the Mailman script failed (list missing or a Python error)"
KEPT = "; kept for retry"

ROWS = [
    # --- LMTP ---------------------------------------------------------------------
    lmtp("lmtp refused", 75, "kept",
         "4.3.0 <{A}>: cannot connect to {R}: Connection refused" + KEPT,
         "cannot connect to {R}: Connection refused", endpoints="refused"),
    lmtp("lmtp 421 greeting", 75, "kept",
         "4.3.0 <{A}>: {N} refused at greeting (LMTP server said: 421 4.3.2 Service "
         "not available, closing channel)" + KEPT,
         "{N} refused at greeting", "421 4.3.2 Service not available, closing channel",
         script={"greeting": "421 4.3.2 Service not available, closing channel"}),
    lmtp("lmtp no greeting (timeout)", 75, "kept",
         "4.3.0 <{A}>: {N}: no reply: timed out" + KEPT,
         "{N}: no reply: timed out", script={"greeting": SILENCE}),
    lmtp("lmtp garbled greeting", 75, "kept",
         "4.3.0 <{A}>: {N}: garbled reply 'Hello, this is not LMTP'" + KEPT,
         "{N}: garbled reply 'Hello, this is not LMTP'",
         script={"greeting": "Hello, this is not LMTP"}),
    lmtp("lmtp LHLO 421", 75, "kept",
         "4.3.0 <{A}>: {N} refused at lhlo (LMTP server said: 421 4.7.0 Try again "
         "later)" + KEPT,
         "{N} refused at lhlo", "421 4.7.0 Try again later",
         script={"lhlo": "421 4.7.0 Try again later"}),
    lmtp("lmtp LHLO refused", 69, "bounced",
         "5.3.0 <{A}>: {N} refused at lhlo (LMTP server said: 500 5.5.1 Error: "
         "command not recognized)",
         "{N} refused at lhlo", "500 5.5.1 Error: command not recognized",
         script={"lhlo": "500 5.5.1 Error: command not recognized"}),
    lmtp("lmtp MAIL 451", 75, "kept",
         "4.3.0 <{A}>: {N} refused at mail (LMTP server said: 451 4.3.0 Requested "
         "action aborted: local error)" + KEPT,
         "{N} refused at mail", "451 4.3.0 Requested action aborted: local error",
         script={"mail": "451 4.3.0 Requested action aborted: local error"}),
    lmtp("lmtp MAIL 550", 67, "bounced",
         "5.1.1 <{A}>: {N} refused at mail (LMTP server said: 550 5.7.1 Sender "
         "rejected)",
         "{N} refused at mail", "550 5.7.1 Sender rejected",
         script={"mail": "550 5.7.1 Sender rejected"}),
    lmtp("lmtp RCPT 450", 75, "kept",
         "4.3.0 <{A}>: {N} refused at rcpt (LMTP server said: 450 4.2.1 Mailbox "
         "busy)" + KEPT,
         "{N} refused at rcpt", "450 4.2.1 Mailbox busy",
         script={"rcpt": "450 4.2.1 Mailbox busy"}),
    lmtp("lmtp RCPT 452", 75, "kept",
         "4.3.0 <{A}>: {N} refused at rcpt (LMTP server said: 452 4.3.1 Insufficient "
         "system storage)" + KEPT,
         "{N} refused at rcpt", "452 4.3.1 Insufficient system storage",
         script={"rcpt": "452 4.3.1 Insufficient system storage"}),
    lmtp("lmtp RCPT 550", 67, "bounced",
         '5.1.1 <{A}>: no list named "test" here (LMTP server said: 550 5.1.1 '
         'Requested action not taken: mailbox unavailable)',
         "5.1.1 <{A}>: no list named 'test' here",
         "550 5.1.1 Requested action not taken: mailbox unavailable",
         script={"rcpt": "550 5.1.1 Requested action not taken: mailbox unavailable"}),
    lmtp("lmtp RCPT 553", 67, "bounced",
         '5.1.1 <{A}>: no list named "test" here (LMTP server said: 553 5.1.3 '
         'Mailbox name not allowed)',
         "5.1.1 <{A}>: no list named 'test' here", "553 5.1.3 Mailbox name not allowed",
         script={"rcpt": "553 5.1.3 Mailbox name not allowed"}),
    lmtp("lmtp RCPT no reply (closed)", 75, "kept",
         "4.3.0 <{A}>: {N}: connection closed without a reply" + KEPT,
         "{N}: connection closed without a reply", script={"rcpt": CLOSE}),
    lmtp("lmtp DATA 451 (no 354)", 75, "kept",
         "4.3.0 <{A}>: {N} refused at data (LMTP server said: 451 4.3.0 Queue "
         "unavailable)" + KEPT,
         "{N} refused at data", "451 4.3.0 Queue unavailable",
         script={"data": "451 4.3.0 Queue unavailable"}),
    lmtp("lmtp DATA 554 (no 354)", 69, "bounced",
         "5.3.0 <{A}>: {N} refused at data (LMTP server said: 554 5.5.1 No valid "
         "recipients)",
         "{N} refused at data", "554 5.5.1 No valid recipients",
         script={"data": "554 5.5.1 No valid recipients"}),
    lmtp("lmtp DATA no reply (timeout)", 75, "kept",
         "4.3.0 <{A}>: {N}: no reply: timed out" + KEPT,
         "{N}: no reply: timed out", script={"data": SILENCE}),
    lmtp("lmtp 451 after the dot", 75, "kept",
         "4.3.0 <{A}>: {N} refused at dot (LMTP server said: 451 4.3.0 Error in "
         "processing)" + KEPT,
         "{N} refused at dot", "451 4.3.0 Error in processing",
         script={"dot": "451 4.3.0 Error in processing"}),
    lmtp("lmtp 552 after the dot", 69, "bounced",
         "5.3.0 <{A}>: {N} refused at dot (LMTP server said: 552 5.3.4 Message too "
         "big)",
         "{N} refused at dot", "552 5.3.4 Message too big",
         script={"dot": "552 5.3.4 Message too big"}),
    lmtp("lmtp 554 after the dot", 69, "bounced",
         "5.3.0 <{A}>: {N} refused at dot (LMTP server said: 554 5.6.0 Transaction "
         "failed)",
         "{N} refused at dot", "554 5.6.0 Transaction failed",
         script={"dot": "554 5.6.0 Transaction failed"}),
    lmtp("lmtp 501 after the dot (defects)", 65, "bounced",
         "5.6.0 <{A}>: {N} refused at dot (LMTP server said: 501 5.6.0 Message has "
         "defects)",
         "{N} refused at dot", "501 5.6.0 Message has defects",
         script={"dot": "501 5.6.0 Message has defects"}),
    lmtp("lmtp reset in the middle of DATA", 75, "kept",
         "4.3.0 <{A}>: {N}: … reset by peer" + KEPT,
         "{N}: … reset by peer", message=BIG, size="…",
         script={"reset_after_data_bytes": 65536}),
    lmtp("lmtp no reply after the dot (timeout)", 75, "kept",
         "4.3.0 <{A}>: {N}: no reply: timed out" + KEPT,
         "{N}: no reply: timed out", script={"dot": SILENCE}),
    lmtp("lmtp reset after the dot", 75, "kept",
         "4.3.0 <{A}>: {N}: no reply: Connection reset by peer" + KEPT,
         "{N}: no reply: Connection reset by peer", script={"dot": RESET}),
    lmtp("lmtp first of two hosts down", 0, "mailman", "",
         "accepted by {N}", "250 2.0.0 Ok", endpoints="refused,server"),
    lmtp("lmtp first of two hosts 421", 0, "mailman", "",
         "accepted by {N}", "250 2.0.0 Ok", endpoints="421,server"),
    lmtp("lmtp healthy", 0, "mailman", "", "accepted by {N}", "250 2.0.0 Ok"),
    # --- Mailman 2 wrapper ----------------------------------------------------------
    wrap("wrapper missing", 75, "kept",
         "4.3.0 <{A}>: cannot run wrapper {W}: No such file or directory" + KEPT,
         "cannot run wrapper {W}: No such file or directory", wrapper="missing"),
    wrap("wrapper not executable", 75, "kept",
         "4.3.0 <{A}>: cannot run wrapper {W}: Permission denied" + KEPT,
         "cannot run wrapper {W}: Permission denied", wrapper="not executable"),
    wrap("wrapper exit 1 (list missing in Mailman)", 75, "kept",
         "4.3.0 <{A}>: " + WRAPPER_1 + " (wrapper said: post script, list not found: "
         "test)" + KEPT,
         WRAPPER_1, "post script, list not found: test", wrapper="list missing"),
    wrap("wrapper exit 2 (group mismatch)", 75, "kept",
         "4.3.0 <{A}>: wrapper exit 2: group mismatch: the mailer's U= group is not "
         "the group the wrapper was compiled for (wrapper said: "
         + on_stderr(GROUP_MISMATCH) + ")" + KEPT,
         "wrapper exit 2: group mismatch: the mailer's U= group is not the group the "
         "wrapper was compiled for", in_syslog(GROUP_MISMATCH),
         stand_in={"group": "nogroup"}),
    wrap("wrapper exit 3", 75, "kept",
         "4.3.0 <{A}>: wrapper exit 3: setregid() failed (wrapper said: injected "
         "fault: exit 3)" + KEPT,
         "wrapper exit 3: setregid() failed", "injected fault: exit 3",
         stand_in={"fault": "exit", "code": 3}),
    wrap("wrapper exit 4", 75, "kept",
         "4.3.0 <{A}>: wrapper exit 4: the wrapper could not exec its script (wrapper "
         "said: injected fault: exit 4)" + KEPT,
         "wrapper exit 4: the wrapper could not exec its script",
         "injected fault: exit 4", stand_in={"fault": "exit", "code": 4}),
    wrap("wrapper exit 5", 75, "kept",
         "4.3.0 <{A}>: wrapper exit 5: the wrapper reports a usage error (wrapper said: "
         "injected fault: exit 5)" + KEPT,
         "wrapper exit 5: the wrapper reports a usage error", "injected fault: exit 5",
         stand_in={"fault": "exit", "code": 5}),
    wrap("wrapper exit 6", 75, "kept",
         "4.3.0 <{A}>: wrapper exit 6: the wrapper reports an illegal command (wrapper "
         "said: injected fault: exit 6)" + KEPT,
         "wrapper exit 6: the wrapper reports an illegal command",
         "injected fault: exit 6", stand_in={"fault": "exit", "code": 6}),
    wrap("wrapper exit 8 (the mailer's gid has no name)", 75, "kept",
         "4.3.0 <{A}>: wrapper exit 8: the mailer's gid has no group name (check U= and /etc/group) "
         "(wrapper said: " + on_stderr(GROUP_MISSING) + ")" + KEPT,
         "wrapper exit 8: the mailer's gid has no group name (check U= and /etc/group)",
         in_syslog(GROUP_MISSING), mailer_gid=NAMELESS_GID),
    wrap("wrapper killed by SIGKILL", 75, "kept",
         "4.3.0 <{A}>: wrapper killed by signal 9" + KEPT,
         "wrapper killed by signal 9", stand_in={"fault": "signal", "signal": 9}),
    wrap("wrapper killed by SIGSEGV", 75, "kept",
         "4.3.0 <{A}>: wrapper killed by signal 11" + KEPT,
         "wrapper killed by signal 11", stand_in={"fault": "signal", "signal": 11}),
    wrap("wrapper exits 0 without reading stdin", 75, "kept",
         "4.3.0 <{A}>: wrapper exited 0 without reading the whole message" + KEPT,
         "wrapper exited 0 without reading the whole message",
         stand_in={"fault": "noread"}),
    wrap("wrapper exits 0 without reading a 1 MB message", 75, "kept",
         "4.3.0 <{A}>: wrapper exited 0 without reading the whole message" + KEPT,
         "wrapper exited 0 without reading the whole message", message=BIG, size="…",
         stand_in={"fault": "noread"}),
    wrap("wrapper slower than the timeout", 75, "kept",
         "4.3.0 <{A}>: wrapper did not finish within 1 s and was killed" + KEPT,
         "wrapper did not finish within 1 s and was killed",
         stand_in={"fault": "sleep", "seconds": 30}, timeout="1"),
    wrap("wrapper healthy", 0, "mailman", "", "accepted by the Mailman 2 wrapper"),
    # --- local ------------------------------------------------------------------------
    local("config missing", 75, "kept",
          "4.3.5 mm-handler: {CFG}: configuration file not found; the message is kept "
          "for retry",
          "site fault, exit 75: {CFG}: configuration file not found",
          config="missing"),
    local("config unreadable", 75, "kept",
          "4.3.5 mm-handler: {CFG}: configuration file not readable by uid 65534; the "
          "message is kept for retry",
          "site fault, exit 75: {CFG}: configuration file not readable by uid 65534",
          config="unreadable", user="nobody"),
    local("config broken syntax", 75, "kept",
          "4.3.5 mm-handler: {CFG} line 2: section header without ']'; the message is "
          "kept for retry",
          "site fault, exit 75: {CFG} line 2: section header without ']'",
          config="broken"),
    local("config unknown backend", 75, "kept",
          "4.3.5 mm-handler: {CFG}: [mm-handler] backend = 'mailman4': must be one of: "
          "mailman3, mailman2; the message is kept for retry",
          "site fault, exit 75: {CFG}: [mm-handler] backend = 'mailman4': must be one "
          "of: mailman3, mailman2",
          config="unknown backend"),
    local("arguments without a recipient", 75, "kept",
          "4.3.5 mm-handler: bad arguments: expected HOST RECIPIENT... after the "
          "options, got 1 argument (is the mailer's A= 'mm-handler $h $u'?); usage: "
          "mm-handler [-C FILE] [--dry-run] [-r SENDER] HOST RECIPIENT...; the message "
          "is kept for retry",
          "site fault, exit 75: bad arguments: expected HOST RECIPIENT... after the "
          "options, got 1 argument (is the mailer's A= 'mm-handler $h $u'?); usage: "
          "mm-handler [-C FILE] [--dry-run] [-r SENDER] HOST RECIPIENT...",
          argv="host only"),
    local("lists directory unreadable (Mailman 2)", 75, "kept",
          "4.3.0 <{A}>: lists directory {LISTS} is not searchable by uid 65534" + KEPT,
          ('list=- action=- backend=mailman2',
           "lists directory {LISTS} is not searchable by uid 65534", "-"),
          backend="mailman2", lists="unreadable", user="nobody"),
    local("lists directory unreadable (Mailman 3 var_dir)", 75, "kept",
          "4.3.0 <{A}>: lists directory {LISTS} is not searchable by uid 65534" + KEPT,
          ('list=- action=- backend=mailman3',
           "lists directory {LISTS} is not searchable by uid 65534", "-"),
          backend="mailman3", lists="unreadable", user="nobody"),
    local("empty stdin", 75, "kept",
          "4.3.0 <{A}>: no message on standard input" + KEPT,
          ('list=test action=post backend=mailman2', "no message on standard input",
           "-"), backend="mailman2", message=b""),
    local("stdin only a From_ line", 75, "kept",
          "4.3.0 <{A}>: no message on standard input" + KEPT,
          ('list=test action=post backend=mailman3', "no message on standard input",
           "-"), backend="mailman3", message=FROM_LINE),
    # --- the bounce hand-off (unknown_list = bounce) --------------------------------
    local("bounce hand-off: sendmail missing", 75, "kept",
          "4.3.0 <{A}>: cannot run {SM} to send the bounce: No such file or directory"
          + KEPT,
          ('list=- action=- backend=mailman2',
           "cannot run {SM} to send the bounce: No such file or directory", "-"),
          backend="mailman2", rcpt="nope", bounce="missing"),
    local("bounce hand-off: sendmail failing", 75, "kept",
          "4.3.0 <{A}>: {SM} exited 73 taking the bounce: sendmail: queue "
          "directory not writable" + KEPT,
          ('list=- action=- backend=mailman3', "{SM} exited 73 taking the bounce: "
           "sendmail: queue directory not writable", "-"),
          backend="mailman3", rcpt="nope", bounce="failing"),
    local("bounce hand-off healthy", 0, "letter", "",
          ('list=- action=- backend=mailman2',
           "refused (no list named 'nope' here), bounce sent to <alice@example.org>",
           "-"),
          backend="mailman2", rcpt="nope", bounce="healthy"),
    local("spool directory missing (two recipients)", 75, "kept",
          "4.3.0 <{A}>: cannot spool the message in {SPOOL}: No such file or "
          "directory" + KEPT + "\n4.3.0 <other@" + HOST + ">: cannot spool the "
          "message in {SPOOL}: No such file or directory" + KEPT,
          ('list=test action=post backend=mailman2',
           "cannot spool the message in {SPOOL}: No such file or directory", "-"),
          backend="mailman2", spool="missing", argv="two recipients"),
]


def pattern(template, values):
    """A template with {NAME}s and "…" wildcards -> an anchored regex."""
    parts = []
    for piece in template.split("…"):
        for name, value in values.items():
            piece = piece.replace("{%s}" % name, "\0%s\0" % name)
        out = []
        for i, bit in enumerate(piece.split("\0")):
            out.append(re.escape(str(values[bit])) if i % 2 else re.escape(bit))
        parts.append("".join(out))
    return re.compile(".*".join(parts), re.S)


@pytest.fixture
def world(public_tmp):
    """A private directory everyone can reach (the handler may run as nobody)."""
    root = tempfile.mkdtemp(prefix="fault-", dir=str(public_tmp))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_in_namespace(handler, argv, stdin, sink, stage, user=None, gid=None,
                     timeout=60):
    os.makedirs(stage, exist_ok=True)
    command = [str(handler)] + argv
    if user is not None:
        command = ["/usr/bin/setpriv", "--reuid=%d" % user, "--regid=%d" % user,
                   "--clear-groups"] + command
    elif gid is not None:       # root, but the real (and effective) gid is gid
        command = ["/usr/bin/setpriv", "--regid=%d" % gid, "--clear-groups"] + command
    proc = subprocess.run(
        ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
         NAMESPACE_SCRIPT, "sh", stage, sink] + command,
        input=stdin, capture_output=True, env={}, cwd="/", timeout=timeout)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), \
        proc.stderr.decode("utf-8", "replace")


def lmtp_payload(message):
    """What an LMTP server receives for `message` (dot-stuffing undone)."""
    rest = message.split(b"\n", 1)[1] if message.startswith(b"From ") else message
    rest = rest.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not rest.endswith(b"\r\n"):
        rest += b"\r\n"
    return (b"X-Mailman-Handler: mm-handler 0.1.0\r\nDelivered-To: "
            + ADDRESS.encode() + b"\r\n" + rest)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_fault_matrix(handler, world, row):
    setup = dict(row.setup)
    sink = SyslogSink(os.path.join(world, "log.sock"))
    servers = []
    holders = []
    values = {"A": ADDRESS, "SIZE": len(row.message)}
    try:
        # --- Mailman 2 stand-in and Mailman 3 scripted server, always present ---
        mm2 = Installed(os.path.join(world, "mailman2"), lists=["test", "other"])
        mm2.configure(**setup.pop("stand_in", {}))
        wrapper = mm2.path
        problem = setup.pop("wrapper", None)
        if problem == "missing":
            wrapper = os.path.join(world, "mailman2", "mail", "nothing-here")
        elif problem == "not executable":
            os.chmod(wrapper, 0o644)
        elif problem == "list missing":
            mm2.configure(lists_dir=os.path.join(world, "empty-lists"))
        values["W"] = wrapper

        var_dir = os.path.join(world, "mailman3-var")
        os.makedirs(os.path.join(var_dir, "lists", "test." + HOST))
        for path in (var_dir, os.path.join(var_dir, "lists")):
            os.chmod(path, 0o755)

        endpoints = []
        for kind in setup.pop("endpoints", "server").split(","):
            if kind == "refused":
                holder, endpoint = refused_endpoint()
                holders.append(holder)
                values["R"] = endpoint
                endpoints.append(endpoint)
            elif kind == "421":
                first = ScriptedLMTP({"greeting": "421 4.3.2 Service not available"})
                servers.append(first)
                endpoints.append(first.endpoint)
            else:
                server = ScriptedLMTP(setup.pop("script", {}))
                servers.append(server)
                values["N"] = server.endpoint
                endpoints.append(server.endpoint)

        backend = setup.pop("backend", "mailman3" if row.kind == "lmtp" else "mailman2")
        lists_dir = mm2.lists_dir if backend == "mailman2" else os.path.join(var_dir,
                                                                             "lists")
        values["LISTS"] = lists_dir
        if setup.pop("lists", None) == "unreadable":
            os.chmod(lists_dir, 0o700)
        spool = os.path.join(world, "spool")
        os.mkdir(spool)
        os.chmod(spool, 0o1777)
        if setup.pop("spool", None) == "missing":
            spool = os.path.join(world, "no-spool-here")
        values["SPOOL"] = spool

        letters = os.path.join(world, "letters")
        os.mkdir(letters)
        sendmail = os.path.join(world, "sendmail")
        bounce = setup.pop("bounce", None)
        if bounce == "healthy":
            script = 'exec /bin/cat > "%s/$$"' % letters
        else:
            script = ("/bin/cat > /dev/null; echo 'sendmail: queue directory not "
                      "writable'; exit 73")
        if bounce != "missing":
            with open(sendmail, "w") as f:
                f.write("#!/bin/sh\n%s\n" % script)
            os.chmod(sendmail, 0o755)
        values["SM"] = sendmail

        sections = {
            "mm-handler": {"backend": backend, "syslog_socket": sink.path,
                           "spool_dir": spool, "spool_threshold": "0",
                           "unknown_list": "bounce" if bounce else "reject"},
            "bounce": {"sendmail": sendmail},
            "mailman2": {"wrapper": wrapper, "lists_dir": mm2.lists_dir,
                         "timeout": setup.pop("timeout", "20")},
            "mailman3": {"lmtp": ", ".join(endpoints), "var_dir": var_dir,
                         "timeout": "1"},
        }
        config = os.path.join(world, "mm-handler.cfg")
        text = render_config(sections)
        problem = setup.pop("config", None)
        if problem == "missing":
            config = os.path.join(world, "missing.cfg")
        elif problem == "broken":
            text = "# broken\n[mm-handler\nbackend = mailman2\n"
        elif problem == "unknown backend":
            text = text.replace("backend = mailman2", "backend = mailman4")
        if problem != "missing":
            with open(config, "w") as f:
                f.write(text)
            os.chmod(config, 0o600 if problem == "unreadable" else 0o644)
        values["CFG"] = config

        argv = ["-r", "alice@example.org", "-C", config, HOST, "test"]
        shape = setup.pop("argv", None)
        if shape == "host only":
            argv = argv[:-1]
        elif shape == "two recipients":
            argv.append("other")
        if "rcpt" in setup:
            argv[argv.index("test")] = setup.pop("rcpt")
            values["A"] = argv[-1] + "@" + HOST
        size = setup.pop("size", None)
        mailer_gid = setup.pop("mailer_gid", None)
        assert not setup, "unused row settings: %r" % setup

        # --- run it -------------------------------------------------------------
        code, stdout, stderr = run_in_namespace(
            handler, argv, row.message, sink.path, os.path.join(world, "stage"),
            user=NOBODY if row.user == "nobody" else None, gid=mailer_gid)
        for server in servers:
            server.wait_idle()

        # --- exit code -------------------------------------------------------------
        assert code == row.code, (code, stdout, stderr)
        assert {"mailman": {0}, "kept": {75}, "bounced": {65, 67, 69},
                "letter": {0}}[row.where] >= {row.code}
        # --- the stderr line ---------------------------------------------------------
        if row.stderr:
            assert pattern(row.stderr + "\n", values).fullmatch(stderr), stderr
        else:
            assert stderr == ""
        # --- the syslog line ---------------------------------------------------------
        logged = sink.messages()
        assert all("internal error" not in m for m in logged), logged
        if isinstance(row.log, str):
            expected = row.log
        else:
            if len(row.log) == 3:
                where, reason, reply = row.log
            else:
                (reason, reply), where = row.log, "list=test action=post backend=%s" \
                    % backend
            expected = ('sender=<alice@example.org> recipient={A} %s status=%d '
                        'dry_run=no reason="%s" reply=%s size=%s ms=…'
                        % (where, row.code, reason,
                           reply if reply == "-" else '"%s"' % reply,
                           size or "{SIZE}"))
        assert pattern(expected, values).fullmatch(logged[0]), logged
        assert len(logged) == (2 if shape == "two recipients" else 1), logged
        # --- where the message is ------------------------------------------------------
        delivered = [d for s in servers for d in s.delivered()]
        queued = [data for _, data in mm2.queued()]
        if row.where == "mailman":
            if backend == "mailman3":
                assert delivered == [(["<%s>" % ADDRESS], lmtp_payload(row.message))]
                assert queued == []
            else:
                assert queued == [FROM_LINE + b"X-Mailman-Handler: mm-handler 0.1.0\n"
                                  + b"Delivered-To: " + ADDRESS.encode() + b"\n"
                                  + row.message[len(FROM_LINE):]]
                assert delivered == []
        else:
            assert delivered == [] and queued == []
            assert [run for run in mm2.runs() if run["outcome"] == "queued"] == []
        # a bounce letter was handed to sendmail only where the row says so
        letters_sent = os.listdir(letters)
        assert len(letters_sent) == (1 if row.where == "letter" else 0)
        if letters_sent:
            with open(os.path.join(letters, letters_sent[0]), "rb") as f:
                letter = f.read()
            assert b"To: <alice@example.org>\n" in letter
            assert ("Final-Recipient: rfc822; nope@" + HOST).encode() \
                in letter
        if row.id == "lmtp no reply after the dot (timeout)":
            # the server had the whole message: a retry may duplicate, never lose
            assert servers[0].sessions[0].data_complete
        if row.id.startswith("lmtp first of two hosts"):
            assert sum(len(s.sessions) for s in servers) == (1 if "down" in row.id else 2)
    finally:
        for server in servers:
            server.stop()
        for holder in holders:
            holder.close()
        sink.close()
