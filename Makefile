# Developer entry points. `make test` is the README's test command; CI (.ci/run) runs exactly it.
SHELL := /bin/bash
VENV ?= .workflow/venv
PY := $(VENV)/bin/python
# the CPU build is what tests need; on Linux x86-64 a bare `torch` from PyPI is a multi-GB CUDA build:
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# takes torch from PyTorch's CPU wheel index (empty = pip's own index, e.g. a local wheelhouse)
TORCH ?= torch==2.13.0
TORCH_INDEX_URL ?=
export TORCH_INDEX_URL

# test files run side by side (a file's tests on one worker, so its module fixtures are set up once):
# most of a test's time is waiting on real processes, so more workers than cores pays
PYTEST_WORKERS ?= 3

.PHONY: test lint pytest demo bench

$(VENV)/.test-stamp: pyproject.toml
	python3 -m venv $(VENV)
	$(if $(TORCH_INDEX_URL),$(PY) -m pip install --quiet --disable-pip-version-check --index-url "$(TORCH_INDEX_URL)" "$(TORCH)")
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" numpy -e ".[test]"
	touch $@

lint: $(VENV)/.test-stamp
	shellcheck infra_scripts/*.sh examples/*.sh .ci/run
	$(PY) -m ruff check helpers tests bench examples
	$(PY) -m mypy helpers

pytest: $(VENV)/.test-stamp
	WORKFLOW_VENV=$(VENV) $(PY) -m pytest -q --durations=25 -n $(PYTEST_WORKERS) --dist loadfile

test: lint pytest

demo:
	examples/demo.sh

BENCH_SUMMARY ?= /tmp/workflow-bench-$(shell id -u).jsonl

bench: $(VENV)/.test-stamp
	rm -f $(BENCH_SUMMARY)
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/latency.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/failure_detection.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/sweep_makespan.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/sweep_status_10k.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/fetch_all.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/tmux_control.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/trainer_throughput.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/report_100.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/slurm_submit.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/slurm_status.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/slurm_makespan.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/tracking_lag.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/tracking_overhead.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/flow_overhead.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/watch_refresh.py
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/tracking_throughput.py
	BENCH_SUMMARY=$(BENCH_SUMMARY) $(PY) bench/summary.py
