# Developer entry points. `make test` does all set-up on a fresh Debian / Raspberry Pi OS machine:
# Debian packages the tests need, a virtual environment with every extra, then the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEB_TEST_PACKAGES := python3-venv mosquitto openssl shellcheck systemd ocl-icd-libopencl1 pocl-opencl-icd clinfo
PYTEST_ARGS ?=

.PHONY: test deps venv lint typecheck check clean

deps:
	@missing=""; for p in $(DEB_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[onnx,tflite,convert,coreml,dev]'
	touch $@

venv: $(VENV)/.installed

test: deps venv
	KATAGO_EDGE_MODELS=$${KATAGO_EDGE_MODELS:-../shared/models} $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check agent tests
	$(VENV)/bin/ruff format --check agent tests

typecheck: venv
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
