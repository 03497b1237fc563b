"""What the sender learns about an unknown list or an unapproved action.

One template (string.Template placeholders, like Mailman's own) feeds both
the ``reject`` text that Sendmail's DSN carries and the ``bounce`` letter
we send ourselves: a multipart/report (RFC 3462/3464) with the template
text, a delivery-status part and the original (or only its headers).
The letter goes out with a null envelope sender so that it can never loop,
and never at all to a null sender or for an automatic message.

Not on the delivery path: imported only when a recipient is refused.
"""

import os

from .log import LOG_ERR, LOG_NOTICE, display
from .status import EX_OK, EX_TEMPFAIL, STATUS_UNKNOWN_LIST, Outcome

DEFAULT_TEMPLATE = os.path.join(os.path.dirname(__file__), "templates",
                                "unknown-list.txt")
MAX_HEADER_BLOCK = 256 * 1024
FALLBACK_TEMPLATE = ("Your message to <$recipient> could not be delivered: "
                     "$reason.\nPlease write to <$postmaster> for help.\n")
HANDOFF_TIMEOUT = 120


class Refusal:
    """Why one recipient is refused, with everything the template can say."""

    def __init__(self, recipient, name, action, domain, status, reason,
                 sender, reply=""):
        self.recipient = recipient   # display-safe local@domain
        self.name = name
        self.action = action
        self.domain = domain
        self.status = status         # 5.1.1 unknown list, 5.7.1 unapproved
        self.reason = reason
        self.sender = sender         # clean envelope sender, '' = null
        self.reply = reply


def server_name(settings):
    return settings.get("bounce", "server") or os.uname().nodename or "localhost"


def template_values(settings, refusal):
    domain = refusal.domain
    return {
        "recipient": refusal.recipient,
        "list": refusal.name,
        "action": refusal.action,
        "domain": domain,
        "sender": refusal.sender or "<>",
        "reason": refusal.reason,
        "postmaster": settings.get("bounce", "postmaster") or "postmaster@" + domain,
        "listinfo_url": settings.get("bounce", "listinfo_url")
        or "https://%s/" % domain,
        "server": server_name(settings),
        "personal_note": settings.get("bounce", "personal_note"),
    }


def decode_template(data, charset=""):
    """Template bytes -> text: the configured charset, else UTF-8, else chardet.

    Raises ValueError when no charset yields text.
    """
    if charset:
        return data.decode(charset)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    import chardet
    guess = chardet.detect(data).get("encoding")
    if not guess:
        raise ValueError("charset not recognised")
    return data.decode(guess)


def load_template(settings, log=None):
    """The site template, or the default one when it is missing or broken."""
    path = settings.get("bounce", "template")
    if path:
        try:
            with open(path, "rb") as f:
                return decode_template(f.read(1 << 20),
                                       settings.get("bounce", "template_charset"))
        except (OSError, ValueError, LookupError) as exc:
            if log is not None:
                log.send(LOG_ERR, "bounce template %s unusable (%s); using the "
                         "default" % (path, exc))
    try:
        with open(DEFAULT_TEMPLATE, "rb") as f:
            return f.read().decode("utf-8")
    except (OSError, ValueError) as exc:    # a damaged install: say it plainly
        if log is not None:
            log.send(LOG_ERR, "default bounce template %s unusable (%s)"
                     % (DEFAULT_TEMPLATE, exc))
        return FALLBACK_TEMPLATE


def render(settings, refusal, log=None):
    """The template filled in; unknown placeholders stay as written."""
    from string import Template
    text = load_template(settings, log)
    try:
        return Template(text).safe_substitute(template_values(settings, refusal))
    except ValueError as exc:  # pragma: no cover - safe_substitute tolerates all
        if log is not None:
            log.send(LOG_ERR, "bounce template does not render (%s)" % exc)
        return text


def render_for_recipient(settings, recipient):
    """``mm-handler --render-template RECIPIENT``: the text a sender would get."""
    from .address import readings, split_recipient
    local, domain = split_recipient(recipient, "localhost")
    found = readings(recipient, domain)
    target = found[1 if len(found) > 1 else 0] if found else None
    name = target.name if target else display(local)
    refusal = Refusal(display(local) + "@" + display(domain), name,
                      target.action if target else "post", display(domain),
                      STATUS_UNKNOWN_LIST, 'no list named "%s" here' % name, "")
    text = render(settings, refusal)
    return text if text.endswith("\n") else text + "\n"


# ---------------------------------------------------------------- loops

AUTOMATIC_PRECEDENCE = ("bulk", "junk", "list")
# RFC 2369 / 2919 headers: their presence makes a message list mail
LIST_HEADERS = ("list-id", "list-unsubscribe", "list-subscribe", "list-post",
                "list-help", "list-owner", "list-archive",
                "mailing-list")     # ezmlm's, before RFC 2369


def automatic_reason(header_bytes):
    """Why a message must get no letter (it is automatic or list mail), or ''.

    Every occurrence of a header counts, names are compared without case or
    the white space some senders put before the colon, and a value's
    comment or parameters do not hide its first word.
    """
    for name, value in header_fields(header_bytes):
        word = value.replace("(", " ").replace(";", " ").split()
        word = word[0] if word else ""
        if name == "auto-submitted" and word and word != "no":
            return "Auto-Submitted: " + display(word, 40)
        if name == "precedence" and word in AUTOMATIC_PRECEDENCE:
            return "Precedence: " + word
        if name in LIST_HEADERS:
            return "list mail (%s:)" % display(name, 40)
        if name == "content-type" and word in ("multipart/report",
                                               "message/delivery-status"):
            return "a delivery report (%s)" % word
    return ""


def header_fields(header_bytes):
    """(name, value) pairs, both lower-case and stripped, continuation
    lines unfolded; a line with no colon is skipped, not taken for the
    body (obsolete "Name :" forms are names too)."""
    fields = []
    for line in header_bytes.decode("latin-1").replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if not line:
                break           # the blank line that ends the headers
            continue
        if line[0] in " \t" and fields:
            fields[-1][1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if colon:
            fields.append([name.strip().lower(), value.strip().lower()])
    return [tuple(f) for f in fields]


def no_letter_reason(sender, header_bytes):
    if not sender:
        return "null or unusable envelope sender"
    if sender.partition("@")[0].lower() == "mailer-daemon":
        return "sender is MAILER-DAEMON"
    return automatic_reason(header_bytes)


# ---------------------------------------------------------------- letter

def _header_block(data):
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = data.find(sep)
        if end >= 0:
            return data[:end + len(sep)]
    return data


def letter_text(settings, refusals, log=None):
    """The template for the first refusal; with several, every refused
    address and its reason after it (one letter per message)."""
    text = render(settings, refusals[0], log)
    if len(refusals) > 1:
        text = text.rstrip("\n") + "\n\nEvery address of this message that was " \
            "refused:\n" + "".join("  <%s>: %s\n" % (r.recipient, r.reason)
                                  for r in refusals)
    return text


def build_report(settings, refusals, text, original_head, original_chunks,
                 original_size, eight_bit=False):
    """The RFC 3464 letter as bytes (LF line ends, as sendmail -oi expects).

    One letter for every refused recipient of a message: a per-recipient
    block each.  `original_head` is the start of the original (its header
    block at least); `original_chunks` yields the whole original when it is
    small enough to be attached in full; `eight_bit` says it has non-ASCII
    bytes.
    """
    from email.charset import QP, Charset
    from email.utils import formatdate, make_msgid
    server = server_name(settings)
    boundary = "=_mm-handler_%d_%s" % (os.getpid(), os.urandom(8).hex())
    now = formatdate(localtime=True)
    charset = "us-ascii" if text.isascii() else "utf-8"
    cs = Charset(charset)
    body = text
    cte = "7bit"
    if charset == "utf-8":
        cs.body_encoding = QP
        body = cs.body_encode(text)
        cte = "quoted-printable"
    whole = original_size <= settings.get("bounce", "max_original")
    first = refusals[0]
    subject = first.reason if len(refusals) == 1 else "%d addresses refused" % len(
        refusals)
    out = [
        "From: Mail Delivery System <MAILER-DAEMON@%s>" % server,
        "To: <%s>" % first.sender,
        "Subject: Undeliverable: %s" % subject,
        "Date: " + now,
        "Message-ID: " + make_msgid("mm-handler", domain=server),
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=delivery-status;\n'
        '\tboundary="%s"' % boundary,
        "",
        "This is a MIME-encapsulated delivery status report.",
        "",
        "--" + boundary,
        'Content-Type: text/plain; charset="%s"' % charset,
        "Content-Transfer-Encoding: " + cte,
        "Content-Description: Notification",
        "",
        body.rstrip("\n"),
        "",
        "--" + boundary,
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        "Reporting-MTA: dns; " + server,
        "Arrival-Date: " + now,
    ]
    for refusal in refusals:
        diagnostic = refusal.reply or "550 %s %s" % (refusal.status, refusal.reason)
        out += [
            "",
            "Final-Recipient: rfc822; " + refusal.recipient,
            "Action: failed",
            "Status: " + refusal.status,
            "Diagnostic-Code: smtp; " + display(diagnostic.replace("\n", " "), 400),
        ]
    out += ["", "--" + boundary]
    if whole:
        out += ["Content-Type: message/rfc822",
                "Content-Description: Undelivered message"]
    else:
        out += ["Content-Type: text/rfc822-headers",
                "Content-Description: Headers of the undelivered message "
                "(%d bytes, over the %d-byte limit)"
                % (original_size, settings.get("bounce", "max_original"))]
    returned = _header_block(original_head) if not whole else b""
    if eight_bit if whole else not returned.isascii():
        out.append("Content-Transfer-Encoding: 8bit")
    out.append("")
    # ASCII but for a UTF-8 (SMTPUTF8) sender in To: (RFC 6532)
    yield "\n".join(out).encode("utf-8") + b"\n"
    if whole:
        last = b"\n"
        for data in original_chunks:
            if data:
                last = data[-1:]
                yield data
        if last != b"\n":
            yield b"\n"
    else:
        yield returned
    yield ("\n--%s--\n" % boundary).encode("ascii")


def hand_off(settings, recipient, letter_chunks):
    """``SENDMAIL -oi -f <> -- RECIPIENT``: no shell, null envelope sender.

    Spawn, write, read and wait share one deadline (HANDOFF_TIMEOUT), so a
    program that never reads, or leaves a child behind, cannot hold us.
    Returns an Outcome: EX_OK once the program took the whole letter.
    """
    from .child import SpawnError, run
    program = settings.get("bounce", "sendmail")
    argv = [program, "-oi", "-f", "<>", "--", recipient]
    try:
        done = run(program, argv, {}, letter_chunks, HANDOFF_TIMEOUT)
    except SpawnError as exc:
        return Outcome(EX_TEMPFAIL, "cannot run %s to send the bounce: %s"
                       % (program, exc.strerror or exc))
    except OSError as exc:      # the pipes to it; run() killed it first
        return Outcome(EX_TEMPFAIL, "I/O error with %s sending the bounce: %s"
                       % (program, exc.strerror or exc))
    said = done.output.decode("utf-8", "replace").strip()
    said = ": " + display(said) if said else ""
    if done.status is None:
        return Outcome(EX_TEMPFAIL, "%s did not take the bounce within %d s and "
                       "was killed" % (program, HANDOFF_TIMEOUT))
    if os.WIFSIGNALED(done.status):
        return Outcome(EX_TEMPFAIL, "%s was killed by signal %d taking the bounce"
                       % (program, os.WTERMSIG(done.status)))
    code = os.WEXITSTATUS(done.status)
    if code != 0:
        return Outcome(EX_TEMPFAIL, "%s exited %d taking the bounce%s"
                       % (program, code, said))
    if not done.wrote_all or done.unread:
        return Outcome(EX_TEMPFAIL, "%s exited 0 without reading the whole "
                       "bounce" % program)
    return Outcome(EX_OK, "bounce handed to %s" % program)


def send_letter(settings, log, refusals, message):
    """The ``bounce`` policy: ONE letter for every refused recipient of the
    message.  The message must be spooled (it is read several times).
    Returns the Outcome that applies to each of `refusals`.
    """
    names = ", ".join(r.recipient for r in refusals)
    reasons = "; ".join(sorted(set(r.reason for r in refusals)))
    sender = refusals[0].sender
    head = b""
    for data in message.chunks():
        head += data
        if len(head) >= MAX_HEADER_BLOCK or b"\n\n" in head or b"\r\n\r\n" in head:
            break
    block = _header_block(head)
    if block is head and len(head) >= MAX_HEADER_BLOCK:
        # the headers run on past what we read: a List-Id or Auto-Submitted
        # may be further down, so no letter (no backscatter on a guess)
        why_not = "a header block over %d bytes" % MAX_HEADER_BLOCK
    else:
        why_not = no_letter_reason(sender, block)
    if why_not:
        log.send(LOG_NOTICE, "no bounce for %s: %s" % (names, why_not))
        return Outcome(EX_OK, "refused (%s), no bounce: %s" % (reasons, why_not))
    text = letter_text(settings, refusals, log)
    size = message.size - len(message.from_line)
    eight_bit = not all(data.isascii() for data in message.chunks())
    sent = hand_off(settings, sender, build_report(
        settings, refusals, text, head, message.chunks(), size, eight_bit))
    if sent.code != EX_OK:
        return sent
    if len(refusals) == 1:
        return Outcome(EX_OK, "refused (%s), bounce sent to <%s>" % (reasons, sender))
    return Outcome(EX_OK, "refused (%s), one bounce for %d addresses sent to <%s>"
                   % (reasons, len(refusals), sender))
