# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite, lab included).
PY := .venv/bin/python
KVMKIT := .venv/bin/kvmkit
PYTEST := $(PY) -m pytest

.PHONY: setup demo test test-host test-lab test-lab-extended lint docs bench clean

setup:
	@scripts/setup.sh

demo: setup
	$(KVMKIT) demo

lint: setup
	.venv/bin/ruff check src tests bench

test: setup lint test-host test-lab

test-host:
	scripts/pytest-tier $(PYTEST) -q -m "not lab" tests

# Every lab test in one lab boot. If the lab machine itself fails (kvmkit lab exits 120: its kernel locked up, or
# it reset), scripts/pytest-tier runs the tier once more in a fresh lab; failed tests are never retried.
test-lab:
	scripts/pytest-tier $(KVMKIT) lab --timeout 1500 -- $(PYTEST) -q --color=no -p no:cacheprovider \
		-m lab tests

# Only the disk and network guests (marked `extended`), e.g. while working on them.
test-lab-extended:
	scripts/pytest-tier $(KVMKIT) lab --timeout 2700 -- $(PYTEST) -q --color=no -p no:cacheprovider \
		-m "lab and extended" tests

docs: setup
	$(PY) -m kvmkit.monitor.docgen > docs/qmp.md

bench: setup
	$(KVMKIT) lab --timeout 3000 -- $(PY) -m bench.run_all

clean:
	rm -rf .venv .pytest_cache .ruff_cache
