# Cappuccino. `make demo` and `make test` work on a fresh machine (they build .venv first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= -r requirements-torch.txt

PREFIX ?= /opt/cappuccino

.PHONY: venv install uninstall install-units demo test bench lint clean

$(BIN)/cappuccino: setup.cfg pyproject.toml requirements-torch.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build first: a looser requirement resolved alone may pull a multi-GB CUDA build
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
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

# as root: virtualenv under $(PREFIX), units, example config (never overwriting), user
install: venv
	$(BIN)/cappuccino install --prefix $(PREFIX)

install-units: venv
	$(BIN)/cappuccino install --prefix $(PREFIX) --no-venv --no-user

uninstall: venv
	$(BIN)/cappuccino install --prefix $(PREFIX) --uninstall

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
