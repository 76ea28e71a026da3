# The two commands: `make run` and `make test`.  Both install what they need every time (fast when done).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install run test lint fmt testenv testenv-up testregistry browser buildah bench clean image

install:
	@VENV=$(VENV) PYTHON=$(PYTHON) scripts/install-venv

run: install
	$(VENV)/bin/shipit serve

test: install testenv testregistry browser buildah
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The local Kubernetes control plane for the tests, built from Go modules into ~/.cache/shipit/testenv.
testenv:
	@if command -v go >/dev/null 2>&1; then scripts/testenv-build; \
	else echo "testenv: go is not installed, Kubernetes tests will be skipped (and fail under CI=true)"; fi

# A real container registry for the registry tests (Debian's docker-registry); skipped when it cannot be
# installed (not root), which fails those tests under CI=true only.
testregistry:
	@scripts/test-registry-install || echo "testregistry: docker-registry unavailable, registry tests will be skipped (and fail under CI=true)"

# Debian's chromium + chromium-driver for the dashboard's browser tests (installed when missing).
browser:
	@scripts/test-browser

# Debian's buildah and busybox-static for the build-from-source tests (installed when missing).
buildah:
	@scripts/test-buildah-install

testenv-up: install testenv
	$(PY) -m tests.testenv.controlplane up

# Every benchmark (bench/run.py); a subset: make bench BENCH="slack_ack replicas"
bench: install testenv
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) -m bench.run $(BENCH)

# The container image (buildah, base from debootstrap; no registry needed), smoke-tested inside.
# SHIPIT_IMAGE_BASE=docker.io/library/python:3.12-slim make image   where a registry is reachable.
image:
	scripts/build-image

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
