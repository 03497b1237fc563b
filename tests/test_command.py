"""The installed command's own promises: never exit 1, whatever is broken."""

import os
import shutil
import subprocess

from tests.conftest import sample_message


def test_a_broken_install_keeps_the_mail_instead_of_mailing_a_traceback(handler, tmp_path):
    script = tmp_path / "mm-handler"
    shutil.copy(handler, script)       # beside no mm_handler package
    proc = subprocess.run(["/usr/bin/python3", "-I", str(script), "-r", "a@example.org",
                           "lists.example.test", "test"], input=sample_message(),
                          capture_output=True, env={}, cwd="/")
    assert proc.returncode == 75
    assert proc.stderr.decode() == (
        "4.3.0 mm-handler: cannot load its package (ModuleNotFoundError: No module "
        "named 'mm_handler'); the message is kept for retry\n")


def test_closed_stdout_and_stderr_change_nothing(handler, make_config, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    config = make_config({"mm-handler": {"backend": "mailman2"},
                          "mailman2": {"lists_dir": lists}})

    def close_output():
        os.close(1)
        os.close(2)

    proc = subprocess.run([str(handler), "-C", str(config), "-r", "a@example.org",
                           "lists.example.test", "nolist"], input=sample_message(),
                          env={}, cwd="/", preexec_fn=close_output)
    assert proc.returncode == 67


def test_help_and_version_are_for_people(run_handler):
    help_run = run_handler(["--help"])
    assert help_run.code == 0 and help_run.stdout.startswith("usage: mm-handler")
    version = run_handler(["--version"])
    assert version.code == 0 and version.stdout.startswith("mm-handler ")
