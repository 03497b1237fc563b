from setuptools import setup

setup(
    name="mm-handler",
    version="0.1.0",
    description="Sendmail mailer that hands list mail to GNU Mailman 2 or 3",
    packages=["mm_handler"],
    package_data={"mm_handler": ["templates/*.txt"]},
    python_requires=">=3.9",
    install_requires=["chardet"],
    extras_require={"mailman3": ["mailman>=3.3"]},
    # the mm-handler command: a plain script, see bin/mm-handler
    scripts=["bin/mm-handler"],
)
