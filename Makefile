# Two entry points: `make demo` (the whole pipeline on the embedded default) and `make test`.
# Both create the virtual environment and install everything they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install system-deps test lint unit integration e2e demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[embedded,dev]'
	touch $@

install: $(BIN)/.installed system-deps

# redis-server (embedded Redis) and promtool (Prometheus rule tests) come from Debian packages.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "please install:$$missing (Debian/Ubuntu: apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lithowatch schemas --check

test: lint
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

e2e: install
	$(BIN)/pytest -q tests/e2e

demo: install
	$(BIN)/lithowatch demo

bench: install
	$(BIN)/python bench/pipeline_bench.py

clean:
	rm -rf $(VENV) .lithowatch .pytest_cache .mypy_cache .ruff_cache
