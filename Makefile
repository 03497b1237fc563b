# mm-handler: `make demo` runs a real delivery, `make test` runs the tests.
# Everything is built with Debian's /usr/bin/python3: the mailer runs as an
# unprivileged user, which cannot reach an interpreter under /root.
PY ?= /usr/bin/python3
VENV := .venv
MAILMAN_VENV := .venv-mailman
PIP_QUIET := -q --disable-pip-version-check

.PHONY: test demo bench fuzz wheelhouse clean

test: $(VENV)/.ready $(MAILMAN_VENV)/.ready
	$(VENV)/bin/python -m pytest -p no:cacheprovider tests

demo: $(VENV)/.ready $(MAILMAN_VENV)/.ready
	$(VENV)/bin/python demo/demo.py

bench: $(VENV)/.ready $(MAILMAN_VENV)/.ready
	cd bench && ../$(VENV)/bin/python startup.py
	cd bench && ../$(VENV)/bin/python memory.py
	cd bench && ../$(VENV)/bin/python throughput.py
	$(VENV)/bin/python bench/sendmail_queue.py

fuzz: $(VENV)/.ready
	$(VENV)/bin/python bench/fuzz.py

# test tools + a wheelhouse holding mm-handler and its dependency, so that
# tests can pip-install the package as a user would, without the network
wheelhouse $(VENV)/.ready: setup.py pyproject.toml mm_handler/*.py mm_handler/templates/* bin/mm-handler
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) pytest aiosmtpd hypothesis chardet setuptools wheel
	rm -rf wheelhouse build *.egg-info
	$(VENV)/bin/pip wheel $(PIP_QUIET) --no-build-isolation -w wheelhouse . chardet
	rm -rf build *.egg-info
	touch $(VENV)/.ready

# a real Mailman 3.3.10 from PyPI, with mm-handler in it for the [mta] plug-in
$(MAILMAN_VENV)/.ready: $(VENV)/.ready
	test -x $(MAILMAN_VENV)/bin/python || $(PY) -m venv $(MAILMAN_VENV)
	$(MAILMAN_VENV)/bin/pip install $(PIP_QUIET) mailman==3.3.10
	$(MAILMAN_VENV)/bin/pip install $(PIP_QUIET) --no-deps --force-reinstall wheelhouse/mm_handler-*.whl
	touch $(MAILMAN_VENV)/.ready

clean:
	rm -rf $(VENV) $(MAILMAN_VENV) wheelhouse build *.egg-info
