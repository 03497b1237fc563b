"""A stand-in for /dev/log that the tests can read."""

import os
import select
import socket
import threading
import time


class SyslogSink:
    """A Unix datagram socket standing in for /dev/log.

    A thread drains it: an unread datagram socket holds only a few lines,
    after which senders block (mm-handler gives up after 1 s).
    """

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.seen = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            with self.lock:
                self.seen.append(data.decode("ascii", "replace"))

    def lines(self):
        """Every line received so far (the '<PRI>date ident[pid]: ' kept)."""
        deadline = time.monotonic() + 2
        while select.select([self.sock], [], [], 0)[0] and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(0.005)    # the last datagram taken may not be appended yet
        with self.lock:
            return list(self.seen)

    def messages(self):
        """Just the text after 'mm-handler[pid]: '."""
        return [line.split("]: ", 1)[1] for line in self.lines()]

    def clear(self):
        with self.lock:
            self.seen.clear()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(2)
