# Two commands do all set-up on a fresh machine: `make demo` launches the app, `make test` runs the tests.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

.PHONY: install demo test bench
install: $(BIN)/.installed

demo: install
	$(BIN)/python app/app.py

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python bench/speed.py
