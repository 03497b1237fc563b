"""Exit statuses: the one table every other module asks.

Modelled on Postfix's sys_exits.c: each sysexits code has an enhanced status
code, a short text and a class (temporary or permanent).  Sendmail keeps a
message queued for the temporary class and bounces it for the permanent one,
so "is this temporary?" must have exactly one answer, given here.
"""

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_NOHOST = 68
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_OSFILE = 72
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78

# code: (enhanced status, text).  Whether a code is temporary follows from
# its enhanced status (4.x.x), as in Postfix's sys_exits.c: one answer.
EXIT_STATUS = {
    EX_OK: ("2.0.0", "delivered"),
    EX_USAGE: ("5.3.0", "command line usage error"),
    EX_DATAERR: ("5.6.0", "data format error"),
    EX_NOINPUT: ("5.3.0", "cannot open input"),
    EX_NOUSER: ("5.1.1", "user unknown"),
    EX_NOHOST: ("5.1.2", "host name unknown"),
    EX_UNAVAILABLE: ("5.3.0", "service unavailable"),
    EX_SOFTWARE: ("5.3.0", "internal software error"),
    EX_OSERR: ("4.3.0", "system resource problem"),
    EX_OSFILE: ("5.3.0", "critical OS file missing"),
    EX_CANTCREAT: ("5.2.0", "can't create output file"),
    EX_IOERR: ("4.3.0", "input/output error"),   # Sendmail retries it
    EX_TEMPFAIL: ("4.3.0", "temporary failure"),
    EX_PROTOCOL: ("5.5.0", "remote error in protocol"),
    EX_NOPERM: ("5.7.0", "permission denied"),
    EX_CONFIG: ("5.3.5", "local configuration error"),
}

# Why a recipient is refused (enhanced status codes of RFC 3463), and the
# class of faults that keep the mail: a site's own setup, or anything else.
STATUS_UNKNOWN_LIST = "5.1.1"       # bad destination mailbox address
STATUS_UNAPPROVED = "5.7.1"         # delivery not authorized
STATUS_SITE_FAULT = "4.3.5"         # system incorrectly configured
STATUS_TEMPORARY = "4.3.0"          # other or undefined mail system status

# LMTP stages: where in the conversation a reply came.
STAGE_GREETING = "greeting"
STAGE_LHLO = "lhlo"
STAGE_MAIL = "mail"
STAGE_RCPT = "rcpt"
STAGE_DATA = "data"     # the reply to DATA (354 expected)
STAGE_DOT = "dot"       # a reply after the final dot

# LMTP reply -> exit code.  Keys are (stage, reply code) first, then
# (None, reply code), then (None, first digit).  Stages: "greeting", "lhlo",
# "mail", "rcpt", "data" (the 354 wait) and "dot" (after the final dot).
LMTP_REPLY_EXIT = {
    (STAGE_DOT, 501): EX_DATAERR,       # Mailman 3: "501 Message has defects"
    (None, 550): EX_NOUSER,         # the contract: 550/551/553 at
    (None, 551): EX_NOUSER,         # any stage; after the dot Mailman 3
    (None, 553): EX_NOUSER,         # says 550 when the list just vanished
    (None, "2"): EX_OK,
    (None, "4"): EX_TEMPFAIL,
    (None, "5"): EX_UNAVAILABLE,
}


def enhanced(code):
    """The enhanced status code (RFC 3463) that goes with an exit code."""
    return EXIT_STATUS.get(code, EXIT_STATUS[EX_SOFTWARE])[0]


def is_temporary(code):
    """Sendmail keeps the message queued for this code (a 4.x.x status)."""
    return enhanced(code).startswith("4.")


def exit_for_reply(stage, reply_code):
    """Map an LMTP reply code seen at `stage` to an exit code.

    Anything that is not a 2xx, 4xx or 5xx reply is a garbled exchange: the
    message may or may not be with Mailman, so it stays queued (75).
    """
    for key in ((stage, reply_code), (None, reply_code),
                (None, str(reply_code)[:1])):
        if key in LMTP_REPLY_EXIT:
            return LMTP_REPLY_EXIT[key]
    return EX_TEMPFAIL


def combine(codes):
    """One exit status for several recipients (a mailer with flag m).

    Any temporary failure wins (the message stays queued, nothing is lost;
    a delivered recipient may get a duplicate), then the first permanent
    failure, then success.
    """
    codes = list(codes)
    for code in codes:
        if is_temporary(code):
            return EX_TEMPFAIL
    for code in codes:
        if code != EX_OK:
            return code
    return EX_OK


class Outcome:
    """What happened to one recipient: exit code, a human reason, the reply."""

    __slots__ = ("code", "reason", "reply", "stage", "rcpt")

    def __init__(self, code, reason, reply="", stage="", rcpt=""):
        self.code = code
        self.reason = reason
        self.reply = reply
        self.stage = stage      # the LMTP stage that answered, if any
        self.rcpt = rcpt        # the LMTP address that answered, if any

    def __repr__(self):
        return "Outcome(%d, %r, %r, %r)" % (self.code, self.reason, self.reply,
                                            self.stage)
