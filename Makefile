# kvmplat: `make demo` and `make test` set everything up on a fresh machine (Debian packages, .venv/, the compiled
# vCPU loop) and then run. See README.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvmplat-installed
DEBS := scripts/debian-packages.txt $(wildcard mk/*.debs)
PROTO := $(wildcard proto/kvmplat/v1/*.proto)

.PHONY: all demo test lint typecheck unit proto proto-check deps clean
all: $(STAMP)

deps:
	@scripts/ensure-debs $(DEBS)

$(STAMP): pyproject.toml setup.py agent/kvm/cbuild.py $(wildcard agent/kvm/*.c agent/kvm/*.S) $(DEBS)
	@scripts/ensure-debs $(DEBS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/kvmplat demo

# Regenerates the committed stubs under gen/ from proto/ (grpcio-tools is pinned in pyproject.toml).
proto: $(STAMP)
	@scripts/gen-proto $(PY) gen

proto-check: $(STAMP)
	@scripts/gen-proto $(PY) $(VENV)/proto-check >/dev/null
	@diff -r -x __pycache__ -x py.typed -x __init__.py gen/kvmplat/v1 $(VENV)/proto-check/kvmplat/v1 >/dev/null || \
	  { echo "gen/ is stale: run 'make proto' and commit"; exit 1; }

lint: $(STAMP)
	$(VENV)/bin/ruff check agent client lab tests bench libvirt-hooks/qemu
	$(VENV)/bin/ruff format --check agent client lab tests bench

typecheck: $(STAMP)
	@scripts/typecheck $(VENV)

test: $(STAMP) proto-check lint typecheck
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info agent/kvm/_kvmc*.so

-include mk/*.mk
