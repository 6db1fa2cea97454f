# Two commands do all set-up on a fresh machine: `make figures` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The exact, tested versions (pyproject.toml gives ranges).
PIPC   := $(PY) -m pip install --quiet -c constraints.txt

.PHONY: figures test docs verify bench lint clean install

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned first: on this machine 2.13.0 is a CPU wheel on disk, and an
# unpinned torch would pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet --upgrade pip
	$(PIPC) "torch==2.13.0"
	$(PIPC) -e ".[torch,analysis,bench,dev,hf,docs]"
	touch $(STAMP)

install: $(STAMP)

figures: $(STAMP)
	MPLBACKEND=Agg $(PY) -m analysis figures

# The suite includes ruff (tests/test_lint.py), the docs build (tests/test_docs.py), every
# README/docs example (tests/test_readme.py) and the sdist/wheel smoke test.
test: $(STAMP)
	MPLBACKEND=Agg HYPOTHESIS_PROFILE=ci $(PY) -m pytest

docs: $(STAMP)
	MPLBACKEND=Agg $(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

verify: $(STAMP)
	$(PY) -m analysis verify

bench: $(STAMP)
	MPLBACKEND=Agg $(PY) -m analysis bench

lint: $(STAMP)
	$(PY) -m ruff check lowrank_prox analysis tests notebooks docs

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis docs/_build docs/auto build dist
