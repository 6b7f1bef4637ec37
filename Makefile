# Two commands on a fresh machine: `make demo` (the main job on embedded defaults) and `make test`.
# Both create .venv on first use. System packages (broker, Prometheus, PortAudio, PulseAudio) for
# the real-parts tests: `sudo make system-deps` (Debian/Ubuntu); tests that need them skip without.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The CPU build of torch; installed first so that `.[train]`'s range never pulls a CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: venv demo test lint format system-deps install bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[train,dev,bench]"
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(VENV)/bin/sonitor demo

test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -ra --durations=15

# ruff; the layering contracts of pyproject.toml ([tool.importlinter]: monitor never imports torch,
# training or export); declared vs imported dependencies (deptry, tests/ and benchmarks/ included);
# the types of monitor/ (mypy)
lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo
	$(VENV)/bin/deptry monitor training export tests benchmarks
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-upgrade \
	    mosquitto mosquitto-clients prometheus pulseaudio pulseaudio-utils \
	    libasound2-plugins libportaudio2 libsndfile1 openssl systemd strace shellcheck
	# Node.js for the Grafana schema check; NodeSource's nodejs bundles npm and conflicts with
	# Debian's npm package, so only install what is missing
	command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends --no-upgrade nodejs npm

# The runtime as a systemd service (run as root): user, /opt/sonitor venv without torch,
# /etc/sonitor/config.yaml (kept if present), the unit. INSTALL_ARGS=--dry-run shows the steps.
install:
	sh deploy/install.sh $(INSTALL_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
