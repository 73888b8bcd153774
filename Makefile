# Set-up and common jobs. `make setup` creates .venv on a fresh machine (PyPI only, no weights).
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; an unpinned `torch` pulls a multi-GB CUDA build. Override for other machines.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Parallel workers (pytest-xdist), one per core up to 4; tests steal work from each other's queues.
XDIST ?= -n logical --maxprocesses 4 --dist worksteal

.PHONY: setup browser test test-all test-fast lint format smoke demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	# torch through pip, which takes a CPU wheel kept on this machine's disk; uv resolves the rest (minutes faster)
	$(PY) -m pip install -q '$(TORCH_SPEC)'
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[torch,data,train,test,dev,demo,video,onnx]'
	touch $@

# Debian's chromium + chromedriver for the web demo's browser test (skipped where they are missing).
browser:
	@if [ ! -x /usr/bin/chromedriver ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	  echo "could not install chromium: the browser test will be skipped"; fi

# The suite CI runs: everything but the nightly tier (tests that repeat others), slowest 15 listed.
test: setup browser
	$(VENV)/bin/pytest -q $(XDIST) -m "not nightly" --durations=15 $(PYTEST_ARGS)

# Everything, the nightly tier included (run before an issue is resolved).
test-all: setup browser
	$(VENV)/bin/pytest -q $(XDIST) --durations=15 $(PYTEST_ARGS)

# The inner loop: everything not marked slow (no training runs, no full-size models, no browser).
test-fast: setup
	$(VENV)/bin/pytest -q $(XDIST) -m "not slow and not nightly" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The built wheel, installed into a fresh venv, runs the demo and segment from an empty directory.
smoke: setup
	.ci/wheel_smoke

demo: setup
	$(VENV)/bin/clipseg-jax demo --out out/demo

clean:
	rm -rf $(VENV) out .pytest_cache
