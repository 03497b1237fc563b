"""mm-handler against the REAL Mailman 2.1 wrapper and scripts (no stand-in).

The real Mailman 2 (tests/peers/mailman2_real.py) runs in a private
namespace; mm-handler runs as Sendmail's U=list:list would run it.  What is
checked comes from ../shared/docs/mailman2-wrapper.md (observed with the
real program): where each address queues and with which flag, the bytes
of the queue file, the wrapper's exit codes (each a site fault: 75, the
wrapper's words passed on), rmlist, the list names Mailman 2 accepts.

The last part runs the stand-in (tests/peers/mailman2_wrapper.py) and the
real wrapper on the same cases and wants the same answers.
"""

import grp
import os
import shutil
import uuid

import pytest

from tests.conftest import sample_message
from tests.peers.mailman2_wrapper import Installed

pytest_plugins = ["tests.peers.mailman2_real"]

HOST = "lists.example.test"
SENDER = "alice@example.org"
LIST = "test"
NAME_70 = ("a-list-name-of-seventy-characters-" + "0123456789" * 7)[:70]


@pytest.fixture(scope="module")
def lists(mailman2_real):
    mailman2_real.ensure_list(LIST)
    return mailman2_real


@pytest.fixture
def mm2(mm2real, lists):
    return mm2real


@pytest.fixture
def config(mm2, public_tmp):
    """config(**mm_handler_keys) -> a config file the mailer user can read."""
    directory = public_tmp / "mm2real-configs"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)

    def make(**keys):
        return mm2.write_config(directory / ("%s.cfg" % uuid.uuid4().hex), **keys)
    return make


def expected_queue_bytes(mm2, message, recipient):
    return mm2.expected_queue_bytes(message, recipient)


def address(local):
    return "%s@%s" % (local, HOST)


# --- 1. every address form: the right queue, the right flag ------------------------

ADDRESS_FORMS = [
    # (local part, queue, metadata flags)           facts: "Where each command queues"
    ("test", "in", ["tolist"]),
    ("test-admin", "bounces", []),
    ("test-bounces", "bounces", []),
    ("test-confirm", "commands", ["toconfirm"]),
    ("test-confirm+0123abcd4567", "commands", ["toconfirm"]),
    ("test-join", "commands", ["tojoin"]),
    ("test-leave", "commands", ["toleave"]),
    ("test-owner", "in", ["toowner"]),
    ("owner-test", "in", ["toowner"]),
    ("test-request", "commands", ["torequest"]),
    ("test-subscribe", "commands", ["tojoin"]),
    ("test-unsubscribe", "commands", ["toleave"]),
    ("test-bounces+user=example.org", "bounces", []),
]


@pytest.mark.parametrize("local, queue, flags", ADDRESS_FORMS,
                         ids=[a for a, _, _ in ADDRESS_FORMS])
def test_each_address_form_lands_in_its_queue_with_its_flag(mm2, config, local,
                                                            queue, flags):
    message = sample_message(subject="form " + local)
    r = mm2.deliver(config(), ["-r", SENDER, HOST, local], message)
    assert (r.code, r.stderr, r.stdout) == (0, "", ""), r
    [entry] = mm2.queue()
    assert (entry.queue, entry.flags, entry.listname) == (queue, flags, LIST)
    assert entry.data == expected_queue_bytes(mm2, message, address(local))


# --- 2. the queue file holds the bytes Sendmail handed over --------------------------

def _message(name):
    if name == "8-bit":
        return sample_message(body="Grüße, ça va? 日本語\n".encode()
                              + bytes(range(128, 256)) + b"\nLatin-1: Gr\xfc\xdfe\n")
    if name == "dot lines":
        return sample_message(body=b".\n..\n. \n.leading dot\n...\nend\n.")
    if name == "CRLF body":
        return sample_message(body=b"line one\r\nline two\r\n.\r\n\r\nlast\r\n")
    if name == "CRLF throughout":
        return (b"From alice@example.org Sun Nov 22 02:44:03 2026\r\n"
                b"From: Alice <alice@example.org>\r\nSubject: crlf\r\n\r\n"
                b"body\r\n.\r\nend\r\n")
    if name == "2000-byte lines":
        return sample_message(body=(b"x" * 1999 + b"\n") * 3 + b"y" * 2000 + b"\n")
    if name == "no final newline":
        return sample_message(body=b"first line\nlast line without newline")
    if name == "3 MB":
        line = b"%07d " + b"z" * 91 + b"\n"
        return sample_message(body=b"".join(line % i for i in range(30000)))
    raise AssertionError(name)


BYTE_CASES = ["8-bit", "dot lines", "CRLF body", "CRLF throughout", "2000-byte lines",
              "no final newline", "3 MB"]


@pytest.mark.parametrize("name", BYTE_CASES)
def test_the_queue_file_holds_the_bytes_sendmail_handed_over(mm2, config, name):
    message = _message(name)
    if name == "3 MB":
        assert len(message) >= 3 * 1000 * 1000
    r = mm2.deliver(config(), ["-r", SENDER, HOST, LIST], message)
    assert (r.code, r.stderr) == (0, ""), r
    [entry] = mm2.queue()
    assert entry.queue == "in"
    assert entry.data == expected_queue_bytes(mm2, message, address(LIST))


def test_a_request_keeps_its_bytes_too(mm2, config):
    message = _message("8-bit")
    r = mm2.deliver(config(), ["-r", SENDER, HOST, "test-request"], message)
    assert r.code == 0, r
    [entry] = mm2.queue()
    assert entry.data == expected_queue_bytes(mm2, message, address("test-request"))


# --- 3. every real wrapper failure: 75 and the wrapper's own words ---------------------

def said(words):
    """The wrapper's words as they appear on mm-handler's one stderr line."""
    return "(wrapper said: " + " ".join(words.split("\n"))[:100]


def assert_kept(r, recipient, code, words):
    assert r.code == 75, r
    assert r.stderr.startswith("4.3.0 <%s>: wrapper exit %d: " % (recipient, code)), r
    assert said(words) in r.stderr, r.stderr
    assert r.stderr.endswith("; kept for retry\n") and r.stderr.count("\n") == 1, r


def free_gid():
    gid = 54321
    while True:
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid
        gid += 1


def test_exit_1_list_not_found_although_config_pck_is_there(mm2, config):
    # lists/hidden/ searchable by "other" (mm-handler, uid list, sees config.pck)
    # but not by group mailman, the wrapper's setgid group (the scripts do not)
    mm2.ensure_list("hidden")
    listdir = mm2.files / "lists" / "hidden"
    mode = listdir.stat().st_mode
    listdir.chmod(0o701)
    try:
        r = mm2.deliver(config(), ["-r", SENDER, HOST, "hidden"], sample_message())
    finally:
        listdir.chmod(mode & 0o7777)
    assert_kept(r, address("hidden"), 1, "post script, list not found: hidden")
    assert mm2.queue() == []


def test_exit_1_a_list_name_the_wrapper_refuses(mm2, config):
    # "x!y" passes mm-handler's name pattern; Mailman 2 only takes [-+_.=a-z0-9]
    # ("Hostile listname"): a lists/x!y/config.pck does not make it a list
    hostile = mm2.files / "lists" / "x!y"
    hostile.mkdir()
    try:
        shutil.copy2(mm2.files / "lists" / LIST / "config.pck", hostile / "config.pck")
        r = mm2.deliver(config(), ["-r", SENDER, HOST, "x!y"], sample_message())
    finally:
        shutil.rmtree(hostile)
    assert_kept(r, address("x!y"), 1, "post script, list not found: x!y")
    assert mm2.queue() == []


def test_exit_1_the_list_vanished_between_the_check_and_the_wrapper(mm2, config,
                                                                    public_tmp):
    # mm-handler's view of the lists (lists_dir) still has it; Mailman has not
    view = public_tmp / "mm2real-view"
    (view / "ghost").mkdir(parents=True, exist_ok=True)
    (view / "ghost" / "config.pck").write_bytes(b"")
    for p in (view, view / "ghost"):
        p.chmod(0o755)
    r = mm2.deliver(config(lists_dir=view), ["-r", SENDER, HOST, "ghost-request"],
                    sample_message())
    # the request script calls itself "mailcmd"
    assert_kept(r, address("ghost-request"), 1, "mailcmd script, list not found: ghost")
    assert mm2.queue() == []


def test_exit_2_the_mailer_runs_with_another_group(mm2, config):
    r = mm2.deliver(config(), ["-r", SENDER, HOST, LIST], sample_message(),
                    group="nogroup")
    assert_kept(r, address(LIST), 2,
                'Group mismatch error.  Mailman expected the mail\nwrapper script to '
                'be executed as group "list", but\nthe system\'s mail server executed '
                'the mail script as\ngroup "nogroup".')
    assert mm2.queue() == []


def test_exit_8_the_mailer_runs_with_a_gid_without_a_name(mm2, config):
    gid = free_gid()
    r = mm2.deliver(config(), ["-r", SENDER, HOST, LIST], sample_message(), group=gid)
    assert_kept(r, address(LIST), 8,
                "Failure to find group name for GID %d.  Mailman\nexpected the mail "
                "wrapper to be executed as group\n\"list\"" % gid)
    assert mm2.queue() == []


def shim(mm2, public_tmp, name, body):
    """WRAPPER as a symlink to a shell script that runs the real wrapper."""
    directory = public_tmp / "mm2real-shims"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    script = directory / (name + ".sh")
    script.write_text("#!/bin/sh\n" + body.replace("REAL", str(mm2.wrapper)) + "\n")
    script.chmod(0o755)
    link = directory / name
    if link.is_symlink():
        link.unlink()
    link.symlink_to(script)
    return link


def test_exit_5_the_wrapper_without_arguments(mm2, public_tmp):
    link = shim(mm2, public_tmp, "no-arguments", "exec REAL")
    cfg = mm2.write_config(public_tmp / "mm2real-shim5.cfg", wrapper=link)
    r = mm2.deliver(cfg, ["-r", SENDER, HOST, LIST], sample_message())
    assert_kept(r, address(LIST), 5, "Usage: %s program [args...]" % mm2.wrapper)
    assert mm2.queue() == []


def test_exit_6_an_illegal_command(mm2, public_tmp):
    link = shim(mm2, public_tmp, "illegal-command", 'exec REAL bogus "$2"')
    cfg = mm2.write_config(public_tmp / "mm2real-shim6.cfg", wrapper=link)
    r = mm2.deliver(cfg, ["-r", SENDER, HOST, LIST], sample_message())
    assert_kept(r, address(LIST), 6, "Illegal command: bogus")
    assert mm2.queue() == []


def test_an_action_the_wrapper_does_not_know_cannot_be_configured(mm2, config):
    # the way to exit 6 through the configuration is closed: mm-handler refuses
    # an approved action outside the wrapper's ten commands, and runs nothing
    r = mm2.deliver(config(approved_actions="post bogus"), ["-r", SENDER, HOST, LIST],
                    sample_message())
    assert r.code == 75, r
    assert "bogus" in r.stderr and "kept for retry" in r.stderr, r
    assert mm2.queue() == []


# --- 4. rmlist between two deliveries --------------------------------------------------

def test_a_list_removed_with_rmlist_is_unknown_the_next_time(mm2, config):
    mm2.ensure_list("gone")
    cfg = config()
    message = sample_message(subject="before rmlist")
    r = mm2.deliver(cfg, ["-r", SENDER, HOST, "gone"], message)
    assert (r.code, r.stderr) == (0, ""), r
    [entry] = mm2.queue()
    assert (entry.queue, entry.listname) == ("in", "gone")
    mm2.rmlist("gone")
    r = mm2.deliver(cfg, ["-r", SENDER, HOST, "gone"], sample_message(subject="after"))
    assert r.code == 67, r
    assert r.stderr == '5.1.1 <%s>: no list named "gone" here\n' % address("gone")
    assert [e.path for e in mm2.queue()] == [entry.path]


# --- 5. names Mailman 2 really accepts --------------------------------------------------

@pytest.mark.parametrize("name", ["foo=bar", "a.b", NAME_70],
                         ids=["foo=bar", "a.b", "70 characters"])
def test_list_names_mailman2_accepts_are_delivered(mm2, config, name):
    assert len(NAME_70) == 70
    mm2.ensure_list(name)
    cfg = config()
    post, request = sample_message(subject="post"), sample_message(subject="request")
    r = mm2.deliver(cfg, ["-r", SENDER, HOST, name], post)
    assert (r.code, r.stderr) == (0, ""), r
    r = mm2.deliver(cfg, ["-r", SENDER, HOST, name + "-request"], request)
    assert (r.code, r.stderr) == (0, ""), r
    got = [(e.queue, e.flags, e.listname, e.data) for e in mm2.queue()]
    assert got == [
        ("in", ["tolist"], name, expected_queue_bytes(mm2, post, address(name))),
        ("commands", ["torequest"], name,
         expected_queue_bytes(mm2, request, address(name + "-request")))]


def test_a_list_mailman2_sees_through_config_pck_last_only(mm2, config):
    # facts: "A list exists when lists/NAME/ holds config.pck, config.pck.last,
    # config.db or config.db.last" (Utils.list_exists)
    mm2.ensure_list("lastonly")
    listdir = mm2.files / "lists" / "lastonly"
    (listdir / "config.pck").rename(listdir / "config.pck.last")
    try:
        message = sample_message()
        r = mm2.deliver(config(), ["-r", SENDER, HOST, "lastonly"], message)
    finally:
        (listdir / "config.pck.last").rename(listdir / "config.pck")
    assert (r.code, r.stderr) == (0, ""), r
    [entry] = mm2.queue()
    assert (entry.queue, entry.listname) == ("in", "lastonly")


# --- 7. the stand-in answers as the real wrapper does ----------------------------------

@pytest.fixture(scope="module")
def standin(lists, public_tmp):
    """tests/peers/mailman2_wrapper.py installed for the mailer user (gid list)."""
    import pwd
    user = pwd.getpwnam("list")
    root = public_tmp / "mm2-standin"
    wrapper = Installed(root, lists=[LIST], group="list")
    for path in (wrapper.qfiles_dir, os.path.join(wrapper.qfiles_dir, "in")):
        os.makedirs(path, exist_ok=True)
        os.chown(path, user.pw_uid, user.pw_gid)
    return wrapper


@pytest.fixture
def both(mm2, standin):
    standin.clear()
    open(standin.log_path, "a").close()
    os.chmod(standin.log_path, 0o666)
    return mm2, standin


STANDIN_MESSAGE = (b"From alice@example.org Sun Nov 22 02:44:03 2026\n"
                   b"Subject: compare\r\n\r\n8-bit \xe9\xff\xc3\xa9\n.\nno final newline")

COMMANDS = ["post", "admin", "bounces", "confirm", "join", "leave", "owner",
            "request", "subscribe", "unsubscribe"]

COMPARE = [(c, [c, LIST], "list", None) for c in COMMANDS] + [
] + [("missing list, %s" % c, [c, "nolist"], "list", None) for c in COMMANDS] + [
    ("upper-case name", ["post", "TEST"], "list", None),
    ("no list name", ["post"], "list", None),
    ("no list name, owner", ["owner"], "list", None),
    ("no arguments", [], "list", None),
    ("illegal command", ["bogus", LIST], "list", None),
    ("illegal command before the group", ["bogus", LIST], "nogroup", None),
    ("group mismatch", ["post", LIST], "nogroup", None),
    ("gid without a name", ["post", LIST], "FREE", None),
    ("hostile name with a config.pck", ["post", "x!y"], "list", ("x!y", "config.pck")),
    ("config.pck.last only", ["post", "lastonly2"], "list",
     ("lastonly2", "config.pck.last")),
    ("config.db.last only", ["post", "dblast"], "list", ("dblast", "config.db.last")),
]


def real_answer(mm2, args, group):
    proc = mm2.wrapper_run(args, STANDIN_MESSAGE, group=group)
    return {"exit": proc.returncode,
            "stderr": proc.stderr.decode(errors="replace").replace(
                str(mm2.wrapper), "WRAPPER"),
            "queued": [(e.queue, e.flags, e.listname, e.data) for e in mm2.queue()]}


def standin_answer(mm2, standin, args, group):
    from tests.peers.mailman2_real import QueueEntry
    proc = mm2.wrapper_run(args, STANDIN_MESSAGE, group=group, wrapper=standin.path)
    runs = [r for r in standin.runs() if r.get("outcome") == "queued"]
    queued = []
    for run, (path, data) in zip(runs, standin.queued()):
        queue = os.path.basename(os.path.dirname(path))
        if path.endswith(".pck"):           # should it pickle as Mailman does
            data = QueueEntry(queue, path).data
        flags = sorted(k for k, v in run.get("metadata", {}).items()
                       if k.startswith("to") and v)
        queued.append((queue, flags, run.get("listname"), data))
    return {"exit": proc.returncode,
            "stderr": proc.stderr.decode(errors="replace").replace(
                standin.path, "WRAPPER"),
            "queued": queued}


@pytest.mark.parametrize("case, args, group, listfile", COMPARE,
                         ids=[c for c, _, _, _ in COMPARE])
def test_the_stand_in_answers_as_the_real_wrapper(both, case, args, group, listfile):
    mm2, standin = both
    group = free_gid() if group == "FREE" else group
    made = []
    if listfile:
        name, filename = listfile
        real_dir = mm2.files / "lists" / name
        real_dir.mkdir()
        shutil.copy2(mm2.files / "lists" / LIST / "config.pck", real_dir / filename)
        standin.add_list(name, filename=filename)
        made = [real_dir, os.path.join(standin.lists_dir, name)]
    try:
        real = real_answer(mm2, args, group)
        stand_in = standin_answer(mm2, standin, args, group)
    finally:
        for path in made:
            shutil.rmtree(path)
    assert stand_in == real
