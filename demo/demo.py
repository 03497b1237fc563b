"""`make demo`: one real delivery into a private Mailman 3, then an unknown list.

Installs mm-handler into a fresh venv (Debian's python3, as a user would),
starts Mailman 3's own LMTP runner (mailman==3.3.10 from PyPI) with one
list, pipes a message through `mm-handler` exactly as Sendmail would (same
argv, From_ line first, empty environment, cwd /), shows the queue file
Mailman wrote, then shows what a sender to an unknown list gets, and stops
everything it started.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.peers.mailman3 import Mailman3Runner, free_port  # noqa: E402

MESSAGE = b"""\
From alice@example.org Sun Nov 22 02:44:03 2026
From: Alice <alice@example.org>
To: demo@lists.example.test
Subject: Hello from Sendmail
Message-ID: <demo-1@example.org>
Date: Sun, 22 Nov 2026 02:44:03 +0000

A line that starts with a dot:
.like this one
From here on, an 8-bit word: Gr\xc3\xbc\xc3\x9fe
"""


def step(text):
    print("\n== " + text)


def run(handler, config, args):
    argv = [str(handler), "-C", str(config)] + args
    print("$ " + " ".join(argv) + "   < message   (env: empty, cwd: /)")
    proc = subprocess.run(argv, input=MESSAGE, capture_output=True, env={}, cwd="/")
    print("exit status: %d" % proc.returncode)
    for name, data in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        if data:
            print("--- %s (what Sendmail puts in the sender's DSN) ---" % name)
            print(data.decode("utf-8", "replace").rstrip())
    return proc.returncode


def main():
    work = Path(tempfile.mkdtemp(prefix="mmh-demo-"))
    work.chmod(0o755)
    runner = None
    try:
        step("installing mm-handler into %s/venv with pip" % work)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(work / "venv")], check=True)
        subprocess.run([str(work / "venv/bin/pip"), "install", "-q",
                        "--disable-pip-version-check", "--no-index", "--find-links",
                        str(ROOT / "wheelhouse"), "mm-handler"], check=True)
        handler = work / "venv/bin/mm-handler"

        step("starting a private Mailman 3.3.10 LMTP runner with list demo@lists.example.test")
        runner = Mailman3Runner(ROOT / ".venv-mailman", work / "mailman", free_port())
        runner.create_list("demo@lists.example.test")
        runner.start()
        print("LMTP runner listening on %s (pid %d)" % (runner.endpoint, runner.proc.pid))
        config = work / "mm-handler.cfg"
        config.write_text("[mm-handler]\nbackend = mailman3\nsyslog_socket = %s/no-syslog\n"
                          "[mailman3]\nlmtp = %s\nvar_dir = %s\n"
                          % (work, runner.endpoint, runner.var_dir))
        print(config.read_text().rstrip())

        step("delivering a post, as Sendmail's A=mm-handler $h $u with flag r would")
        code = run(handler, config, ["-r", "alice@example.org", "lists.example.test", "demo"])
        [(msg, data)] = runner.read_queue("in")
        path = runner.queue_files("in")[0]
        print("landed in Mailman's 'in' queue: %s" % path)
        print("list id: %s; to_list: %s" % (data.get("listid"), data.get("to_list")))
        for header in ("Subject", "X-Mailman-Handler", "X-MailFrom", "Message-ID-Hash"):
            print("  %s: %s" % (header, msg[header]))
        print("  body: %r" % msg.get_payload(decode=True))
        assert code == 0

        step("a message to a list that does not exist")
        code = run(handler, config, ["-r", "alice@example.org", "lists.example.test", "news-x"])
        print("Sendmail bounces exit 67 as 5.1.1 User unknown, with the lines above in the DSN.")
        print("queues now: %s (nothing new queued)" % runner.queued())
        assert code == 67
        step("demo done")
    finally:
        if runner is not None:
            runner.stop()
            print("LMTP runner stopped")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
