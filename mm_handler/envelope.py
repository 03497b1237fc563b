"""What Sendmail hands the mailer: the command line and the message on stdin.

argv is ``[-C FILE] [--dry-run] [-r SENDER] HOST RECIPIENT...`` (A=mm-handler
$h $u with flag r); stdin starts with a From_ line.  stdin is a pipe: it is
read once, in chunks, so memory stays flat whatever the message size.
"""

import os

USAGE = """\
usage: mm-handler [-C FILE] [--dry-run] [-r SENDER] HOST RECIPIENT [RECIPIENT...]
       mm-handler --check [-C FILE]
       mm-handler --render-template [-C FILE] RECIPIENT
       mm-handler maps [-C FILE] [--output DIR] [--makemap]
       mm-handler socketmap [-C FILE]

Sendmail runs it from a mailer definition such as
  Mmailman, P=/opt/mm-handler/bin/mm-handler, F=rDFMhlqSu, U=mm-handler:list,
            S=EnvFromL, R=EnvToL/HdrToL, A=mm-handler $h $u
with the message on standard input.  Exit status: 0 delivered, 75 kept for
retry, 67 no such list.  Configuration: -C FILE, else $MM_HANDLER_CONFIG,
else /etc/mm-handler.cfg.
"""

CHUNK = 65536
MAX_FROM_LINE = 8192
NULL_SENDERS = ("", "<>", "mailer-daemon")


MODE_OPTIONS = ("-h", "--help", "--version", "--dry-run", "--check",
                "--render-template")


class UsageError(Exception):
    """The command line does not fit the mailer contract."""


class Invocation:
    """The parsed command line."""

    def __init__(self):
        self.config = None
        self.dry_run = False
        self.sender = None          # None: take it from the From_ line
        self.host = None
        self.recipients = []
        self.mode = "deliver"       # deliver | help | check | render-template | version


def parse_argv(argv):
    """argv (without the program name) -> Invocation, or UsageError.

    Hand-written rather than argparse: this runs once per message, and a
    mis-written mailer definition must get a precise one-line answer.

    Sendmail puts ``-r SENDER`` first, then the A= words.  After it only the
    separate ``-C FILE`` and ``--dry-run`` are options: a HOST ($h) that
    looks like an option (``-C/path/evil.cfg``) is never obeyed.
    """
    inv = Invocation()
    args = list(argv)
    seen = set()
    while args and args[0].startswith("-") and args[0] != "-":
        opt = args[0]
        if opt == "--":
            args.pop(0)
            break
        after_sender = inv.sender is not None
        if after_sender and opt not in ("-C", "--dry-run"):
            break               # HOST, whatever it looks like
        args.pop(0)
        name = "-r" if opt[:2] in ("-r", "-f") else "-C" if opt[:2] == "-C" else opt
        if name in seen:
            raise UsageError("option %r given twice (is HOST an option?)" % opt[:40])
        seen.add(name)
        if opt in ("-h", "--help"):
            inv.mode = "help"
            return inv
        if opt == "--version":
            inv.mode = "version"
            return inv
        if opt == "--dry-run":
            inv.dry_run = True
        elif opt == "--check":
            inv.mode = "check"
        elif opt == "--render-template":
            inv.mode = "render-template"
        elif opt in ("-C", "-r", "-f"):
            if not args:
                raise UsageError("option %s needs a value" % opt)
            value = args.pop(0)
            if opt == "-C":
                inv.config = value
            else:
                inv.sender = value
        elif opt[:2] in ("-C", "-r", "-f") and len(opt) > 2:
            # -C/path or -rsender, as some A= lines are written
            if opt[1] == "C":
                inv.config = opt[2:]
            else:
                inv.sender = opt[2:]
        else:
            raise UsageError("unknown option %r" % opt[:40])
    if inv.mode == "check":
        if args:
            raise UsageError("--check takes no arguments besides -C FILE")
        return inv
    if inv.mode == "render-template":
        if len(args) != 1:
            raise UsageError("--render-template needs exactly one RECIPIENT")
        inv.recipients = args
        return inv
    if len(args) < 2:
        raise UsageError("expected HOST RECIPIENT... after the options, got %d "
                         "argument%s (is the mailer's A= 'mm-handler $h $u'?)"
                         % (len(args), "" if len(args) == 1 else "s"))
    inv.host = args[0]
    inv.recipients = args[1:]
    if not is_host(inv.host):
        raise UsageError("HOST %r is not a host name (is the mailer's A= "
                         "'mm-handler $h $u' and $h the list domain?)"
                         % inv.host[:60])
    for rcpt in inv.recipients:
        if not rcpt or rcpt.endswith("@"):
            raise UsageError("RECIPIENT %r has no address (is the mailer's A= "
                             "'mm-handler $h $u'?)" % rcpt[:60])
    return inv


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz"
                        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_[]:")


def is_host(host):
    """A plausible $h: a host name (or address literal), never an option."""
    return (0 < len(host) <= 255 and host[0] not in "-."
            and all(c in _HOST_CHARS for c in host))


def is_null_sender(sender):
    return sender.strip().lower() in NULL_SENDERS


_SENDER_BAD = frozenset(chr(i) for i in range(33)) | set('<>()[]\\,;:"\x7f')


def clean_sender(sender):
    """The envelope sender as it may appear in a protocol line, or ''.

    '' is the null sender.  A sender with control characters, spaces, or
    characters no address needs is treated as no sender at all.  A UTF-8
    (SMTPUTF8) sender is kept: the delivery backend decides how to pass it.
    """
    if sender is None:
        return ""
    sender = sender.strip()
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1]
    if is_null_sender(sender):
        return ""
    if (len(sender) > 512 or not sender.isprintable()
            or any(c in _SENDER_BAD for c in sender)):
        return ""
    return sender


class InputError(Exception):
    """The message could not be read (or kept) whole: nothing may go out."""


class Message:
    """The message on a pipe: the From_ line split off, the rest streamed.

    ``chunks()`` yields the bytes after the From_ line once, unless
    ``spool()`` was called first, after which it can be replayed (several
    recipients, or a bounce letter beside a delivery).  Spooling keeps up to
    `threshold` bytes in memory and the rest in an unnamed file in
    `spool_dir`.  Any read or spool failure raises InputError and leaves the
    message unusable: every later ``chunks()`` raises too, so that no
    fragment can ever be handed over.
    """

    def __init__(self, fd=0):
        self.fd = fd
        self.size = 0
        self.from_line = b""
        self.eol = b"\n"
        self._head = b""
        self._eof = False
        self._spool = None
        self._broken = None
        self._read_first_line()

    def _read(self):
        if self._broken is not None:
            raise InputError(self._broken)
        if self._eof:
            return b""
        try:
            data = read_chunk(self.fd)
        except OSError as exc:
            self._broken = "cannot read the message: %s" % (exc.strerror or exc)
            raise InputError(self._broken) from None
        if not data:
            self._eof = True
        self.size += len(data)
        return data

    def _read_first_line(self):
        buf = b""
        while b"\n" not in buf and len(buf) < MAX_FROM_LINE:
            data = self._read()
            if not data:
                break
            buf += data
        if buf.startswith(b"From "):
            end = buf.find(b"\n")
            if 0 <= end < MAX_FROM_LINE:
                self.from_line, buf = buf[:end + 1], buf[end + 1:]
                if self.from_line.endswith(b"\r\n"):
                    self.eol = b"\r\n"
        while not buf and not self._eof:
            buf = self._read()
        self._head = buf
        self._empty = not buf       # _head is consumed by chunks()/spool()

    @property
    def empty(self):
        """True when nothing but (at most) a From_ line arrived."""
        return self._empty

    def from_line_sender(self):
        """The sender named in the From_ line ('From SENDER DATE'), or None."""
        # undecodable bytes stay surrogates, which clean_sender refuses
        words = self.from_line.decode("utf-8", "surrogateescape").split()
        return words[1] if len(words) > 1 else None

    def chunks(self):
        if self._spool is not None:
            yield from self._spool.replay()
            return
        if self._broken is not None:
            raise InputError(self._broken)
        head, self._head = self._head, b""
        if head:
            yield head
        while True:
            data = self._read()
            if not data:
                return
            yield data

    def spool(self, spool_dir, threshold):
        """Read the rest of stdin now so that chunks() can be replayed.

        InputError when it cannot be kept whole; the message is then
        unusable (part of stdin is gone).
        """
        if self._spool is not None:
            return
        spool = _Spool(spool_dir, threshold)
        try:
            for data in self.chunks():
                spool.write(data)
        except OSError as exc:
            spool.close()
            self._broken = "cannot spool the message in %s: %s" % (
                spool_dir, exc.strerror or exc)
            raise InputError(self._broken) from None
        except BaseException:
            spool.close()
            self._broken = "the message was not read whole"
            raise
        self._spool = spool

    def drain(self):
        """Read what Sendmail still writes, so that it never sees EPIPE."""
        if not self._eof:
            drain(self.fd)
            self._eof = True

    def close(self):
        if self._spool is not None:
            self._spool.close()


DRAIN_SECONDS = 30


def drain(fd, seconds=DRAIN_SECONDS):
    """Read and drop what is left on `fd`, for at most `seconds`: a writer
    that exits before it is read makes Sendmail report an I/O error instead
    of our exit status; one that never stops writing cannot hold us."""
    import select
    import time
    deadline = time.monotonic() + seconds
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return
            if not os.read(fd, CHUNK):
                return
    except (OSError, ValueError):   # closed, not selectable, EAGAIN...
        return


def read_chunk(fd):
    """os.read that also works on a non-blocking stdin (EAGAIN: wait)."""
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            import select
            select.select([fd], [], [])


class _Spool:
    """Bytes kept in memory up to a threshold, then in an unnamed temp file."""

    def __init__(self, spool_dir, threshold):
        self.spool_dir = spool_dir
        self.threshold = threshold
        self.memory = []
        self.held = 0
        self.fd = None

    def write(self, data):
        if self.fd is None and self.held + len(data) <= self.threshold:
            self.memory.append(data)
            self.held += len(data)
            return
        if self.fd is None:
            self.fd = unnamed_file(self.spool_dir)
            for part in self.memory:
                _write_all(self.fd, part)
            self.memory = []
        _write_all(self.fd, data)

    def replay(self):
        if self.fd is None:
            yield from self.memory
            return
        try:
            os.lseek(self.fd, 0, os.SEEK_SET)
            while True:
                data = os.read(self.fd, CHUNK)
                if not data:
                    return
                yield data
        except OSError as exc:
            raise InputError("cannot read the spooled message back: %s"
                             % (exc.strerror or exc)) from None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def unnamed_file(directory):
    """A read-write file in `directory` that has no name: nothing is left
    behind whatever happens next.  O_TMPFILE where the system (Linux) and the
    file system have it; elsewhere an exclusive random name unlinked at once.
    """
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        import errno
        try:
            return os.open(directory, tmpfile | os.O_RDWR, 0o600)
        except OSError as exc:
            # an old kernel (EISDIR) or a file system without it
            if exc.errno not in (errno.EISDIR, errno.EOPNOTSUPP, errno.EINVAL):
                raise
    flags = (os.O_RDWR | os.O_CREAT | os.O_EXCL
             | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    path = os.path.join(directory, ".mm-handler-spool-" + os.urandom(8).hex())
    fd = os.open(path, flags, 0o600)
    try:
        os.unlink(path)
    except OSError:
        os.close(fd)
        raise
    return fd


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
