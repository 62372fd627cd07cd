# The two commands of a fresh machine:
#   make demo   train, export, build the tile database and replay flights on the bundled real imagery (CPU)
#   make test   the test suite (what CI runs)
# Both create .venv and install the project into it first (once; again when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
# torch is pinned for a reproducible CPU install; on a desktop with CUDA pick your build, e.g.
#   make TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu126" install
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY = $(VENV)/bin/python

.PHONY: install demo test test-all lint clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[all]"
	touch $@

demo: install
	$(PY) -m tools.demo $(DEMO_ARGS)

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "not gpu"

lint: install
	$(PY) -m ruff check .

clean-demo:
	rm -rf demo-out
