# Two entry points: `make demo` (the main job) and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# CPU build of torch by default; `make test CONSTRAINTS=` lets pip choose (e.g. a CUDA build).
CONSTRAINTS ?= constraints/cpu.txt
PIP_C = $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
OUT ?= out/demo

.PHONY: venv demo test test-all clean

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(PIP_C) -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/xrd-nexus-ml demo --out $(OUT)

test: venv
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-all: venv
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) out
