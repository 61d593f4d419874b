def pytest_configure(config):
    config.addinivalue_line("markers", "fuzz: Hypothesis fuzzing, run by scripts/fuzz.sh (HIVEDATA_FUZZ_SECONDS)")
