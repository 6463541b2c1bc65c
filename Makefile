# Developer entry points. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The hot path compiled by mypyc, with a copy of the package's sources: an importable tree
# kept apart from the source tree (docs/compiled.md).
COMPILED ?= $(VENV)/compiled

.PHONY: venv system-packages lint test test-fast test-integration test-vm demo image
.PHONY: compiled test-fast-compiled
.PHONY: bench bench-iscsi conformance

$(BIN)/python:
	$(PY) -m venv $(VENV)

venv: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,compile]'

# Debian packages of the VM tier (qemu, mmdebstrap), the integration tier (dbus-daemon,
# iproute2, openssl), the image build and the benchmarks. Needs root only when one is
# missing; with everything installed it checks and returns in a fraction of a second.
system-packages:
	bash .ci/install-system-packages

lint: venv
	$(BIN)/ruff check .

# All three tiers: unit/property, host integration, real kernel in VMs (whose image runs
# the compiled hot path); then the fast tier again on the compiled hot path.
test: venv system-packages
	$(BIN)/python -m pytest --durations=20 tests/unit tests/integration tests/vm
	$(MAKE) --no-print-directory test-fast-compiled

test-fast: venv
	$(BIN)/python -m pytest -q tests/unit

# The hot path compiled for this venv's Python (about 30 s; only the .py copies are
# refreshed when the hot modules did not change).
compiled: venv
	$(BIN)/python tools/compile.py tree --dest $(COMPILED)

# The fast tier on the compiled form: the compiled tree comes first on sys.path, and
# tests/unit/test_compiled_form.py checks that it is what was imported.
test-fast-compiled: compiled
	APPLIANCE_EXPECT_FORM=compiled PYTHONPATH=$(abspath $(COMPILED)) \
		$(BIN)/python -m pytest -q -o pythonpath="$(abspath $(COMPILED)) ." tests/unit

test-integration: venv system-packages
	$(BIN)/python -m pytest tests/integration

test-vm: venv system-packages
	$(BIN)/python -m pytest tests/vm

# Main job: the appliance pair with a replicated disk and an application host, configured
# through targetcli (installs, builds the image, boots VMs). `make demo DEMO_ARGS=--check`
# verifies it end to end (byte-for-byte DR copy, promoted copy mounted) and powers off.
DEMO_ARGS ?=
demo: venv system-packages
	$(BIN)/python -m vmlab.demo $(DEMO_ARGS)

# Appliance image alone (cached under /var/cache/dr-appliance; see image/README.md).
image: venv system-packages
	$(BIN)/python image/build.py

# Benchmarks: tables plus a final JSON line, ratios against references in the same run.
bench: venv system-packages
	$(BIN)/python bench/journal --quick
	$(BIN)/python bench/ring
	$(BIN)/python bench/replication --wan
	$(BIN)/python bench/iscsi_compare --quick --rounds 3

# iSCSI alone: our handler, LIO fileio and tcmu-runner's file handler in one VM.
bench-iscsi: venv system-packages
	$(BIN)/python bench/iscsi_compare --quick --rounds 3

# libiscsi iscsi-test-cu against the three back ends in one VM (~50 min under load).
conformance: venv system-packages
	$(BIN)/python bench/iscsi_compare --quick --conformance --keep-logs logs/conformance
