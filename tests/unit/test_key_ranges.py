"""The range splitter: split points lie strictly inside the range, narrowed prefixes keep every name in it."""

from __future__ import annotations

import random

import pytest

from hivedata.gcs.key_ranges import (
    DEFAULT_ALPHABET,
    alphabet_of,
    common_prefix,
    prefix_end,
    range_weight,
    request_prefix,
    split_point,
)

CHARS = "\x00ab/._0129zé\u00ff\u4e2d\U0001f600"


def _name(rng: random.Random, n: int = 6) -> str:
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(0, n)))


def test_split_point_is_strictly_inside_for_random_ranges() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        a, b = _name(rng), _name(rng)
        if a == b:
            continue
        lo, hi = min(a, b), max(a, b)
        alphabet = "".join(sorted(alphabet_of([_name(rng) for _ in range(3)]))) or DEFAULT_ALPHABET
        m = split_point(lo, hi, alphabet)
        if m is None:  # only when nothing lies between: hi is lo followed by one NUL
            assert hi == lo + "\x00"
        else:
            assert lo < m < hi, (lo, hi, m)
        u = split_point(lo, None, alphabet)
        assert u is not None and lo < u


def test_split_point_none_only_when_range_has_no_room() -> None:
    assert split_point("a", "a\x00") is None
    assert split_point("a", "a\x00\x00") == "a\x00"


def test_split_point_prefers_the_alphabet_and_the_middle() -> None:
    assert split_point("img_0", "img_9", "0123456789") == "img_5"
    # adjacent characters: one position deeper, after lo's character
    m = split_point("img_3x", "img_4", "0123456789xyz")
    assert m.startswith("img_3") and "img_3x" < m < "img_4"
    # a split point falling exactly on an existing name is allowed: ranges are [start, end)
    assert split_point("k/a", "k/c", "abc") == "k/b"


def test_split_point_rejects_empty_range() -> None:
    with pytest.raises(ValueError, match="empty range"):
        split_point("b", "a")


def test_prefix_end_bounds_exactly_the_names_under_the_prefix() -> None:
    assert prefix_end("val/") == "val0"
    assert prefix_end("") is None
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff") == "\ue000"
    rng = random.Random(3)
    for _ in range(2000):
        p, n = _name(rng, 3), _name(rng, 5)
        end = prefix_end(p)
        inside = n.startswith(p)
        assert inside == (n >= p and (end is None or n < end)), (p, n, end)


def test_request_prefix_never_excludes_a_name_in_the_range() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        p = _name(rng, 2)
        lo, hi, n = p + _name(rng), p + _name(rng), p + _name(rng)
        if not lo < hi:
            continue
        q = request_prefix(p, lo, hi)
        assert q.startswith(p)
        if lo <= n < hi:
            assert n.startswith(q), (p, lo, hi, n, q)
    with pytest.raises(ValueError, match="not under prefix"):
        request_prefix("a/", "b/x", None)


def test_common_prefix_and_weight_order_wider_ranges_first() -> None:
    assert common_prefix("abcd", "abxy") == "ab"
    assert range_weight("a/0", "a/9") > range_weight("a/00", "a/01")
    assert range_weight("a", None) > range_weight("a/0", "a/9")
