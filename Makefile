# Two commands do all set-up on a fresh machine: `make demo` launches the app, `make test` runs the tests.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests need: the data sets (Fashion-MNIST; tuxpaint stamps, opencv-doc photos for Scenes)
# and Chromium for the browser test. Installed when apt-get is there and we are root; skipped otherwise.
APT_PACKAGES := dataset-fashion-mnist tuxpaint-stamps-default opencv-doc chromium

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

.PHONY: install system-deps demo test bench
install: $(BIN)/.installed

system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; \
	else echo "not root or no apt-get: install $(APT_PACKAGES) yourself for the data and browser tests"; fi

demo: install
	$(BIN)/python app/app.py

test: install system-deps
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python bench/speed.py
