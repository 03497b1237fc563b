"""The INI configuration file: read, validated, every key with a default.

The syntax is the subset of configparser's that mailman.cfg uses: sections,
``key = value`` or ``key: value``, ``#``/``;`` comments (also after a value,
preceded by white space) and indented continuation lines.  It is read
without configparser because that module costs every message ~10 ms of
start-up (it imports ``re``); see bench/startup.py.
"""

import os

from .address import ACTIONS, is_domain

DEFAULT_PATH = "/etc/mm-handler.cfg"
ENV_VAR = "MM_HANDLER_CONFIG"
MAX_SIZE = 1 << 20          # a configuration file is refused beyond this


class ConfigError(Exception):
    """The file, a key or a value is wrong: one line naming which."""


def _words(text):
    return text.replace(",", " ").split()


def _choice(*allowed):
    def parse(text):
        if text not in allowed:
            raise ValueError("must be one of: " + ", ".join(allowed))
        return text
    return parse


def _boolean(text):
    value = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}.get(text.lower())
    if value is None:
        raise ValueError("must be yes or no")
    return value


def _seconds(text):
    value = float(text)
    if not 0 < value <= 86400:
        raise ValueError("must be a number of seconds between 0 and 86400")
    return value


def _size(text):
    value = int(text)
    if value < 0:
        raise ValueError("must be a number of bytes, 0 or more")
    return value


def _actions(text):
    actions = _words(text.lower())
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise ValueError("unknown action %r (known: %s)"
                         % (unknown[0], " ".join(ACTIONS)))
    return frozenset(actions)


def _absolute_path(text):
    if text and not text.startswith("/"):
        raise ValueError("must be an absolute path")
    return text


def _program(text):
    if not text.startswith("/"):
        raise ValueError("must be the absolute path of a program")
    return text


def _endpoint(item):
    """``host:port``, ``[v6]:port`` or ``unix:/path`` -> (family, address)."""
    if item.startswith("unix:"):
        path = item[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError("%r: a unix socket needs an absolute path" % item)
        return ("unix", path)
    host, colon, port = item.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("%r is not host:port or unix:/path" % item)
    return ("inet", (host, int(port)))


def _endpoints(text):
    endpoints = [_endpoint(item) for item in _words(text)]
    if not endpoints:
        raise ValueError("needs at least one host:port or unix:/path")
    return endpoints


def _domain(text):
    domain = text.strip(".").lower()
    if not is_domain(domain):
        raise ValueError("%r is not a domain name" % text)
    return domain


def _domains(text):
    """Domain names, lower-cased, each once, in the order given."""
    out = []
    for word in _words(text):
        domain = _domain(word)
        if domain not in out:
            out.append(domain)
    return out


_MAILER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                          "0123456789_-")
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


def _mailer(text):
    if not text or not all(c in _MAILER_CHARS for c in text):
        raise ValueError("%r is not a Sendmail mailer name (letters, digits, _ "
                         "and -)" % text)
    return text


def _local_parts(text):
    """Role names: plain local parts, lower-cased."""
    out = []
    for word in _words(text.lower()):
        if not (word[0] not in ".-" and ".." not in word and len(word) <= 64
                and all(c in _LOCAL_CHARS for c in word)):
            raise ValueError("%r is not a local part (letters, digits, ., _ and -)"
                             % word)
        if word not in out:
            out.append(word)
    return out


def _printable_word(text):
    return all("!" <= c <= "~" for c in text)


def _role_target(text):
    """Empty (each role to the local alias of its own name) or one address."""
    if text and not (_printable_word(text) and len(text) <= 254
                     and text[0] != "#" and not text.lower().startswith("error:")):
        raise ValueError("must be empty or one address or alias (printable ASCII, "
                         "no spaces, no error: value)")
    return text


def _reject(text):
    """Empty (no catch-all) or ``error:D.D.D:NNN text``, as Sendmail takes it."""
    if not text:
        return text
    head, _, message = text.partition(" ")
    parts = head.split(":")
    status = parts[1].split(".") if len(parts) == 3 else []
    good = (parts[0] == "error" and len(status) == 3
            and all(p.isdigit() and p.isascii() and len(p) <= 3 for p in status)
            and status[0] in ("4", "5")
            and len(parts[2]) == 3 and parts[2].isdigit() and parts[2].isascii()
            and parts[2][0] == status[0]
            and message.strip() != ""
            and all(" " <= c < "\x7f" for c in message))
    if not good:
        raise ValueError("must be empty or error:D.D.D:NNN text, e.g. "
                         "'error:5.1.1:550 No such list address here' (the "
                         "classes agree: 4.x.x with 4NN, 5.x.x with 5NN)")
    return head + " " + message.strip()


def _listen(text):
    """Where `mm-handler socketmap` listens, in Sendmail's socket syntax:
    ``unix:/path`` (or ``local:``), ``inet:PORT@ADDR``, ``inet6:PORT@ADDR``
    (ADDR may be in brackets) -> ("unix", path) or (family, (addr, port))."""
    family, colon, rest = text.partition(":")
    family = family.lower()
    if colon and family in ("unix", "local"):
        if not rest.startswith("/") or any(c <= " " for c in rest):
            raise ValueError("a unix socket needs an absolute path")
        return ("unix", rest)
    if colon and family in ("inet", "inet6"):
        port, at, host = rest.partition("@")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if (at and host and port.isdigit() and port.isascii()
                and 0 < int(port) < 65536
                and all("!" <= c <= "~" and c not in "@[]" for c in host)):
            return (family, (host, int(port)))
    raise ValueError("must be unix:/path, inet:PORT@ADDR or inet6:PORT@ADDR "
                     "(Sendmail's syntax)")


def _account(text):
    """Empty (leave it as created) or a user or group name or number."""
    if text and not (len(text) <= 32 and text[0] != "-" and all(
            c in _LOCAL_CHARS or c == "$" for c in text.lower())):
        raise ValueError("must be empty or a user or group name or number")
    return text


def _mode(text):
    """A file mode in octal, e.g. 0660."""
    if not (text and text.isascii() and all(c in "01234567" for c in text)
            and int(text, 8) <= 0o777):
        raise ValueError("must be an octal mode such as 0660")
    return int(text, 8)


def _count(text):
    value = int(text)
    if not 0 < value <= 1000000:
        raise ValueError("must be a whole number from 1 to 1000000")
    return value


def _request_size(text):
    value = int(text)
    if not 300 <= value <= 65536:
        raise ValueError("must be a number of bytes from 300 (a Sendmail key "
                         "is up to 256) to 65536")
    return value


def _seconds_or_never(text):
    """0 (never) or a number of seconds up to a day."""
    value = float(text)
    if not 0 <= value <= 86400:
        raise ValueError("must be 0 (never) or a number of seconds up to 86400")
    return value


def _map_names(text):
    names = _words(text)
    if not names or not all(n.isascii() and all(
            c.isalnum() or c in "_.-" for c in n) for n in names):
        raise ValueError("must be one or more Sendmail map names (letters, "
                         "digits, _ . -)")
    return frozenset(names)


UNKNOWN_POLICIES = ("reject", "discard", "bounce")

# section -> key -> (default text, parser)
SCHEMA = {
    "mm-handler": {
        "backend": ("mailman3", _choice("mailman3", "mailman2")),
        "approved_actions": (" ".join(ACTIONS), _actions),
        "unknown_list": ("reject", _choice(*UNKNOWN_POLICIES)),
        "unapproved_action": ("reject", _choice(*UNKNOWN_POLICIES)),
        "trace_header": ("yes", _boolean),
        "delivered_to": ("yes", _boolean),
        "spool_dir": ("/tmp", _absolute_path),
        "spool_threshold": ("1048576", _size),
        "syslog_socket": ("", _absolute_path),   # "": the system's own
        "syslog_facility": ("mail", _choice("mail", "daemon", "user", "local0",
                                            "local1", "local2", "local3", "local4",
                                            "local5", "local6", "local7")),
    },
    "mailman2": {
        "wrapper": ("/usr/lib/mailman/mail/mailman", _program),
        "lists_dir": ("/var/lib/mailman/lists", _absolute_path),
        "timeout": ("300", _seconds),
    },
    "mailman3": {
        "lmtp": ("127.0.0.1:8024", _endpoints),
        "var_dir": ("", _absolute_path),
        "timeout": ("60", _seconds),
    },
    "bounce": {
        "template": ("", _absolute_path),
        "template_charset": ("", str),
        "sendmail": ("/usr/sbin/sendmail", _program),
        "max_original": ("131072", _size),
        "postmaster": ("", str),
        "listinfo_url": ("", str),
        "server": ("", str),
        "personal_note": ("This host serves mailing lists only: personal "
                          "addresses are not offered here.", str),
    },
    "maps": {
        "output_dir": ("/etc/mail/mm-handler", _absolute_path),
        "sendmail_cf": ("/etc/mail/sendmail.cf", _absolute_path),
        "makemap": ("/usr/sbin/makemap", _program),
        "run_makemap": ("no", _boolean),
        "map_type": ("hash", _choice("hash", "btree", "cdb")),
        "domains": ("", _domains),
        "pseudo_domain": ("mailman.invalid", _domain),
        "mailer": ("mailman", _mailer),
        "roles": ("postmaster abuse hostmaster webmaster mailer-daemon root",
                  _local_parts),
        "role_target": ("", _role_target),
        "reject": ("error:5.1.1:550 No such list address here", _reject),
        "site_virtusertable": ("", _absolute_path),
        "site_mailertable": ("", _absolute_path),
    },
    # `mm-handler socketmap`: the live list lookup (README.sendmail, 11)
    "socketmap": {
        "listen": ("unix:/run/mm-handler/socketmap", _listen),
        "socket_owner": ("", _account),
        "socket_group": ("", _account),
        "socket_mode": ("0666", _mode),
        "map_names": ("mm_handler virtuser", _map_names),
        "max_connections": ("4096", _count),
        "max_request": ("1024", _request_size),
        "request_timeout": ("10", _seconds),
        "idle_timeout": ("0", _seconds_or_never),
        "lookup_timeout": ("3", _seconds),
        "lmtp_cache": ("5", _seconds_or_never),
    },
}


# Read by the commands that use them (maps, socketmap, --check), not by a
# delivery: their values are parsed at first use, so that every message does
# not pay for them.  Their key names are checked at once, like every other.
OFF_PATH = ("maps", "socketmap")


class Settings:
    """Validated settings: ``settings.get("mailman3", "lmtp")``."""

    def __init__(self, path, values, raw):
        self.path = path
        self._values = values
        self._raw = raw

    def get(self, section, key):
        return self[section][key]

    def __getitem__(self, section):
        if section not in self._values:
            self._values[section] = _parse_section(self._raw, section, self.path)
        return self._values[section]

    def written(self, section):
        """True when the file has this section (not only its defaults)."""
        return section in self._raw

    def check_all(self):
        """Parse every section now (ConfigError for the first bad value)."""
        for section in SCHEMA:
            self[section]
        return self


def config_path(option_path, environ=os.environ):
    """-C wins, then $MM_HANDLER_CONFIG, then /etc/mm-handler.cfg."""
    return option_path or environ.get(ENV_VAR) or DEFAULT_PATH


def parse_ini(text, path="<config>"):
    """INI text -> {section: {key: raw value}}; ConfigError names the line."""
    sections = {}
    section = key = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if line[0] in " \t" and key is not None:
            sections[section][key] += "\n" + _strip_comment(stripped)
            continue
        where = "%s line %d" % (path, number)
        if stripped.startswith("["):
            if not stripped.endswith("]"):
                raise ConfigError("%s: section header without ']'" % where)
            section, key = stripped[1:-1].strip().lower(), None
            if section in sections:
                raise ConfigError("%s: section [%s] appears twice" % (where, section))
            sections[section] = {}
            continue
        cut = min((i for i in (stripped.find("="), stripped.find(":")) if i > 0),
                  default=-1)
        if cut < 0:
            raise ConfigError("%s: expected 'key = value', got %r"
                              % (where, stripped[:60]))
        if section is None:
            raise ConfigError("%s: key before any [section]" % where)
        key = stripped[:cut].strip().lower()
        if key in sections[section]:
            raise ConfigError("%s: key %r appears twice in [%s]"
                              % (where, key, section))
        sections[section][key] = _strip_comment(stripped[cut + 1:].strip())
    return sections


def _strip_comment(value):
    for i, c in enumerate(value):
        if c in "#;" and (i == 0 or value[i - 1] in " \t"):
            return value[:i].rstrip()
    return value


def validate(raw, path="<config>"):
    """Raw sections -> Settings; unknown sections, keys and values are errors."""
    values = {}
    for section, keys in raw.items():
        if section not in SCHEMA:
            raise ConfigError("%s: unknown section [%s] (known: %s)"
                              % (path, section, ", ".join(SCHEMA)))
        for key in keys:
            if key not in SCHEMA[section]:
                raise ConfigError("%s: [%s] has no key %r (known: %s)"
                                  % (path, section, key,
                                     ", ".join(SCHEMA[section])))
    for section in SCHEMA:
        if section not in OFF_PATH:
            values[section] = _parse_section(raw, section, path)
    return Settings(path, values, raw)


def _parse_section(raw, section, path):
    values = {}
    for key, (default, parse) in SCHEMA[section].items():
        text = raw.get(section, {}).get(key, default)
        try:
            values[key] = parse(text)
        except ValueError as exc:
            raise ConfigError("%s: [%s] %s = %r: %s"
                              % (path, section, key, text, exc)) from None
    return values


def load(path):
    """Read and validate the file at `path`; every problem is a ConfigError."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIZE + 1)     # one byte more: too big, not cut
    except FileNotFoundError:
        raise ConfigError("%s: configuration file not found" % path) from None
    except PermissionError:
        raise ConfigError("%s: configuration file not readable by uid %d"
                          % (path, os.geteuid())) from None
    except OSError as exc:
        raise ConfigError("%s: cannot read configuration file: %s"
                          % (path, exc.strerror)) from None
    if len(data) > MAX_SIZE:
        raise ConfigError("%s: configuration file larger than 1 MiB (%d bytes): "
                          "refused" % (path, MAX_SIZE))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("%s: not UTF-8 text" % path) from None
    return validate(parse_ini(text, path), path)
