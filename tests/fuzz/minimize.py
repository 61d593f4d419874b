"""Shrinks an input that breaks a Python-side contract and files it under tests/fuzz/crashes/.

    python tests/fuzz/minimize.py <harness> <input file> <name> "<reason>" [--fixed] [--no-shrink]

Greedy: drops ever smaller chunks, then zeroes bytes, keeping the same violation signature
(--no-shrink: file it as it is, for hangs, where every try costs the time limit). Writes
crashes/<harness>-<name>.bin and a .json beside it: harness, signature, status ("open" unless --fixed),
reason, the message and traceback. The replay test (tests/unit/test_fuzz_replay.py) runs every reproducer
and skips only those marked open. (libFuzzer crashes: `build/fuzz/<harness>_fuzzer -minimize_crash=1 ...`.)
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz import contracts  # noqa: E402


def signature(harness: str, data: bytes) -> contracts.ContractViolation | None:
    try:
        contracts.CHECKS[harness](data)
    except contracts.ContractViolation as v:
        return v
    return None


def shrink(harness: str, data: bytes, sig: str) -> bytes:
    def same(d: bytes) -> bool:
        v = signature(harness, d)
        return v is not None and v.signature == sig

    chunk = max(1, len(data) // 2)
    while chunk >= 1:
        i = 0
        while i < len(data):
            cand = data[:i] + data[i + chunk:]
            if same(cand):
                data = cand
            else:
                i += chunk
        chunk //= 2
    return data


def main() -> None:
    args = [a for a in sys.argv[1:] if a not in ("--fixed", "--no-shrink")]
    harness, src, name, reason = args
    data = Path(src).read_bytes()
    v = signature(harness, data)
    if v is None:
        sys.exit(f"{src} keeps the {harness} contract: nothing to file")
    small = data if "--no-shrink" in sys.argv else shrink(harness, data, v.signature)
    v = signature(harness, small)
    contracts.CRASHES.mkdir(exist_ok=True)
    base = contracts.CRASHES / f"{harness}-{name}"
    base.with_suffix(".bin").write_bytes(small)
    meta = {"harness": harness, "signature": v.signature, "status": "fixed" if "--fixed" in sys.argv else "open",
            "reason": reason, "message": str(v),
            "traceback": "".join(traceback.format_exception(v.__cause__)) if v.__cause__ else ""}
    base.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{base}.bin: {len(data)} -> {len(small)} bytes, {v}")


if __name__ == "__main__":
    main()
