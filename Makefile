# The two commands of the README:
#   make demo   - install everything into .venv and run the main job: the whole pipeline on the embedded
#                 demo corpus (CPU) - validate, snapshot, pretrain, finetune, evaluate, register, promote
#   make test   - install everything into .venv and run the test suite
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline and quiet: nothing may reach the internet at run time.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true \
       PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false

.PHONY: setup demo test test-slow lint lock clean

$(BIN)/r2d2: requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv
	@# --find-links: a local CPU torch wheel where the machine provides one (PIP_FIND_LINKS).
	$(BIN)/uv pip install --python $(BIN)/python -q -r requirements.lock $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))
	$(BIN)/uv pip install --python $(BIN)/python -q --no-deps -e .
	@touch $@

setup: $(BIN)/r2d2

demo: setup
	$(BIN)/r2d2 pipeline run

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check r2d2 flows tests benchmarks

# Re-resolve exact versions after editing requirements.in.
lock:
	$(BIN)/uv pip compile requirements.in -o requirements.lock --python-version 3.11 --no-header $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

clean:
	rm -rf $(VENV) runs .pytest_cache

# Benchmarks (benchmarks/README.md): shard writing against img2dataset (in its own venv) and GX
# validation against plain pandas; each writes benchmarks/results/*.json and the BENCHMARKS.md table.
.PHONY: bench
bench: setup
	$(BIN)/python benchmarks/bench_shards.py
	$(BIN)/python benchmarks/bench_validation.py
