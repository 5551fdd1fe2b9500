# One-command run and test on a fresh machine: both bootstrap .venv from nothing.
# The first interpreter that actually runs and is 3.11+ (pyenv shims exist for versions not selected).
PYTHON ?= $(shell for p in python3 python3.11 python3.12 python3.13; do $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-faults lint bench lock clean screenshots

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "pdbridge needs Python 3.11 or newer on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# With no Pipedrive credentials (PIPEDRIVE_CLIENT_ID or PIPEDRIVE_API_TOKEN, in the environment or
# in .env), `make run` starts `pdbridge sandbox`: the service with a local Pipedrive and Telegram.
PIPEDRIVE_CONFIGURED = $(or $(PIPEDRIVE_CLIENT_ID),$(PIPEDRIVE_API_TOKEN),$(shell grep -sqE '^[[:space:]]*(export[[:space:]]+)?PIPEDRIVE_(CLIENT_ID|API_TOKEN)[[:space:]]*=[[:space:]]*[^[:space:]]' .env && echo yes))

run: $(STAMP)
	$(BIN)/pdbridge $(if $(PIPEDRIVE_CONFIGURED),run,sandbox)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fault suite at full length (more messages, longer outages); prints one row per fault and
# fails if any row lost, doubled or reordered a message or moved a status backwards.
test-faults: $(STAMP)
	PDBRIDGE_FAULTS=full $(BIN)/python -m pytest tests/faults -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The browser tests (Debian's chromium), writing step screenshots to tests/artifacts/screenshots/
# and the README's images to docs/screenshots/.
screenshots: $(STAMP)
	PDBRIDGE_README_SCREENSHOTS=1 $(BIN)/python -m pytest -m browser tests/browser $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The hash-pinned lock files the container image installs from (deploy/Dockerfile). Rerun after
# any change to the dependencies in pyproject.toml; tests/deploy/test_lock.py says when it is due.
LOCK := $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 --custom-compile-command "make lock"
lock: $(STAMP)
	$(LOCK) pyproject.toml -o deploy/requirements.lock
	$(LOCK) deploy/build-requirements.in -o deploy/build-requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
