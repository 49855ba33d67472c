# Two entry points: `make demo` (the whole pipeline on the embedded default) and `make test`.
# Both create the virtual environment and install everything they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install system-deps test lint unit integration e2e demo bench bench-real default-model clean

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

# Real layouts: the shipped model, its parts and the baselines on SKY130 cells never trained on.
bench-real: install
	$(BIN)/python bench/real_layout_bench.py

# The shipped encoder (shared/model/default_model), remade from scratch: generated families plus the
# SKY130 cell library (split by cell kind), judged at the end on the cells it never saw.
DEFAULT_DATA := .lithowatch/default-model
DEFAULT_TRAIN_ARGS := --objective contrastive --backbone resnet18-w16 --epochs 8 --seed 0
default-model: install
	rm -rf $(DEFAULT_DATA)
	$(BIN)/lithowatch dataset make --n 600 --variants 5 --max-shift-px 16 --seed 11 --out $(DEFAULT_DATA)/generated
	$(BIN)/lithowatch dataset from-layout toolkit/litho/cells/sky130_fd_sc_hd --rows --layer li1=67/20 \
	  --layer licon=66/44 --layer poly=66/20 --shrink 0.37 --variants 6 --eval-share 0.3 --out $(DEFAULT_DATA)/sky130
	$(BIN)/lithowatch train --dataset $(DEFAULT_DATA)/generated --dataset $(DEFAULT_DATA)/sky130/train \
	  --eval-dataset $(DEFAULT_DATA)/sky130/eval $(DEFAULT_TRAIN_ARGS) --recipe "make default-model" \
	  --out shared/model/default_model

clean:
	rm -rf $(VENV) .lithowatch .pytest_cache .mypy_cache .ruff_cache
