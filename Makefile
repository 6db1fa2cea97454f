# Two commands do all set-up on a fresh machine: `make figures` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: figures test verify bench lint clean install

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned first: on this machine 2.13.0 is a CPU wheel on disk, and an
# unpinned torch would pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[torch,analysis,bench,dev,hf]"
	touch $(STAMP)

install: $(STAMP)

figures: $(STAMP)
	MPLBACKEND=Agg $(PY) -m analysis figures

test: $(STAMP)
	MPLBACKEND=Agg HYPOTHESIS_PROFILE=ci $(PY) -m pytest

verify: $(STAMP)
	$(PY) -m analysis verify

bench: $(STAMP)
	MPLBACKEND=Agg $(PY) -m analysis bench

lint: $(STAMP)
	$(PY) -m ruff check lowrank_prox analysis tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
