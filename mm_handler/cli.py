"""The mm-handler command: envelope -> address -> registry -> delivery -> status -> log.

Every path ends in a deliberate sysexits code with one short line on
stderr (Sendmail puts it in the sender's DSN) and a syslog line for the
admin.  Nothing escapes main(): an uncaught exception would exit 1, which
Sendmail bounces with the traceback inside.
"""

import os
import sys
import time

from . import __version__, address, envelope, registry
from .config import ConfigError, config_path, load
from .log import LOG_ERR, LOG_INFO, LOG_NOTICE, Syslog, delivery_line, display
from .status import (EX_NOUSER, EX_OK, EX_TEMPFAIL, Outcome, combine, enhanced,
                     is_temporary)

TRACE_HEADER = b"X-Mailman-Handler: mm-handler " + __version__.encode()
# Mailman 3 has no -admin address; it is the old name of -bounces.
MAILMAN3_ACTION = {"admin": "bounces"}


def main(argv=None):
    """Console entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    log = Syslog()
    try:
        return _run(argv, log)
    except BaseException as exc:    # noqa: BLE001 - the last line of defence
        return _crash(exc, log)


def _run(argv, log):
    if argv[:1] == ["maps"]:
        from .maps import main as maps_main
        return maps_main(argv[1:])
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
    except ConfigError as exc:
        if inv.mode == "check":
            sys.stdout.write("FAIL %s\n" % exc)
            return 78
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
    _say("4.3.5 mm-handler: %s; the message is kept for retry" % text)
    log.send(LOG_ERR, "site fault, exit 75: %s" % text)
    _drain_stdin()
    return EX_TEMPFAIL


def _crash(exc, log):
    try:
        import traceback
        for line in traceback.format_exc().splitlines():
            log.send(LOG_ERR, "internal error: " + line)
        _say("4.3.0 mm-handler: internal error (%s); the message is kept for "
             "retry" % type(exc).__name__)
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
        if os.isatty(0):
            return
        while os.read(0, 65536):
            pass
    except OSError:
        pass


class Recipient:
    """One RECIPIENT argument on its way through the pipeline."""

    def __init__(self, text, host):
        self.text = text
        local, domain = address.split_recipient(text, host)
        self.address = display(local) + "@" + display(domain)
        self.readings = address.readings(text, host)
        self.target = None
        self.outcome = None

    def guessed_name(self):
        """The list name to show when none was found (the suffix reading)."""
        if self.readings:
            return self.readings[1 if len(self.readings) > 1 else 0].name
        return display(self.text.rpartition("@")[0] or self.text)


class Delivery:
    def __init__(self, settings, inv, log):
        self.settings = settings
        self.inv = inv
        self.log = log
        self.backend = settings.get("mm-handler", "backend")
        self.started = time.monotonic()
        self.message = None

    def run(self):
        inv = self.inv
        if not inv.dry_run or inv.sender is None:
            try:
                self.message = envelope.Message(0)
            except OSError as exc:
                return _site_fault(self.log, "cannot read the message: %s" % exc)
        sender = inv.sender
        if sender is None and self.message is not None:
            sender = self.message.from_line_sender()
        self.sender = envelope.clean_sender(sender)
        recipients = [Recipient(text, inv.host) for text in inv.recipients]
        lists = registry.for_settings(self.settings)
        deliverable = [r for r in recipients if self._resolve(r, lists)]
        if deliverable and not inv.dry_run and self.message.empty:
            for r in deliverable:
                r.outcome = Outcome(EX_TEMPFAIL, "no message on standard input")
            deliverable = []
        if deliverable:
            if self.backend == "mailman3":
                self._to_mailman3(deliverable)
            else:
                self._to_mailman2(deliverable)
        if self.message is not None:
            self.message.close()
        return self._finish(recipients)

    def _resolve(self, r, lists):
        """Find the list; an Outcome for r when it cannot be delivered."""
        try:
            r.target = registry.resolve(r.readings, lists)
        except registry.RegistryError as exc:
            r.outcome = Outcome(EX_TEMPFAIL, str(exc))
            return False
        if r.target is None:
            r.outcome = self._refuse(r, "unknown_list")
            return False
        approved = self.settings.get("mm-handler", "approved_actions")
        if r.target.action not in approved:
            r.outcome = self._refuse(r, "unapproved_action")
            return False
        return True

    def _refuse(self, r, kind, reply=""):
        """Apply the unknown_list / unapproved_action policy to r."""
        from .bounce import Refusal, render, send_bounce
        name = r.target.name if r.target else r.guessed_name()
        action = r.target.action if r.target else "post"
        if kind == "unknown_list":
            status, reason = "5.1.1", 'no list named "%s" here' % name
        else:
            status, reason = "5.7.1", 'list "%s" takes no "%s" mail here' % (
                name, action)
        refusal = Refusal(r.address, name, action, r.address.rpartition("@")[2],
                          status, reason, self.sender, reply)
        policy = self.settings.get("mm-handler", kind)
        if policy == "discard":
            return Outcome(EX_OK, "discarded: " + reason, reply)
        if policy == "bounce" and not self.inv.dry_run:
            return send_bounce(self.settings, self.log, refusal, self.message,
                               self.settings.get("mm-handler", "spool_dir"),
                               self.settings.get("mm-handler", "spool_threshold"))
        # reject: the text goes to stdout, where Sendmail's DSN transcript
        # carries it, before the one-line reason on stderr
        _write_stdout(render(self.settings, refusal, self.log))
        return Outcome(EX_NOUSER, "%s <%s>: %s" % (status, r.address, reason), reply)

    def _to_mailman3(self, deliverable):
        from . import lmtp
        rcpts = []
        for r in deliverable:
            action = MAILMAN3_ACTION.get(r.target.action, r.target.action)
            rcpts.append(r.target.local_part(action) + "@" + r.target.domain)
        endpoints = self.settings.get("mailman3", "lmtp")
        timeout = self.settings.get("mailman3", "timeout")
        if self.inv.dry_run:
            for r, rcpt in zip(deliverable, rcpts):
                self._print_decision(r, "RCPT TO:<%s> via %s" % (
                    rcpt, ", ".join(map(lmtp.describe_endpoint, endpoints))))
            outcomes = lmtp.deliver(endpoints, timeout, self.sender, rcpts,
                                    None, None, lmtp.lhlo_name())
        else:
            if len(deliverable) > 1 and "bounce" in (
                    self.settings.get("mm-handler", "unknown_list"),
                    self.settings.get("mm-handler", "unapproved_action")):
                # a RCPT refused beside an accepted one needs the message
                # again for its bounce letter, after DATA has read stdin
                self._spool()
            header = TRACE_HEADER if self._trace else b""
            outcomes = lmtp.deliver(endpoints, timeout, self.sender, rcpts,
                                    header, self.message.chunks(),
                                    lmtp.lhlo_name())
        for r, outcome in zip(deliverable, outcomes):
            if outcome.code == EX_NOUSER and outcome.stage == "rcpt":
                # the server has the last word on which lists exist
                outcome = self._refuse(r, "unknown_list", outcome.reply)
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
        if len(deliverable) > 1 and not self._spool():
            for r in deliverable:
                r.outcome = self.spool_failure
            return
        timeout = self.settings.get("mailman2", "timeout")
        for r in deliverable:
            r.outcome = wrapper.deliver(
                program, r.target.action, r.target.name, self._wrapper_stream(),
                timeout, os.environ)

    def _spool(self):
        """Read the whole message now, so that it can be sent again."""
        spool_dir = self.settings.get("mm-handler", "spool_dir")
        try:
            self.message.spool(spool_dir, self.settings.get(
                "mm-handler", "spool_threshold"))
            return True
        except OSError as exc:
            self.spool_failure = Outcome(EX_TEMPFAIL, "cannot spool the message "
                                         "in %s: %s" % (spool_dir, exc.strerror or exc))
            return False

    @property
    def _trace(self):
        return self.settings.get("mm-handler", "trace_header")

    def _wrapper_stream(self):
        """From_ line, then the trace header, then the message as it came."""
        head = self.message.from_line
        if self._trace:
            head += TRACE_HEADER + self.message.eol
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
