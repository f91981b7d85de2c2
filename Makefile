# cas: every target installs what it needs into .venv, from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast bench lint torture clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

## make run: the main job on an embedded default (a local store in ./demo-store)
run: $(STAMP)
	$(PY) -m cas.cli.demo

## make browser: Debian's chromium for the page tests (apt-get, when root and missing);
## when it cannot be had, tests/test_serve_page.py fails saying so (it never skips)
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && \
	  { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q chromium || \
	    { apt-get update -q && apt-get install -y -q chromium; }; }; } || \
	  echo "make browser: $(CHROMIUM) is missing and could not be installed (as root: apt-get install -y chromium)" >&2

## make test: the whole suite, real servers included
test: $(STAMP) node_modules/.installed browser
	$(PY) -m pytest -q

## make bench: throughput beside the limits and the peers, as ratios (about 30 minutes);
## make bench-quick: every benchmark at small sizes (a smoke run, a few minutes each).
## The peers git and restic come from apt when root and missing; else they are reported missing.
.PHONY: bench-quick bench-peers
bench: $(STAMP) bench-peers
	$(PY) -m bench
bench-quick: $(STAMP) bench-peers
	$(PY) -m bench --quick
bench-peers:
	@for p in git restic; do command -v $$p >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q $$p || \
	    { apt-get update -q && apt-get install -y -q $$p; }; }; } || \
	  echo "make bench: $$p is missing and could not be installed (as root: apt-get install -y $$p)" >&2; done

## make lint: ruff, mypy strict on the packages, import-linter
lint: $(STAMP)
	$(VENV)/bin/ruff check cas refs catalog tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## make torture: the long reliability suite
torture: $(STAMP) node_modules/.installed
	CAS_TORTURE=full $(PY) -m pytest -q -n 0 tests/test_torture*.py

clean:
	rm -rf $(VENV) node_modules demo-store .pytest_cache .hypothesis
