# wcsgw: `make run` starts the gateway with its embedded defaults; `make test` installs everything and runs the suite.

# The interpreter the venv is made from: Debian's python3.11 when the machine has it, else the first python3 on the
# PATH.  Debian's is linked statically and built with profile-guided and link-time optimisation; the gateway's
# per-packet work ran 17-25 % faster on it than on a plain shared-library build of 3.11 (pyenv's default here),
# measured with bench/pipeline.py.
PYTHON ?= $(shell [ -x /usr/bin/python3.11 ] && echo /usr/bin/python3.11 || echo python3)
VENV ?= .venv
ARGS ?=
# Debian packages the end-to-end tests use: the RTMP server, the SIP far end, RTP sources/readers, captures.
APT_PACKAGES = nginx libnginx-mod-rtmp sip-tester ffmpeg tcpdump curl openssl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench debian-packages python-venv-support venv clean

run: venv
	PYTHONPATH=$(CURDIR) $(VENV)/bin/twistd -n --pidfile= wcsgw $(ARGS)

test: debian-packages venv
	PYTHONPATH=$(CURDIR) $(VENV)/bin/trial --temp-directory=$(CURDIR)/_trial_temp tests

# A short side-by-side run of the gateway and one ffmpeg per call (a few minutes; not part of `make test`).
bench: debian-packages venv
	$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/pip install --quiet -e '.[bench]' --config-settings editable_mode=compat
	PYTHONPATH=$(CURDIR) $(VENV)/bin/python bench/run.py --quick $(ARGS)

# The stamp names the interpreter: another PYTHON makes the venv again.
STAMP = $(VENV)/.installed-$(subst /,_,$(PYTHON))

venv: $(STAMP)

$(STAMP): setup.py | python-venv-support
	$(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip 'setuptools>=64' wheel
	$(VENV)/bin/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

# Debian's python3 needs python3-venv for `python3 -m venv`; install it only when it is missing.
python-venv-support:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; }

# Install only what is missing, so repeated runs cost nothing.
debian-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
	  | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

clean:
	rm -rf $(VENV) _trial_temp *.egg-info build twisted/plugins/dropin.cache
