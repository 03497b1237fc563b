"""The mm-handler command: envelope -> address -> registry -> delivery -> status -> log.

Every path ends in a deliberate sysexits code with one short line on
stderr (Sendmail puts it in the sender's DSN) and a syslog line for the
admin.  Nothing escapes main(): an uncaught exception would exit 1, which
Sendmail bounces with the traceback inside.
"""

import _signal
import os
import sys
import time

from . import __version__, address, envelope, registry
from .config import ConfigError, config_path, load
from .log import LOG_ERR, LOG_INFO, LOG_NOTICE, Syslog, delivery_line, display
from .status import (EX_CONFIG, EX_NOUSER, EX_OK, EX_TEMPFAIL, STAGE_RCPT,
                     STATUS_SITE_FAULT, STATUS_TEMPORARY, STATUS_UNAPPROVED,
                     STATUS_UNKNOWN_LIST, Outcome, combine, enhanced,
                     is_temporary)

TRACE_HEADER = b"X-Mailman-Handler: mm-handler " + __version__.encode()
# Mailman 3 has no -admin address; it is the old name of -bounces.
MAILMAN3_ACTION = {"admin": "bounces"}


def main(argv=None):
    """Console entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    _standard_fds()
    log = Syslog()
    try:
        return _run(argv, log)
    except BaseException as exc:    # noqa: BLE001 - the last line of defence
        return _crash(exc, log)


def _standard_fds():
    """Open /dev/null on a closed fd 0, 1 or 2, so that no socket or pipe
    of ours is ever taken for stdin, stdout or stderr."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:      # a lower fd was closed too: keep it as is
                os.dup2(null, fd)
                os.close(null)


def _run(argv, log):
    if argv[:1] == ["maps"]:
        from .maps import main as maps_main
        return maps_main(argv[1:])
    if argv[:1] == ["socketmap"]:
        from .socketmap import main as socketmap_main
        return socketmap_main(argv[1:])
    try:
        inv = envelope.parse_argv(argv)
    except envelope.UsageError as exc:
        return _site_fault(log, "bad arguments: %s; %s" % (
            exc, "usage: mm-handler [-C FILE] [--dry-run] [-r SENDER] HOST RECIPIENT..."))
    if inv.mode == "help":
        sys.stdout.write(envelope.USAGE)
        return EX_OK
    if inv.mode == "version":
        sys.stdout.write("mm-handler %s\n" % __version__)
        return EX_OK
    path = config_path(inv.config)
    try:
        settings = load(path)
        if inv.mode == "check":
            settings.check_all()    # every section, [maps] and [socketmap] too
    except ConfigError as exc:
        if inv.mode == "check":
            sys.stdout.write("FAIL %s\n" % exc)
            return EX_CONFIG
        return _site_fault(log, str(exc))
    log = Syslog(settings.get("mm-handler", "syslog_socket"),
                 settings.get("mm-handler", "syslog_facility"))
    if inv.mode == "check":
        from .check import run_check
        return run_check(settings)
    if inv.mode == "render-template":
        from .bounce import render_for_recipient
        sys.stdout.write(render_for_recipient(settings, inv.recipients[0]))
        return EX_OK
    return Delivery(settings, inv, log).run()


def _site_fault(log, text):
    """A fault of this site (arguments, configuration): keep the mail."""
    _say("%s mm-handler: %s; the message is kept for retry"
         % (STATUS_SITE_FAULT, text))
    log.send(LOG_ERR, "site fault, exit %d: %s" % (EX_TEMPFAIL, text))
    _drain_stdin()
    return EX_TEMPFAIL


def _crash(exc, log):
    try:
        import traceback
        for line in traceback.format_exc().splitlines():
            log.send(LOG_ERR, "internal error: " + line)
        _say("%s mm-handler: internal error (%s); the message is kept for "
             "retry" % (STATUS_TEMPORARY, type(exc).__name__))
        _drain_stdin()
    except BaseException:   # noqa: BLE001 - nothing may escape
        pass
    return EX_TEMPFAIL


def _say(line):
    """One line to stderr; Sendmail may have gone away, which is no error."""
    try:
        sys.stdout.flush()
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):   # closed, or no fd 2 at all
        pass


def _write_stdout(text):
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _drain_stdin():
    """Read what Sendmail still writes, so that it never sees a broken pipe.

    A mailer that exits before reading its input makes Sendmail report an
    I/O error instead of the exit status it chose.
    """
    try:
        if not os.isatty(0):
            envelope.drain(0)
    except OSError:
        pass
    except Interrupted:     # a signal while we wait: we are done anyway
        pass


class Recipient:
    """One RECIPIENT argument on its way through the pipeline."""

    def __init__(self, text, host):
        self.text = text
        self.host = host
        local, domain = address.split_recipient(text, host)
        self.address = display(local) + "@" + display(domain)
        self.readings = address.readings(text, host)
        self.candidates = []    # the readings delivery may try, in order
        self.target = None      # the reading delivered to, or refused
        self.outcome = None
        self.refusal = None     # waiting for the one bounce letter

    def envelope_address(self):
        """The recipient as Sendmail had it: local part with its case and
        +detail, @ the (lower-case) domain."""
        local, domain = address.split_recipient(self.text, self.host)
        return local + "@" + domain

    def guessed_name(self):
        """The list name to show when none was found (the suffix reading)."""
        if self.readings:
            return self.readings[1 if len(self.readings) > 1 else 0].name
        return display(self.text.rpartition("@")[0] or self.text)


class Interrupted(BaseException):
    """A catchable signal (Sendmail's kill, a shutdown) arrived mid-run.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception``
    on the way can swallow it: every step unwinds, the Mailman 2 wrapper is
    killed before its stdin closes, no LMTP final dot is sent.
    """

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


INTERRUPTS = (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT)


def _interrupted(signum, frame):
    for sig in INTERRUPTS:      # one unwinding is enough
        _signal.signal(sig, _signal.SIG_IGN)
    raise Interrupted(signum)


class Delivery:
    def __init__(self, settings, inv, log):
        self.settings = settings
        self.inv = inv
        self.log = log
        self.backend = settings.get("mm-handler", "backend")
        self.started = time.monotonic()
        self.message = None
        self.sender = ""

    def run(self):
        for sig in INTERRUPTS:
            _signal.signal(sig, _interrupted)
        recipients = [Recipient(text, self.inv.host) for text in self.inv.recipients]
        try:
            self._deliver(recipients)
        except Interrupted as exc:
            self._fail_pending(recipients, "interrupted by signal %d before "
                               "Mailman had the message" % exc.signum)
        except envelope.InputError as exc:
            self._fail_pending(recipients, str(exc))
        if self.message is not None:
            self.message.close()
        return self._finish(recipients)

    def _fail_pending(self, recipients, reason):
        """After an interruption nothing is known to be delivered: 75 for all
        that have no final outcome (a duplicate beats a loss)."""
        for r in recipients:
            if r.outcome is None or r.refusal is not None:
                r.outcome = Outcome(EX_TEMPFAIL, reason)
                r.refusal = None

    def _deliver(self, recipients):
        inv = self.inv
        if not inv.dry_run or inv.sender is None:
            self.message = envelope.Message(0)
        sender = inv.sender
        if sender is None and self.message is not None:
            sender = self.message.from_line_sender()
        self.sender = envelope.clean_sender(sender)
        lists = registry.for_settings(self.settings)
        deliverable = [r for r in recipients if self._resolve(r, lists)]
        if deliverable and not inv.dry_run and self.message.empty:
            for r in deliverable:
                r.outcome = Outcome(EX_TEMPFAIL, "no message on standard input")
            deliverable = []
        if not inv.dry_run and self._readers(recipients, deliverable) > 1:
            # read the whole message before anything is handed over: a
            # spool failure then costs a retry, never a fragment
            try:
                self.message.spool(self.settings.get("mm-handler", "spool_dir"),
                                   self.settings.get("mm-handler", "spool_threshold"))
            except envelope.InputError as exc:
                self._fail_pending(recipients, str(exc))
                return
        if deliverable:
            if self.backend == "mailman3":
                self._to_mailman3(deliverable)
            else:
                self._to_mailman2(deliverable)
        refused = [r for r in recipients if r.refusal is not None]
        if any(r.outcome is not None and is_temporary(r.outcome.code)
               for r in recipients if r.refusal is None):
            # the message comes back: one letter then, not one per retry
            for r in refused:
                r.outcome = Outcome(EX_TEMPFAIL, "%s; its bounce letter waits "
                                    "until the other recipients are delivered"
                                    % r.refusal.reason, r.outcome.reply)
                r.refusal = None
            return
        self._send_letter(refused)

    def _readers(self, recipients, deliverable):
        """How many times the message will be read: more than once needs it
        spooled first."""
        letters = any(r.refusal is not None for r in recipients)
        if self.backend == "mailman2" or self._delivered_to:
            return len(deliverable) + letters
        # over LMTP a recipient refused at RCPT beside an accepted one needs
        # a letter after DATA has read the message
        may_refuse = len(deliverable) > 1 and "bounce" in (
            self.settings.get("mm-handler", "unknown_list"),
            self.settings.get("mm-handler", "unapproved_action"))
        return (1 if deliverable else 0) + (letters or may_refuse)

    def _resolve(self, r, lists):
        """Find the list; an Outcome for r when it cannot be delivered."""
        try:
            found = registry.candidates(r.readings, lists)
        except registry.RegistryError as exc:
            r.outcome = Outcome(EX_TEMPFAIL, str(exc))
            return False
        if not found:
            self._refuse(r, "unknown_list")
            return False
        approved = self.settings.get("mm-handler", "approved_actions")
        refused = [t for t in found if t.action not in approved]
        r.candidates = [t for t in found if t.action in approved]
        if self.backend == "mailman3":
            # Mailman 3 reads an LMTP address its own way: "test-owner" is
            # the list test-owner if there is one, else test's owner.  An
            # address that an unapproved reading shares is never sent.
            shared = {self._lmtp_address(t) for t in refused}
            r.candidates = [t for t in r.candidates
                            if self._lmtp_address(t) not in shared]
        if not r.candidates:
            r.target = refused[0]
            self._refuse(r, "unapproved_action")
            return False
        r.target = r.candidates[0]
        return True

    def _refuse(self, r, kind, reply=""):
        """Apply the unknown_list / unapproved_action policy to r."""
        from .bounce import Refusal, render
        name = r.target.name if r.target else r.guessed_name()
        action = r.target.action if r.target else "post"
        if kind == "unknown_list":
            status, reason = STATUS_UNKNOWN_LIST, 'no list named "%s" here' % name
        else:
            status, reason = STATUS_UNAPPROVED, 'list "%s" takes no "%s" mail here' % (
                name, action)
        refusal = Refusal(r.address, name, action, r.address.rpartition("@")[2],
                          status, reason, self.sender, reply)
        policy = self.settings.get("mm-handler", kind)
        if policy == "discard":
            r.outcome = Outcome(EX_OK, "discarded: " + reason, reply)
        elif policy == "bounce":
            r.refusal = refusal     # one letter for all, once delivery is done
            r.outcome = Outcome(EX_OK, "refused (%s), bounce letter pending"
                                % reason, reply)
        else:
            # reject: the text goes to stdout, where Sendmail's DSN transcript
            # carries it, before the one-line reason on stderr
            _write_stdout(render(self.settings, refusal, self.log))
            r.outcome = Outcome(EX_NOUSER, "%s <%s>: %s" % (status, r.address, reason),
                                reply)

    def _send_letter(self, refused):
        """One bounce letter naming every refused recipient."""
        if not refused:
            return
        if self.inv.dry_run:
            for r in refused:
                r.outcome = Outcome(EX_OK, "dry run: %s; a bounce letter would "
                                    "go to <%s>" % (r.refusal.reason,
                                                    self.sender or ""), r.outcome.reply)
                r.refusal = None
            return
        from .bounce import send_letter
        try:
            self.message.spool(self.settings.get("mm-handler", "spool_dir"),
                               self.settings.get("mm-handler", "spool_threshold"))
            sent = send_letter(self.settings, self.log,
                               [r.refusal for r in refused], self.message)
        except envelope.InputError as exc:
            sent = Outcome(EX_TEMPFAIL, "%s, for the bounce letter" % exc)
        for r in refused:
            r.outcome = Outcome(sent.code, sent.reason, r.outcome.reply)
            r.refusal = None

    @staticmethod
    def _lmtp_address(target):
        action = MAILMAN3_ACTION.get(target.action, target.action)
        return target.local_part(action) + "@" + target.domain

    def _rcpts(self, r):
        """The LMTP addresses to try for r, in order, without repeats."""
        out = []
        for t in r.candidates:
            rcpt = self._lmtp_address(t)
            if rcpt not in out:
                out.append(rcpt)
        return out

    def _to_mailman3(self, deliverable):
        from . import lmtp
        rcpts = [self._rcpts(r) for r in deliverable]
        endpoints = self.settings.get("mailman3", "lmtp")
        timeout = self.settings.get("mailman3", "timeout")
        if self.inv.dry_run:
            for r, tries in zip(deliverable, rcpts):
                self._print_decision(r, "RCPT TO:<%s> via %s" % (
                    ">, then <".join(tries),
                    ", ".join(map(lmtp.describe_endpoint, endpoints))))
            outcomes = lmtp.deliver(endpoints, timeout, self.sender, rcpts,
                                    None, None, lmtp.lhlo_name())
        elif self._delivered_to:
            # Delivered-To names one recipient: one transaction each
            outcomes = []
            for r, tries in zip(deliverable, rcpts):
                outcomes += lmtp.deliver(endpoints, timeout, self.sender, [tries],
                                         self._added_headers(r),
                                         self.message.chunks(), lmtp.lhlo_name())
        else:
            outcomes = lmtp.deliver(endpoints, timeout, self.sender, rcpts,
                                    self._added_headers(None),
                                    self.message.chunks(), lmtp.lhlo_name())
        for r, tries, outcome in zip(deliverable, rcpts, outcomes):
            # the reading the server answered for; where two readings share
            # an address (test-owner), the suffix reading, the usual case
            for t in r.candidates:
                if self._lmtp_address(t) == outcome.rcpt:
                    r.target = t
            if outcome.code == EX_NOUSER and outcome.stage == STAGE_RCPT:
                # the server has the last word on which lists exist
                self._refuse(r, "unknown_list", outcome.reply)
            else:
                r.outcome = outcome

    def _to_mailman2(self, deliverable):
        from . import wrapper
        program = self.settings.get("mailman2", "wrapper")
        if self.inv.dry_run:
            for r in deliverable:
                self._print_decision(r, "%s %s %s" % (program, r.target.action,
                                                      r.target.name))
                if os.access(program, os.X_OK):
                    r.outcome = Outcome(EX_OK, "dry run: wrapper is executable")
                else:
                    r.outcome = Outcome(EX_TEMPFAIL, "wrapper %s is missing or "
                                        "not executable" % program)
            return
        timeout = self.settings.get("mailman2", "timeout")
        for r in deliverable:
            r.outcome = wrapper.deliver(
                program, r.target.action, r.target.name, self._wrapper_stream(r),
                timeout, os.environ)

    @property
    def _delivered_to(self):
        return self.settings.get("mm-handler", "delivered_to")

    def _added_headers(self, r):
        """The header lines we add (no line ends): the trace header, and
        Delivered-To with r's whole envelope recipient, +detail kept, as
        Postfix's local delivery writes it: both Mailmans' bounce runners
        find a VERP address there when the bounce's own headers lack it."""
        lines = []
        if self.settings.get("mm-handler", "trace_header"):
            lines.append(TRACE_HEADER)
        if r is not None and self._delivered_to:
            # the local part passed address.readings(): no CR, LF or space
            lines.append(b"Delivered-To: " + r.envelope_address().encode("ascii"))
        return lines

    def _wrapper_stream(self, r):
        """From_ line, then our headers, then the message as it came."""
        eol = self.message.eol
        head = self.message.from_line + b"".join(
            line + eol for line in self._added_headers(r))
        if head:
            yield head
        yield from self.message.chunks()

    def _print_decision(self, r, how):
        t = r.target
        sys.stdout.write("recipient %s: list %s, action %s, backend %s: %s\n"
                         % (r.address, t.name, t.action, self.backend, how))

    def _finish(self, recipients):
        ms = int((time.monotonic() - self.started) * 1000)
        size = self.message.size if self.message is not None else 0
        for r in recipients:
            o = r.outcome
            t = r.target
            if self.inv.dry_run:
                sys.stdout.write("recipient %s: exit %d: %s\n"
                                 % (r.address, o.code, o.reason))
            self.log.send(
                LOG_INFO if o.code == EX_OK else
                LOG_NOTICE if o.code == EX_NOUSER else LOG_ERR,
                delivery_line(
                    sender="<%s>" % self.sender, recipient=r.address,
                    list=t.name if t else "-", action=t.action if t else "-",
                    backend=self.backend, status=o.code,
                    dry_run="yes" if self.inv.dry_run else "no",
                    reason=o.reason, reply=o.reply or "-", size=size, ms=ms))
            if o.code != EX_OK:
                _say(self._error_line(r))
        code = combine(r.outcome.code for r in recipients)
        if self.inv.dry_run:
            sys.stdout.write("exit status: %d\n" % code)
        elif self.message is not None:
            try:
                self.message.drain()
            except Interrupted:
                pass
        else:
            _drain_stdin()
        return code

    def _error_line(self, r):
        o = r.outcome
        line = o.reason
        status = line.split(" ", 1)[0].split(".")   # "5.1.1", not "127.0.0.1:24"
        if not (len(status) == 3 and all(p.isdigit() for p in status)):
            line = "%s <%s>: %s" % (enhanced(o.code), r.address, o.reason)
        if o.reply:
            line += " (%s said: %s)" % (
                "wrapper" if self.backend == "mailman2" else "LMTP server",
                display(o.reply.replace("\n", " ")))
        if is_temporary(o.code):
            line += "; kept for retry"
        return line
