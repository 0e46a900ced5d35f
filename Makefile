# Cappuccino. `make demo` and `make test` work on a fresh machine (they build .venv first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

PREFIX ?= /opt/cappuccino

.PHONY: venv install uninstall install-units demo test bench lint clean lock lock-newest config-docs

$(BIN)/cappuccino: setup.cfg pyproject.toml requirements-test.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# every version and hash CI tested, the CPU build of torch among them, before the package
	# (a looser torch requirement resolved alone may pull a multi-GB CUDA build)
	$(BIN)/pip install -q --require-hashes -r requirements-test.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

venv: $(BIN)/cappuccino

demo: venv
	$(BIN)/cappuccino demo

test: venv
	$(BIN)/python -m pytest -q tests

bench: venv
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: venv
	$(BIN)/pip install -q ruff && $(BIN)/ruff check cappuccino_core daemons tests benchmarks

# config/cappuccino.yaml and docs/config.schema.json from the settings' docs in config.py
config-docs: venv
	$(BIN)/python -m cappuccino_core.common.config_docs

# as root: virtualenv under $(PREFIX), units, example config (never overwriting), user
install: venv
	$(BIN)/cappuccino install --prefix $(PREFIX)

install-units: venv
	$(BIN)/cappuccino install --prefix $(PREFIX) --no-venv --no-user

uninstall: venv
	$(BIN)/cappuccino install --prefix $(PREFIX) --uninstall

# the lock files from setup.cfg's ranges (tools/lock.sh; `--upgrade` takes the newest inside them)
lock: venv
	tools/lock.sh

# which newer versions setup.cfg's ranges admit than the lock holds (reports; changes nothing)
lock-newest: venv
	tools/lock.sh --newest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
