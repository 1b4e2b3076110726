# One venv at the repo root, pinned by constraints.txt; every target installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := torch,jax,dev,bench,tensorboard,mlflow,dashboard

.PHONY: run test bench install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade -c constraints.txt pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/sweep run sweeps/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) -m pytest tests/bench -p no:cacheprovider -s --override-ini="addopts=" --timeout=3600

clean:
	rm -rf $(VENV) runs .pytest_cache
