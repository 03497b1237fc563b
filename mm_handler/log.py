"""One syslog line per recipient, for the admin.

Written straight to the syslog socket (RFC 3164 format, facility mail by
default) so that the socket path is a setting: inside a test namespace, or
on a host whose syslog listens elsewhere.  Logging never fails delivery.
"""

import _socket
import os
import time

FACILITIES = {"mail": 2, "daemon": 3, "user": 1,
              **{"local%d" % i: 16 + i for i in range(8)}}
LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO = 3, 4, 5, 6
IDENT = "mm-handler"


def display(text, limit=200):
    """Input text made safe for one log or stderr line: printable ASCII only."""
    if len(text) <= limit and text.isascii() and text.isprintable() \
            and "\\" not in text:
        return text
    out = []
    for c in text[:limit]:
        if " " <= c < "\x7f" and c != "\\":
            out.append(c)
        else:
            out.append("\\x%02x" % ord(c) if ord(c) < 256 else "\\u%04x" % ord(c))
    if len(text) > limit:
        out.append("...")
    return "".join(out)


# where syslogd listens: Linux and illumos, FreeBSD and NetBSD, macOS
SYSLOG_SOCKETS = ("/dev/log", "/var/run/log", "/var/run/syslog")


def default_socket():
    """The first syslog socket this system has (a missing one is tried and
    given up at the first line, never slowing a delivery)."""
    for path in SYSLOG_SOCKETS:
        if os.path.exists(path):
            return path
    return SYSLOG_SOCKETS[0]


class Syslog:
    """Lines to the syslog socket; after one failure, none for this run.

    A syslog daemon that does not read fills the socket's small queue; each
    further line would wait out the timeout again, and one run may log a
    line per recipient.
    """

    def __init__(self, path="", facility="mail"):
        self.path = path        # "": the system's own, found at the first line
        self.facility = FACILITIES.get(facility, 2)
        self.sock = None
        self.failed = False

    def send(self, priority, text):
        """Send one line (made printable; long text is cut, never split)."""
        if self.failed:
            return
        line = "<%d>%s %s[%d]: %s" % (
            self.facility * 8 + priority,
            time.strftime("%b %e %H:%M:%S"), IDENT, os.getpid(),
            display(text, 1800))
        try:
            if self.sock is None:
                self.path = self.path or default_socket()
                self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
                self.sock.settimeout(1.0)
                self.sock.connect(self.path)
            self.sock.send(line.encode("ascii"))
        except OSError:
            self.failed = True
            self.close()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def field(value):
    """A key=value field value: quoted when it has spaces or is empty.

    Control bytes are left for Syslog.send to escape, once.
    """
    value = str(value)
    if not value or " " in value or '"' in value:
        return '"%s"' % value.replace('"', "'")
    return value


def delivery_line(**fields):
    """``key=value`` pairs in a stable order for one delivery."""
    return " ".join("%s=%s" % (key, field(value)) for key, value in fields.items())
