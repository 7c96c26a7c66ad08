# Vigil: the two commands that matter are `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup tools test test-fast lint demo bench bench-tep bench-throughput kafka-start kafka-stop clean

# A virtual environment with the trainer, the detector, the GPU libraries and the dev tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,gpu,dev]'
	touch $@

# System tools the tests use for real: promtool, kcat, systemd-analyze, Java/Maven, Kafka jars.
tools: $(VENV)/.installed
	scripts/install-tools
	scripts/kafka-dev fetch
	scripts/install-deploy-tools

setup: $(VENV)/.installed tools

test: setup lint
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not kafka and not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

demo: setup
	$(BIN)/python scripts/demo.py

bench-tep: $(VENV)/.installed
	$(BIN)/python bench/tep.py

bench-throughput: $(VENV)/.installed tools
	$(BIN)/pip install -q -e '.[train,gpu,dev,bench]'
	$(BIN)/python bench/throughput.py

kafka-start: tools
	scripts/kafka-dev start

kafka-stop:
	scripts/kafka-dev stop

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
