# Entry points. `make demo` runs the main job on the embedded default; `make test` runs the tests.
# Both set the machine up first (scripts/bootstrap.sh installs only what is missing).
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: setup demo test lint asan bench clean

setup:
	bash scripts/bootstrap.sh

demo: setup
	$(PYTHON) -m hivedata demo

test: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .

# Native tests under AddressSanitizer + UndefinedBehaviorSanitizer, in a separate build tree.
asan:
	bash scripts/asan.sh

bench:
	$(PYTHON) benchmarks/fetch_bench.py --json results/fetch_bench.json

clean:
	rm -rf build *.egg-info hivedata/_native*.so
