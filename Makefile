# pm: `make` builds pm.pyz; `make demo` runs the example end to end; `make test` checks (and, as root,
# installs) what the tests need (tests/setup.sh), then runs every test.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
# pytest-xdist workers, each test file on one (TEST_WORKERS=0: all in one process)
TEST_WORKERS ?= 2

.PHONY: all test demo bench clean

all: pm.pyz

pm.pyz: pm.py build_zipapp.py
	$(PYTHON) build_zipapp.py -o pm.pyz

$(VENV)/ok: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -r tests/requirements.txt
	touch $(VENV)/ok

test: $(VENV)/ok pm.pyz
	bash tests/setup.sh
	$(VPY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile tests

demo: $(VENV)/ok pm.pyz
	$(VPY) examples/demo.py

bench: $(VENV)/ok pm.pyz
	$(VPY) bench/all.py

clean:
	rm -rf pm.pyz $(VENV) .pytest_cache tests/__pycache__ demo-work
