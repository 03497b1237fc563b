"""Recipient -> list, action, detail: plain examples of the pure functions."""

import pytest

from mm_handler import address, registry
from mm_handler.address import Target, is_domain, is_list_name, readings, split_recipient
from mm_handler.cli import MAILMAN3_ACTION

HOST = "lists.example.test"


def T(name, action="post", detail="", domain=HOST):
    return Target(name, action, detail, domain)


# --- readings(): every way of reading a recipient, preferred first ---------

@pytest.mark.parametrize("recipient, expected", [
    ("test", [T("test")]),
    ("test-request", [T("test-request"), T("test", "request")]),
    ("test-admin", [T("test-admin"), T("test", "admin")]),
    ("test-bounces", [T("test-bounces"), T("test", "bounces")]),
    ("test-confirm", [T("test-confirm"), T("test", "confirm")]),
    ("test-join", [T("test-join"), T("test", "join")]),
    ("test-leave", [T("test-leave"), T("test", "leave")]),
    ("test-owner", [T("test-owner"), T("test", "owner")]),
    ("test-subscribe", [T("test-subscribe"), T("test", "subscribe")]),
    ("test-unsubscribe", [T("test-unsubscribe"), T("test", "unsubscribe")]),
    ("owner-test", [T("owner-test"), T("test", "owner")]),
    # +detail after the action, or after a plain list name; its case is kept
    ("test-bounces+alice=example.org",
     [T("test-bounces", detail="alice=example.org"),
      T("test", "bounces", "alice=example.org")]),
    ("test-confirm+0123ABCD",
     [T("test-confirm", detail="0123ABCD"), T("test", "confirm", "0123ABCD")]),
    ("test+tag", [T("test", detail="tag")]),
    ("test+", [T("test")]),
    # lists are lower case; the domain is lowered too
    ("Test-Request", [T("test-request"), T("test", "request")]),
    ("TEST", [T("test")]),
    # hyphenated names: the last hyphen only separates an action
    ("my-list-request", [T("my-list-request"), T("my-list", "request")]),
    ("my-list", [T("my-list")]),
    ("test-foo", [T("test-foo")]),
    ("news-bounces", [T("news-bounces"), T("news", "bounces")]),
    ("x-owner", [T("x-owner"), T("x", "owner")]),
    ("test.list", [T("test.list")]),
    # a whole address: its domain wins over HOST
    ("test@Other.Example", [T("test", domain="other.example")]),
    ("test-request@other.example",
     [T("test-request", domain="other.example"),
      T("test", "request", domain="other.example")]),
    ("owner-", [T("owner-")]),
])
def test_readings(recipient, expected):
    assert readings(recipient, HOST) == expected


@pytest.mark.parametrize("recipient", [
    "", "+", "+tag", "-owner", "-test", "../x", "..", "../../etc/passwd", "a/b",
    "/etc/passwd", ".test", "test..list", "te\x00st", "test\r\nRCPT TO:<x>",
    "test\n", "$(reboot)", "`id`", "a;b", "a|b", "a'b", 'a"b', "a b", "TÉST",
    "têst", "a@b@" + HOST, "test+a b", "test+a\x00", "test+\r\n", "a" * 256,
    "a" * 10240, "test+" + "x" * 10240, "-request", "--help", "-C/etc/passwd",
    "test@", "test@-bad.example", "test@bad-.example", "test@lists..example",
    "test@exa mple", "test@" + "a" * 64 + ".example", "test@" + "a." * 127 + "a",
    "test@ex\x00ample", "test@../../etc", "\u212aeys", "test@\u212a.example",
    "TEST\u0130", "\uff54est",
])
def test_hostile_recipients_have_no_reading(recipient):
    assert readings(recipient, HOST) == []


@pytest.mark.parametrize("host", ["", "-C", "../etc", "a/b", "ex ample", "\x00",
                                  "lists.example.test\r\n", "ünicode.example"])
def test_a_bad_host_gives_no_reading(host):
    assert readings("test", host) == []


def test_owner_owner_reads_as_the_list_owner():
    # owner-owner: a list of that name, else the owner of the list "owner"
    assert readings("owner-owner", HOST)[:2] == [T("owner-owner"), T("owner", "owner")]


def test_maximum_name_length():
    # Mailman 2 has no limit (a 70-character list is real); a name is one file name
    assert readings("a" * 70, HOST) == [T("a" * 70)]
    assert readings("a" * 255, HOST) == [T("a" * 255)]
    assert readings("a" * 256, HOST) == []


# --- the strict patterns ---------------------------------------------------

@pytest.mark.parametrize("name", ["test", "my-list", "a", "a.b", "x_y", "0day",
                                  "owner-", "a" * 64, "a" * 70, "a" * 255,
                                  "foo=bar", "a~b", "x{1}", "a!b$c*"])
def test_is_list_name_accepts(name):
    assert is_list_name(name)


@pytest.mark.parametrize("name", ["", "-x", ".x", "a..b", "A", "a/b", "..", ".",
                                  "a b", "a\x00", "a\n", "ä", "a" * 256, "a+b", "a@b",
                                  "a/b", "a\\b", "a%b", "a'b", "a`b", "a|b"])
def test_is_list_name_refuses(name):
    assert not is_list_name(name)


@pytest.mark.parametrize("domain, ok", [
    ("lists.example.test", True), ("localhost", True), ("xn--bcher-kva.example", True),
    ("a-b.example", True), ("", False), ("-a.example", False), ("a-.example", False),
    ("a..example", False), (".example", False), ("Lists.Example", False),
    ("a_b.example", False), ("[127.0.0.1]", False), ("a" * 64 + ".example", False),
    ("a" * 63 + ".example", True), ("ex ample", False),
])
def test_is_domain(domain, ok):
    assert is_domain(domain) is ok


@pytest.mark.parametrize("recipient, expected", [
    ("test", ("test", HOST)),
    ("Test@Lists.Example.ORG", ("Test", "lists.example.org")),
    ("a@b@c.example", ("a@b", "c.example")),
    ("test@", ("test", "")),
])
def test_split_recipient(recipient, expected):
    assert split_recipient(recipient, HOST) == expected


def test_split_recipient_lowers_the_default_domain():
    assert split_recipient("x", "Lists.Example.Test") == ("x", "lists.example.test")


# --- Target.local_part: the address given to Mailman -----------------------

@pytest.mark.parametrize("target, action, expected", [
    (T("test"), None, "test"),
    (T("test", "request"), None, "test-request"),
    (T("test", "bounces", "alice=example.org"), None, "test-bounces+alice=example.org"),
    (T("test", "owner"), None, "test-owner"),
    (T("test", "admin"), MAILMAN3_ACTION["admin"], "test-bounces"),
    (T("test", detail="tag"), None, "test+tag"),
    (T("my-list", "confirm", "abc"), None, "my-list-confirm+abc"),
])
def test_local_part(target, action, expected):
    assert target.local_part(action) == expected


def test_mailman3_has_no_admin_address():
    assert MAILMAN3_ACTION == {"admin": "bounces"}
    assert set(address.ACTIONS) == {"post", "admin", "bounces", "confirm", "join",
                                    "leave", "owner", "request", "subscribe",
                                    "unsubscribe"}


# --- candidates(): which readings delivery may try ---------------------

class FakeLists:
    """An on-disk view as a set of names (no I/O)."""

    def __init__(self, *names):
        self.names = set(names)

    def exists(self, target):
        return target.name in self.names


@pytest.mark.parametrize("recipient, lists, expected", [
    ("test", ("test",), T("test")),
    ("test-request", ("test",), T("test", "request")),
    ("Test-Request", ("test",), T("test", "request")),
    ("owner-test", ("test",), T("test", "owner")),
    ("my-list-request", ("my-list",), T("my-list", "request")),
    # a list really named like the whole address wins over the suffix reading
    ("news-bounces", ("news", "news-bounces"), T("news-bounces")),
    ("x-owner", ("x", "x-owner"), T("x-owner")),
    ("owner-x", ("x", "owner-x"), T("owner-x")),
    ("news-bounces+a=b", ("news",), T("news", "bounces", "a=b")),
    ("test-foo", ("test",), None),
    ("nope", ("test",), None),
    ("nope-request", ("test",), None),
    ("../test", ("test",), None),
])
def test_candidates(recipient, lists, expected):
    found = registry.candidates(readings(recipient, HOST), FakeLists(*lists))
    assert found == ([expected] if expected else [])


def test_candidates_without_an_on_disk_view_ask_the_whole_name_first():
    """The server is the last word: the whole name, then the suffix reading,
    then owner-LIST (issue 8, 2: news-admin and owner-foo are real lists)."""
    nolists = registry.NoLists()
    assert registry.candidates(readings("test", HOST), nolists) == [T("test")]
    assert registry.candidates(readings("news-admin", HOST), nolists) == [
        T("news-admin"), T("news", "admin")]
    assert registry.candidates(readings("owner-foo", HOST), nolists) == [
        T("owner-foo"), T("foo", "owner")]
    assert registry.candidates([], nolists) == []


def test_mailman2_lists_on_disk(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "config.pck").write_bytes(b"")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.db").write_bytes(b"")
    (tmp_path / "empty").mkdir()            # no config: not a list
    lists = registry.Mailman2Lists(str(tmp_path))
    assert lists.exists(T("test")) and lists.exists(T("old"))
    assert not lists.exists(T("empty")) and not lists.exists(T("nope"))
    assert lists.names() == ["old", "test"]


def test_mailman3_lists_on_disk(tmp_path):
    (tmp_path / "lists" / "test.lists.example.test").mkdir(parents=True)
    lists = registry.Mailman3Lists(str(tmp_path))
    assert lists.exists(T("test"))
    assert not lists.exists(T("test", domain="other.example"))
    assert not lists.exists(T("nope"))


def test_a_list_id_longer_than_a_file_name_is_no_list(tmp_path):
    # 64 + 1 + 253 characters: valid name and domain, but no such directory
    (tmp_path / "lists").mkdir()
    domain = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert is_domain(domain) and is_list_name("x" * 64)
    lists = registry.Mailman3Lists(str(tmp_path))
    assert lists.exists(T("x" * 64, domain=domain)) is False
    assert registry.candidates(readings("x" * 64 + "-request@" + domain, HOST), lists) == []


def test_a_missing_lists_directory_is_a_local_fault(tmp_path):
    lists = registry.Mailman2Lists(str(tmp_path / "nowhere"))
    with pytest.raises(registry.RegistryError, match="does not exist"):
        lists.exists(T("test"))
