# Quick start: `make demo` runs the embedded-default job, `make test` the test suite.
# Both create .venv (Python 3.11+) and install the package with its test extras on first use;
# `make test` also builds .venv-xm for the XManager launcher test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo
# launch/xm_launch.py's own environment: xmanager pins protobuf apart from the training stack.
XM_VENV ?= .venv-xm
# torch is only the transformers reference of the HF parity tests. 2.13.0 is the CPU build
# on this project's machines (a plain `torch` from the registry pulls several GiB of CUDA).
TORCH ?= torch==2.13.0

.PHONY: install xm-venv demo test test-all clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

$(XM_VENV)/.installed: launch/requirements-xm.txt
	test -x $(XM_VENV)/bin/python || $(PYTHON) -m venv $(XM_VENV)
	$(XM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(XM_VENV)/bin/python -m pip install --quiet -r launch/requirements-xm.txt
	touch $@

xm-venv: $(XM_VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m guide_jax.demo --config=experiments/demo.py --workdir=$(WORKDIR)

test: $(VENV)/.installed $(XM_VENV)/.installed
	$(PY) -m pytest -q

test-all: $(VENV)/.installed $(XM_VENV)/.installed
	$(PY) -m pytest -q -m ''

clean:
	rm -rf $(VENV) $(XM_VENV) workdirs *.egg-info
