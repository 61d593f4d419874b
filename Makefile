# Shortcuts for the scripts in scripts/ (the README's commands work without make).
.PHONY: setup demo test lint asan clang fuzz bench clean

setup:
	bash scripts/bootstrap.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

lint:
	python3 -m ruff check .

# Native tests under AddressSanitizer + UndefinedBehaviorSanitizer, in a separate build tree.
asan:
	bash scripts/asan.sh

# The extension built with clang (warnings are errors) into build/clang, then native tests against it.
clang:
	bash scripts/build_clang.sh

# libFuzzer (ASan+UBSan) + Hypothesis fuzzing of the untrusted-bytes parsers, FUZZ_SECONDS per harness
# (default 600); see tests/fuzz/README.md.
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

bench:
	python3 benchmarks/fetch_bench.py --json results/fetch_bench.json
	python3 benchmarks/index_bench.py

clean:
	rm -rf build *.egg-info hivedata/_native*.so
