"""mm-handler(8): made from the program's own tables, shipped in the wheel,
found by man once installed."""

import subprocess
import zipfile

from mm_handler import __version__, manpage
from mm_handler.config import SCHEMA
from mm_handler.envelope import USAGE
from tests.conftest import ROOT, WHEELHOUSE


def keys():
    return {(section, key) for section, entries in SCHEMA.items() for key in entries}


def test_every_configuration_key_is_described():
    assert set(manpage.KEY_HELP) == keys()


def test_readme_names_every_configuration_key():
    readme = (ROOT / "README.md").read_text() + (ROOT / "README.sendmail").read_text()
    missing = sorted("[%s] %s" % k for k in keys() if k[1] not in readme)
    assert missing == []


def render_with_man(path, tmp_path):
    proc = subprocess.run(["man", "--warnings", "-l", str(path)],
                          capture_output=True, text=True,
                          env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin",
                               "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": ""})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout


def test_man_renders_the_page_without_warnings(tmp_path):
    page = tmp_path / "mm-handler.8"
    page.write_text(manpage.render(__version__))
    text = render_with_man(page, tmp_path)
    for line in USAGE.partition("\n\n")[0].splitlines():
        assert line.replace("usage: ", "").strip() in text
    for code in (0, 65, 67, 69, 75, 78):
        assert "\n       %d (" % code in text
    assert "delivered_to = yes" in text and "unknown_list = reject" in text


def test_the_wheel_installs_the_page_where_man_finds_it(handler, tmp_path):
    [wheel] = WHEELHOUSE.glob("mm_handler-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert "mm_handler-%s.data/data/share/man/man8/mm-handler.8" % __version__ \
            in z.namelist()
    venv = handler.parent.parent
    installed = venv / "share" / "man" / "man8" / "mm-handler.8"
    assert installed.read_text() == manpage.render(__version__)
    # as man looks it up under a prefix (system-wide: /usr/local/share/man)
    proc = subprocess.run(["man", "-M", str(venv / "share" / "man"), "-w", "8",
                           "mm-handler"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.stdout.strip() == str(installed), proc.stderr
