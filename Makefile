# mm-handler: `make demo` runs a real delivery, `make test` runs the tests.
# Everything is built with Debian's /usr/bin/python3: the mailer runs as an
# unprivileged user, which cannot reach an interpreter under /root.
PY ?= /usr/bin/python3
VENV := .venv
MAILMAN_VENV := .venv-mailman
PIP_QUIET := -q --disable-pip-version-check

.PHONY: test peers test-suite test-portable test-pythons demo bench fuzz wheelhouse clean

# The delivery tests, run again where they must hold on every platform and
# every supported Python.
DELIVERY_TESTS := tests/test_mailman2.py tests/test_mailman2_real.py \
	tests/test_mailman3_delivery.py tests/test_regressions.py tests/test_command.py
UNIT_TESTS := tests/test_address.py tests/test_status.py tests/test_config.py \
	tests/test_log.py tests/test_lmtp.py tests/test_bounce.py tests/test_child.py
# these run the command as the list user, who cannot reach root's pyenv:
# they keep Debian's python3
AS_ANOTHER_USER := tests/test_mailman2_real.py
# each fallback alone is run on Debian's python3 (test-suite, test-portable);
# on the other versions, all fallbacks together ("none of the three")
PYTHONS_SKIP := not pidfd_open and not select.poll
# CPython 3.9 to 3.13 (3.11 is Debian's, the main run); pyenv's builds
PYTHONS ?= 3.9 3.10 3.12 3.13
PYENV_VERSIONS ?= /root/.pyenv/versions

test: peers test-suite test-portable test-pythons

# Sendmail, m4, strace, man and the real Mailman 2 (root; no-op once there)
peers:
	bash tests/peers/install-peers.sh

test-suite: $(VENV)/.ready $(MAILMAN_VENV)/.ready
	$(VENV)/bin/python -m pytest -p no:cacheprovider tests

# the installed command without the Linux-only interfaces (pidfd_open,
# O_TMPFILE, poll, epoll...): FreeBSD, NetBSD, illumos and macOS lack them
test-portable: $(VENV)/.ready $(MAILMAN_VENV)/.ready
	MM_HANDLER_TEST_PORTABLE=1 $(VENV)/bin/python -m pytest -p no:cacheprovider -q \
		$(DELIVERY_TESTS)

# the unit tests in-process and the delivery tests through a command
# installed with each interpreter
test-pythons: $(VENV)/.ready $(MAILMAN_VENV)/.ready
	set -e; for v in $(PYTHONS); do \
	  py=$$(ls -d $(PYENV_VERSIONS)/$$v.*/bin/python3 | sort -V | tail -1); \
	  test -x "$$py" || { echo "no CPython $$v under $(PYENV_VERSIONS)"; exit 1; }; \
	  test -x .venv-py$$v/bin/python || $$py -m venv .venv-py$$v; \
	  .venv-py$$v/bin/pip install $(PIP_QUIET) pytest aiosmtpd hypothesis chardet; \
	  .venv-py$$v/bin/pip download $(PIP_QUIET) --only-binary=:all: -d wheelhouse chardet; \
	  echo "== CPython $$v ($$py)"; \
	  MM_HANDLER_TEST_PYTHON=$$py .venv-py$$v/bin/python -m pytest -p no:cacheprovider \
	    -q -k "$(PYTHONS_SKIP)" $(UNIT_TESTS) $(filter-out $(AS_ANOTHER_USER),$(DELIVERY_TESTS)); \
	done

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
	rm -rf $(VENV) $(MAILMAN_VENV) .venv-py3.* wheelhouse build *.egg-info
