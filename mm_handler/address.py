"""Recipient address -> (list, action, detail): pure functions, no I/O.

Recipient text comes from the Internet.  Nothing leaves this module unless
it matched a strict pattern, so a name can never become a path, an option,
a command or a protocol line.
"""

ACTIONS = ("post", "admin", "bounces", "confirm", "join", "leave", "owner",
           "request", "subscribe", "unsubscribe")
SUFFIX_ACTIONS = frozenset(ACTIONS) - {"post"}

MAX_NAME = 255         # a list name: one file name (NAME_MAX)
MAX_LOCAL = 512        # a whole local part, VERP detail included
MAX_DOMAIN = 253

# What the backends accept in a list name: Mailman 2 [-+_.=a-z0-9], Mailman 3
# at most [-_.+=!$*{}~0-9a-z] (its listname_chars narrows it).  "+" is left
# out: it always starts a +detail here, as in Sendmail's virtusertable (%3),
# so a list whose name has a "+" cannot be reached through this mailer.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-=!$*{}~")
_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
# RFC 5322 atext plus "." and "=": what a VERP or confirm detail needs.
_DETAIL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                          "0123456789!#$%&'*+-/=?^_`{|}~.")


class Target:
    """One reading of a recipient: list `name` in `domain`, `action`, `detail`."""

    __slots__ = ("name", "action", "detail", "domain")

    def __init__(self, name, action, detail, domain):
        self.name = name
        self.action = action
        self.detail = detail
        self.domain = domain

    def __eq__(self, other):
        return (isinstance(other, Target)
                and self._key() == other._key())

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return "Target(%r, %r, %r, %r)" % self._key()

    def _key(self):
        return (self.name, self.action, self.detail, self.domain)

    def local_part(self, action=None):
        """The list address for `action` (default: this one), detail kept."""
        action = action or self.action
        local = self.name if action == "post" else self.name + "-" + action
        return local + "+" + self.detail if self.detail else local


def is_list_name(name):
    """True for a safe, lower-case list name: no path, option or control."""
    return (0 < len(name) <= MAX_NAME
            and name[0] not in ".-"
            and ".." not in name
            and all(c in _NAME_CHARS for c in name))


def is_domain(domain):
    """True for a lower-case host name made of letters, digits, - and dots."""
    return (0 < len(domain) <= MAX_DOMAIN
            and all(c in _DOMAIN_CHARS for c in domain)
            and all(0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
                    for label in domain.split(".")))


def is_detail(detail):
    return len(detail) <= MAX_LOCAL and all(c in _DETAIL_CHARS for c in detail)


def split_recipient(recipient, default_domain):
    """Split RECIPIENT (a local part, or local@domain) into (local, domain).

    The domain is lower-cased; the local part keeps its case for the detail.
    """
    local, at, domain = recipient.rpartition("@")
    if not at:
        local, domain = recipient, default_domain
    domain = domain.lower()
    return local, domain[:-1] if domain.endswith(".") else domain


def readings(recipient, default_domain):
    """Every reading of a recipient as a Target, the preferred one first.

    A list really named like the whole local part (``news-bounces``,
    ``owner-x``) wins over a suffix reading, as in Mailman 3; then the
    ``LIST-ACTION`` reading, then ``owner-LIST``.  Readings whose list name,
    domain or detail fail the strict patterns are dropped: an empty result
    means "no such list".
    """
    if not (recipient.isascii() and default_domain.isascii()):
        return []       # "\u212aeys".lower() is "keys": no case folding into ASCII
    local, domain = split_recipient(recipient, default_domain)
    if not is_domain(domain) or not 0 < len(local) <= MAX_LOCAL:
        return []
    base, plus, detail = local.partition("+")
    if not is_detail(detail):
        return []
    base = base.lower()
    found = [(base, "post")]
    name, dash, suffix = base.rpartition("-")
    if dash and suffix in SUFFIX_ACTIONS:
        found.append((name, suffix))
    if base.startswith("owner-"):
        found.append((base[len("owner-"):], "owner"))
    return [Target(name, action, detail, domain)
            for name, action in found if is_list_name(name)]

