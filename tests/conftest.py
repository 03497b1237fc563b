"""Shared fixtures: the installed mm-handler command, configs, a syslog sink.

The command is pip-installed from the wheelhouse (built by `make test`) into
a venv made with Debian's /usr/bin/python3 in a world-readable directory,
and run with an empty environment and cwd "/", as Sendmail runs it.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / "wheelhouse"
MAILMAN_VENV = Path(os.environ.get("MM_HANDLER_MAILMAN_VENV", ROOT / ".venv-mailman"))
SYSTEM_PYTHON = "/usr/bin/python3"

from tests.peers.syslog import SyslogSink  # noqa: E402,F401 (re-exported)

pytest_plugins = [
    "tests.peers.mailman3",
    "tests.peers.sendmail",
]


@pytest.fixture(scope="session")
def public_tmp():
    """A temp directory every user can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mmh-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# The interpreter the installed command runs on: Debian's by default (an
# unprivileged mailer user can reach it); `make test-pythons` sets another.
HANDLER_PYTHON = os.environ.get("MM_HANDLER_TEST_PYTHON", SYSTEM_PYTHON)
# `make test-portable`: the installed command runs without the Linux-only
# interfaces, as on FreeBSD, NetBSD, illumos and macOS.
PORTABLE = os.environ.get("MM_HANDLER_TEST_PORTABLE") == "1"
LINUX_ONLY = {"os": ["pidfd_open", "O_TMPFILE", "memfd_create", "eventfd",
                     "splice", "copy_file_range", "sched_getaffinity"],
              "select": ["poll", "epoll"], "signal": ["pidfd_send_signal"]}
PORTABLE_MODULE = """\
# Hides the Linux-only interfaces from mm-handler (tests/conftest.py).
import importlib
for module, names in %r.items():
    m = importlib.import_module(module)
    for name in names:
        if hasattr(m, name):
            delattr(m, name)
"""


@pytest.fixture(scope="session")
def handler(public_tmp):
    """Path of the `mm-handler` command as `pip install` gives it to a user."""
    wheels = sorted(WHEELHOUSE.glob("mm_handler-*.whl"))
    assert wheels, "no wheel in %s: run `make test`" % WHEELHOUSE
    venv = public_tmp / "venv"
    subprocess.run([HANDLER_PYTHON, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                    "--disable-pip-version-check", "--no-index",
                    "--find-links", str(WHEELHOUSE), "mm-handler"], check=True)
    command = venv / "bin" / "mm-handler"
    assert command.exists()
    if PORTABLE:
        hide_linux_only(venv)
    return command


def hide_linux_only(venv):
    """A .pth hook run at every start of the venv's interpreter (before
    mm-handler's imports) that deletes the Linux-only interfaces."""
    [site] = venv.glob("lib/python3*/site-packages")
    (site / "_mmh_portable.py").write_text(PORTABLE_MODULE % (LINUX_ONLY,))
    (site / "mmh_portable.pth").write_text("import _mmh_portable\n")
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import os, select; print(hasattr(os, 'pidfd_open'), "
         "hasattr(os, 'O_TMPFILE'), hasattr(select, 'poll'))"],
        capture_output=True, text=True, env={}, check=True)
    assert probe.stdout.split() == ["False"] * 3, probe


@pytest.fixture
def syslog_sink(tmp_path):
    sink = SyslogSink(tmp_path / "log.sock")
    yield sink
    sink.close()


def render_config(sections):
    """{section: {key: value}} -> INI text."""
    out = []
    for section, keys in sections.items():
        out.append("[%s]" % section)
        out.extend("%s = %s" % (k, v) for k, v in keys.items())
        out.append("")
    return "\n".join(out)


@pytest.fixture
def make_config(tmp_path, syslog_sink):
    """Write a config file; the syslog socket points at syslog_sink."""
    def make(sections=None, name="mm-handler.cfg"):
        sections = {k: dict(v) for k, v in (sections or {}).items()}
        sections.setdefault("mm-handler", {}).setdefault(
            "syslog_socket", syslog_sink.path)
        path = tmp_path / name
        path.write_text(render_config(sections))
        return path
    return make


class Run:
    def __init__(self, proc):
        self.code = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")

    def __repr__(self):
        return "Run(code=%d, stdout=%r, stderr=%r)" % (self.code, self.stdout,
                                                       self.stderr)


@pytest.fixture
def run_handler(handler):
    """Run the installed command the way Sendmail does: empty env, cwd /."""
    def run(args, stdin=b"", config=None, timeout=120, env=None):
        argv = [str(handler)]
        if config is not None:
            argv += ["-C", str(config)]
        proc = subprocess.run(argv + list(args), input=stdin,
                              capture_output=True, env=env or {}, cwd="/",
                              timeout=timeout)
        return Run(proc)
    return run


FROM_LINE = b"From alice@example.org Sun Nov 22 02:44:03 2026\n"


def sample_message(subject="test", body=b"Hello list.\n", from_line=FROM_LINE,
                   message_id=None, extra=b""):
    """A message as Sendmail hands it over: From_ line, headers, body."""
    message_id = message_id or "<%s@example.org>" % subject.replace(" ", ".")
    return (from_line
            + b"From: Alice <alice@example.org>\n"
            + b"To: list@lists.example.test\n"
            + b"Subject: " + subject.encode() + b"\n"
            + b"Message-ID: " + message_id.encode() + b"\n"
            + b"Date: Sun, 22 Nov 2026 02:44:03 +0000\n"
            + extra
            + b"\n" + body)


def dsn_message(original_to, message_id="<dsn.1@mx.example.net>"):
    """A delivery status notification as a remote MTA sends it (null sender)."""
    return (b"From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.net>\n"
            b"To: " + original_to.encode() + b"\n"
            b"Subject: Returned mail: see transcript for details\n"
            b"Message-ID: " + message_id.encode() + b"\n"
            b"Date: Sun, 22 Nov 2026 02:44:03 +0000\n"
            b"MIME-Version: 1.0\n"
            b"Content-Type: multipart/report; report-type=delivery-status;\n"
            b"\tboundary=\"b1\"\n"
            b"\n"
            b"--b1\n"
            b"Content-Type: text/plain\n"
            b"\n"
            b"bob@example.net: User unknown\n"
            b"--b1\n"
            b"Content-Type: message/delivery-status\n"
            b"\n"
            b"Reporting-MTA: dns; mx.example.net\n"
            b"\n"
            b"Final-Recipient: rfc822; bob@example.net\n"
            b"Action: failed\n"
            b"Status: 5.1.1\n"
            b"--b1--\n")
