"""Replays the fuzzing seed corpora (tests/fuzz/corpus/) and the filed reproducers (tests/fuzz/crashes/)
through the Python-visible entry points: hivedata._native.decode_image (the decode harness's input layout),
read_tar_members, ShardIndex.from_bytes, the labels parsers and GcsJsonClient.list_pages against a loopback
server. Each must keep its contract (tests/fuzz/contracts.py): a result or the hivedata error it documents.
Reproducers marked "open" in their .json are skipped with its reason; fixed ones must pass."""

from __future__ import annotations

import json

import pytest

from tests.fuzz import contracts

CORPUS = sorted(p for p in contracts.CORPUS.glob("*/*") if p.is_file())
CRASHES = sorted(contracts.CRASHES.glob("*.bin")) if contracts.CRASHES.is_dir() else []


def test_corpus_is_there():
    assert {p.parent.name for p in CORPUS} == set(contracts.CHECKS)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus(path):
    contracts.CHECKS[path.parent.name](path.read_bytes())


@pytest.mark.parametrize("path", CRASHES, ids=lambda p: p.stem)
def test_crash(path):
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta["status"] == "open":
        pytest.skip(f"open ({meta['signature']}): {meta['reason']}")
    contracts.CHECKS[meta["harness"]](path.read_bytes())
