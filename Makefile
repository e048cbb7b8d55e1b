# The two commands a fresh Debian 12 machine needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GUEST := var/guest
DEMO_CONFIG := deploy/demo/vdi.toml
export VDI_CONFIG ?= $(DEMO_CONFIG)

.PHONY: setup system venv web-deps translations messages guest demo demo-stop test lint unit bench clean

setup: system venv web-deps translations guest

system:
	@deploy/bootstrap.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev,bench]'  # bench too: mypy checks bench/ against its real imports
	@touch $(STAMP)

venv: $(STAMP)

web/node_modules/.package-lock.json: web/package.json
	@cd web && npm install --no-audit --no-fund --loglevel=error
	@touch $@

# The page scripts, bundled with noVNC into one file per page (web/assets.py serves them).
web/static/dist/.built: web/node_modules/.package-lock.json $(wildcard web/static/*.js)
	@cd web && npm run --silent build
	@touch $@

web-deps: web/static/dist/.built

translations: venv
	@$(VENV)/bin/pybabel compile -d web/locale -D messages 2>&1 | grep -v "^compiling catalog" || true

# After changing user-facing strings: refresh the catalogs, then translate the new
# entries in web/locale/zh_CN (tests/web/test_i18n.py fails on any left untranslated).
messages: venv
	@$(VENV)/bin/pybabel extract -F babel.cfg -k N_ -k error:4 --sort-output --no-location \
		-o web/locale/messages.pot . >/dev/null
	@$(VENV)/bin/pybabel update -i web/locale/messages.pot -d web/locale -D messages

guest:
	@deploy/guest/build-image.sh $(GUEST)

demo: setup
	@deploy/demo/start.sh

demo-stop:
	@deploy/demo/stop.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: setup lint
	$(VENV)/bin/pytest -q -ra

# Benchmarks (docs/benchmarks.md): BENCH_ARGS='--quick' for a smoke run, or section names.
bench: setup
	@$(VENV)/bin/pip install -q -e '.[dev,bench]'
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf var/demo var/test
