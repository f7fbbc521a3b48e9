# Developer entry points. `make test` is the README's test command; CI (.ci/run) runs exactly it.
SHELL := /bin/bash
VENV ?= .workflow/venv
PY := $(VENV)/bin/python
# the CPU build is what tests need; on Linux x86-64 a bare `torch` is a multi-GB CUDA build
TORCH ?= torch==2.13.0

.PHONY: test lint pytest demo bench

$(VENV)/.test-stamp: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" numpy -e ".[test]"
	touch $@

lint: $(VENV)/.test-stamp
	shellcheck infra_scripts/*.sh examples/*.sh .ci/run
	$(PY) -m ruff check helpers tests bench examples
	$(PY) -m mypy helpers

pytest: $(VENV)/.test-stamp
	WORKFLOW_VENV=$(VENV) $(PY) -m pytest -q

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
	-BENCH_SUMMARY=$(BENCH_SUMMARY) WORKFLOW_VENV=$(VENV) $(PY) bench/trainer_throughput.py
	BENCH_SUMMARY=$(BENCH_SUMMARY) $(PY) bench/summary.py
