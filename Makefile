# Two commands are all a new user needs: `make train` and `make test`.
# Both create .venv and install wmjax into it when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

ENV    ?= CartPole-v1
PRESET ?= size1m
STEPS  ?= 50000
SEEDS  ?= 1
LOGDIR ?=
# pytest processes for `make test` (pytest-xdist; each test file runs whole in one of them, so
# module fixtures are built once). The suite is mostly XLA compiling, which keeps about 1.4 of
# 2 cores busy in one process; two processes cut it by about a quarter on 2 cores.
TEST_WORKERS ?= 2

# XLA's CPU buffers on transparent huge pages: ~20% faster updates (wmjax/hugepages.py).
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: train test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev,craftax,gymnasium]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m wmjax train --env $(ENV) --preset $(PRESET) --steps $(STEPS) --seeds $(SEEDS) $(if $(LOGDIR),--logdir $(LOGDIR),)

test: $(STAMP)
	$(PY) -m pytest -v --durations=20 -n $(TEST_WORKERS) --dist loadfile tests

bench: $(STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/learning.py

clean:
	rm -rf $(VENV) runs .pytest_cache
