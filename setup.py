import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


sys.path.insert(0, HERE)
from mm_handler import __version__  # noqa: E402


def manual_page():
    """mm-handler(8), made from the program's own tables (mm_handler/manpage.py)
    into build/, for share/man/man8 in the wheel."""
    from mm_handler.manpage import render
    out = os.path.join("build", "man", "mm-handler.8")
    os.makedirs(os.path.dirname(os.path.join(HERE, out)), exist_ok=True)
    with open(os.path.join(HERE, out), "w", encoding="utf-8") as f:
        f.write(render(__version__))
    return out


setup(
    name="mm-handler",
    version=__version__,
    description="Sendmail mailer that hands list mail to GNU Mailman 2 or 3",
    packages=["mm_handler"],
    package_data={"mm_handler": ["templates/*.txt"]},
    python_requires=">=3.9",
    install_requires=["chardet"],
    extras_require={"mailman3": ["mailman>=3.3"]},
    # the mm-handler command: a plain script, see bin/mm-handler
    scripts=["bin/mm-handler"],
    # installed as PREFIX/share/man/man8/mm-handler.8, where man finds it
    data_files=[("share/man/man8", [manual_page()])],
)
