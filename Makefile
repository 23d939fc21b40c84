# The README's two commands. Each one sets up everything it needs from this repository's own
# files on a fresh machine: a virtualenv, the project and its dependencies, the ONNX models.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODELS ?= .models
SHARED ?= ../shared
export EDGEGATE_MODEL_DIR := $(abspath $(MODELS))
export EDGEGATE_SHARED := $(abspath $(SHARED))

.PHONY: test lint demo models install clean pg-server chromium

# Dependencies come from requirements.lock: exact versions, every file checked by its sha256
# (docs/security.md "Dependencies"); the project itself is then installed without resolving again.
$(VENV)/.installed: setup.cfg pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e '.[test,demo,console]'
	touch $@

install: $(VENV)/.installed

$(MODELS)/.built: $(VENV)/.installed $(wildcard models/*.py)
	$(VENV)/bin/gate-models build --out $(MODELS)
	$(VENV)/bin/gate-models verify --dir $(MODELS)
	touch $@

models: $(MODELS)/.built

# The central's tests run on a real PostgreSQL server that they start themselves (initdb +
# pg_ctl on loopback): the server binaries come from Debian's postgresql package when missing.
pg-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -n "$$EDGEGATE_TEST_PG_DSN" ] || \
	  { echo "installing PostgreSQL server binaries (Debian package postgresql)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 || \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# The console's browser tests drive Debian's Chromium through Playwright (which downloads no
# browser of its own): the package is installed when /usr/bin/chromium is missing.
chromium:
	@test -x /usr/bin/chromium || \
	  { echo "installing Chromium (Debian package chromium) for the console's browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: models pg-server chromium
	$(PY) -m pytest -q tests

# Lint (pyflakes, pycodestyle, isort, bugbear; config in pyproject.toml) and types on the library rooms.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# DEMO_ARGS=--keep-console leaves the central and the operations console running afterwards.
DEMO_ARGS ?=
demo: models
	$(PY) -m tools.demo --models $(MODELS) --shared $(SHARED) --out out/demo $(DEMO_ARGS)

clean:
	rm -rf $(MODELS) build *.egg-info
