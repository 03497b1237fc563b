"""mm-handler(8), the manual page, made from the program's own tables.

The synopsis is ``--help``'s usage text, the exit statuses come from
status.EXIT_STATUS, the configuration keys and defaults from
config.SCHEMA: the page cannot drift from the program.  setup.py writes it
into the wheel (share/man/man8), where ``man`` finds it once the package is
installed system-wide.  Not on the delivery path.
"""

from .config import DEFAULT_PATH, ENV_VAR, SCHEMA
from .envelope import USAGE
from .status import (EX_CONFIG, EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL,
                     EX_UNAVAILABLE, EXIT_STATUS)

# What each exit status means for a delivery (the mailer's contract).
EXITS = [
    (EX_OK, "Mailman has the whole message (or the unknown_list / "
            "unapproved_action policy discard or bounce dealt with it)."),
    (EX_TEMPFAIL, "anything transient or local: the server down, a 4xx reply, a "
                  "timeout, a wrapper failure, a bad configuration or argument, "
                  "a signal, an internal error.  Sendmail keeps the message "
                  "queued and retries."),
    (EX_NOUSER, "no such list, or an action the list does not take (policy "
                "reject), or the LMTP server refused the recipient (550, 551, "
                "553).  Sendmail bounces the message."),
    (EX_DATAERR, "Mailman 3 says the message has defects (501 after the data)."),
    (EX_UNAVAILABLE, "any other permanent 5xx reply of the LMTP server."),
    (EX_CONFIG, "(--check only) the configuration needs fixing."),
]

# One line per configuration key; tests/test_manpage.py checks that every
# key of config.SCHEMA has one and that README.md names every key.
KEY_HELP = {
    ("mm-handler", "backend"): "mailman3 (LMTP) or mailman2 (the wrapper).",
    ("mm-handler", "approved_actions"): "the list addresses delivered; others "
                                        "get the unapproved_action policy.",
    ("mm-handler", "unknown_list"): "reject (exit 67, the template on the DSN), "
                                    "bounce (our own letter, exit 0) or discard.",
    ("mm-handler", "unapproved_action"): "the same choice for an action not in "
                                         "approved_actions.",
    ("mm-handler", "trace_header"): "add X-Mailman-Handler: mm-handler VERSION.",
    ("mm-handler", "delivered_to"): "add Delivered-To: with the whole envelope "
                                    "recipient, +detail kept (VERP bounces).",
    ("mm-handler", "spool_dir"): "where a message read more than once is kept "
                                 "(an unnamed file).",
    ("mm-handler", "spool_threshold"): "bytes kept in memory before spool_dir "
                                       "is used.",
    ("mm-handler", "syslog_socket"): "the syslog socket; empty: /dev/log, "
                                     "/var/run/log or /var/run/syslog.",
    ("mm-handler", "syslog_facility"): "mail, daemon, user or local0 to local7.",
    ("mailman2", "wrapper"): "Mailman 2's mail wrapper.",
    ("mailman2", "lists_dir"): "Mailman 2's lists directory.",
    ("mailman2", "timeout"): "seconds for one wrapper run, spawn to exit.",
    ("mailman3", "lmtp"): "host:port, [v6]:port or unix:/path, tried in order.",
    ("mailman3", "var_dir"): "Mailman 3's var directory: a fast on-disk list "
                             "check (the LMTP server has the last word).",
    ("mailman3", "timeout"): "seconds for each LMTP reply.",
    ("bounce", "template"): "the text for unknown lists ($recipient, $list, "
                            "$action, $domain, $sender, $reason, $postmaster, "
                            "$listinfo_url, $server, $personal_note).",
    ("bounce", "template_charset"): "its charset; empty: UTF-8, else guessed.",
    ("bounce", "sendmail"): "the program that takes the bounce letter.",
    ("bounce", "max_original"): "bytes of the original returned whole; past "
                                "that, its headers only.",
    ("bounce", "postmaster"): "the address the text names; empty: "
                              "postmaster@DOMAIN.",
    ("bounce", "listinfo_url"): "where the lists are listed; empty: "
                                "https://DOMAIN/.",
    ("bounce", "server"): "the host name the letter names; empty: this node.",
    ("bounce", "personal_note"): "a line for the text; empty drops it.",
    ("maps", "output_dir"): "where mm-handler maps writes the Sendmail maps.",
    ("maps", "makemap"): "Sendmail's makemap.",
    ("maps", "sendmail_cf"): "the sendmail.cf Sendmail reads; --check looks "
                             "there for the maps and the mailer.",
    ("maps", "run_makemap"): "build the .db files too (as --makemap).",
    ("maps", "map_type"): "hash, btree or cdb.",
    ("maps", "domains"): "the list domains (Mailman 3 without the plug-in).",
    ("maps", "pseudo_domain"): "the routing pseudo-domain of the virtusertable.",
    ("maps", "mailer"): "the Sendmail mailer's name.",
    ("maps", "roles"): "role addresses kept at the list domains.",
    ("maps", "role_target"): "where the role addresses go; empty: the local "
                             "alias of the same name.",
    ("maps", "reject"): "the catch-all for other addresses of a list domain; "
                        "empty: none (a domain shared with people).",
    ("maps", "site_virtusertable"): "a site's own virtusertable lines, merged "
                                    "in first.",
    ("maps", "site_mailertable"): "a site's own mailertable lines, merged in "
                                  "first.",
    ("socketmap", "listen"): "where mm-handler socketmap listens: unix:/path, "
                             "inet:PORT@ADDR or inet6:PORT@ADDR.",
    ("socketmap", "socket_owner"): "the unix socket's owner; empty: as made.",
    ("socketmap", "socket_group"): "the unix socket's group; empty: as made.",
    ("socketmap", "socket_mode"): "the unix socket's mode, in octal.",
    ("socketmap", "map_names"): "the Sendmail map names answered.",
    ("socketmap", "max_connections"): "connections kept at most; more are "
                                      "closed at once.",
    ("socketmap", "max_request"): "the longest request, in bytes.",
    ("socketmap", "request_timeout"): "seconds a request may take to arrive.",
    ("socketmap", "idle_timeout"): "seconds an idle connection is kept; 0: "
                                   "for ever.",
    ("socketmap", "lookup_timeout"): "seconds for the LMTP server's answer.",
    ("socketmap", "lmtp_cache"): "seconds an LMTP server's answer is kept.",
}


def _roff(text):
    """Plain text made safe for roff: backslashes, leading dots and quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def render(version):
    """The page as roff text."""
    out = [".TH MM\\-HANDLER 8 \"\" \"mm-handler %s\" \"System Manager's Manual\""
           % version,
           ".SH NAME",
           "mm\\-handler \\- Sendmail mailer that hands list mail to GNU Mailman",
           ".SH SYNOPSIS", ".nf"]
    usage, _, rest = USAGE.partition("\n\n")
    for line in usage.splitlines():
        out.append(_roff(line.replace("usage: ", "").strip()))
    out += [".fi", ".SH DESCRIPTION"]
    for paragraph in rest.strip().split("\n\n"):
        out.append(".PP")
        text = []
        for line in paragraph.splitlines() + [""]:
            if line.startswith("  "):       # the mailer definition: as it is
                if text:
                    out += [_roff(" ".join(text)), ".RS", ".nf"]
                    text = []
                out.append(_roff(line.strip()))
            elif line:
                if out[-1] != ".PP" and not text:
                    out += [".fi", ".RE"]
                text += line.split()
        if text:
            out.append(_roff(" ".join(text)))
    out += [
        ".PP",
        _roff("It reads the recipient as LIST, LIST-ACTION or owner-LIST with "
              "any +detail, checks that the list exists, and delivers through "
              "Mailman 2's wrapper or Mailman 3's LMTP server; see README.md "
              "and README.sendmail for the whole story."),
        ".SH OPTIONS",
        ".TP", "\\fB\\-C\\fR \\fIFILE\\fR", _roff("the configuration file."),
        ".TP", "\\fB\\-r\\fR \\fISENDER\\fR",
        _roff("the envelope sender (Sendmail's flag r puts it first)."),
        ".TP", "\\fB\\-\\-dry\\-run\\fR",
        _roff("resolve and check without delivering."),
        ".TP", "\\fB\\-\\-check\\fR",
        _roff("say what the configuration amounts to; exit 0 or 78."),
        ".TP", "\\fB\\-\\-render\\-template\\fR \\fIRECIPIENT\\fR",
        _roff("print what a sender to an unknown list reads."),
        ".TP", "\\fBmaps\\fR",
        _roff("write the Sendmail maps that refuse unknown list addresses at "
              "RCPT time."),
        ".TP", "\\fBsocketmap\\fR",
        _roff("serve the same answers live to Sendmail's socket map, in the "
              "foreground (README.sendmail section 11)."),
        ".SH EXIT STATUS",
    ]
    for code, meaning in EXITS:
        status, text = EXIT_STATUS[code]
        out += [".TP", "\\fB%d\\fR (%s, %s)" % (code, status, _roff(text)),
                _roff(meaning)]
    out += [".SH CONFIGURATION",
            _roff("An INI file: -C FILE, else $%s, else %s.  An empty file "
                  "means every default." % (ENV_VAR, DEFAULT_PATH))]
    for section, keys in SCHEMA.items():
        out += [".SS [%s]" % _roff(section)]
        for key, (default, _) in keys.items():
            out += [".TP", "\\fB%s\\fR = %s" % (_roff(key), _roff(
                default if default else "(empty)")),
                _roff(KEY_HELP[section, key])]
    out += [
        ".SH FILES",
        ".TP", _roff(DEFAULT_PATH), _roff("the configuration file."),
        ".TP", _roff(SCHEMA["maps"]["output_dir"][0]),
        _roff("the maps written by mm-handler maps."),
        ".SH EXAMPLES", ".nf",
        _roff("mm-handler --check -C /etc/mm-handler.cfg"),
        _roff("mm-handler --dry-run -r alice@example.org lists.example.org "
              "mylist-request"),
        _roff("mm-handler maps --makemap"),
        ".fi",
        ".SH SEE ALSO",
        "\\fBsendmail\\fR(8), \\fBmakemap\\fR(8), \\fBmail.local\\fR(8), "
        "\\fBsmrsh\\fR(8)",
    ]
    return "\n".join(out) + "\n"
