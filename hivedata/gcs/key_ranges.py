"""Pure functions on object-name ranges: where to split [lo, hi) between two listers, and how big a range looks.

Object names sort as GCS lists them: by UTF-8 bytes, which for Python strings is code-point order (str <).
A range is [lo, hi) with hi None meaning "no upper bound". Split points are chosen character-wise from an
alphabet (the characters seen in names listed so far), so they tend to fall where names actually are.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

MAX_CODE = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
DEFAULT_ALPHABET = "".join(sorted("-._0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


def common_prefix(a: str, b: str) -> str:
    """The longest common prefix of two strings."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every name that starts with `prefix`; None when there is none."""
    p = prefix
    while p:
        code = ord(p[-1])
        if code < MAX_CODE:
            nxt = code + 1
            if _SURROGATES[0] <= nxt <= _SURROGATES[1]:
                nxt = _SURROGATES[1] + 1
            return p[:-1] + chr(nxt)
        p = p[:-1]
    return None


def request_prefix(prefix: str, lo: str, hi: str | None) -> str:
    """The narrowest prefix that still holds every name in [lo, hi) under `prefix`.

    Every name k with lo <= k < hi starts with the common prefix of lo and hi, so a listing may ask for that
    (when it is longer than `prefix`) without missing anything; lo must start with `prefix`.
    """
    if not lo.startswith(prefix):
        raise ValueError(f"range start {lo!r} is not under prefix {prefix!r}")
    if hi is None:
        return prefix
    c = common_prefix(lo, hi)
    return c if len(c) > len(prefix) else prefix


def _code_between(lo_code: int, hi_code: int) -> int | None:
    """A code point strictly between the two (not a surrogate), near the middle; None if there is none."""
    if hi_code - lo_code < 2:
        return None
    mid = (lo_code + hi_code) // 2
    if _SURROGATES[0] <= mid <= _SURROGATES[1]:
        for c in (_SURROGATES[0] - 1, _SURROGATES[1] + 1):
            if lo_code < c < hi_code:
                return c
        return None
    return mid


def split_point(lo: str, hi: str | None, alphabet: str = DEFAULT_ALPHABET) -> str | None:
    """A name m with lo < m < hi (hi None: unbounded), near the middle character-wise; None if no such m exists.

    `alphabet` is a sorted string of distinct characters (those seen in names) the split character is taken
    from: at the first position where lo and hi differ, the middle alphabet character strictly between them;
    when none is, the split goes one position deeper after lo's character. Other code points are used only
    past the end of lo, when no alphabet character is below hi there.
    """
    if hi is not None and not lo < hi:
        raise ValueError(f"empty range: {lo!r} is not below {hi!r}")
    alphabet = alphabet or DEFAULT_ALPHABET
    out: list[str] = []
    i = 0
    bounded = hi is not None
    while True:
        a = lo[i] if i < len(lo) else None
        if bounded:
            if i >= len(hi):  # lo and hi agree up to hi's end: only possible when lo is exhausted too
                return None
            b = hi[i]
            if a == b:
                out.append(a)
                i += 1
                continue
        lo_code = ord(a) if a is not None else -1
        hi_code = ord(b) if bounded else MAX_CODE + 1
        first = bisect_right(alphabet, a) if a is not None else 0
        last = bisect_left(alphabet, b) if bounded else len(alphabet)
        if first < last:  # alphabet characters strictly between
            return "".join(out) + alphabet[(first + last) // 2]
        if a is None:  # lo is exhausted and no alphabet character is below hi[i]
            code = _code_between(lo_code, hi_code)
            if code is not None:
                return "".join(out) + chr(code)
            out.append(b)  # hi[i] is the lowest code point: m must start with out + hi[i]
            if i + 1 < len(hi):
                return "".join(out)  # lo < out (longer, lo is its prefix) < hi (its proper prefix)
            return None
        # No alphabet character fits here: go one character deeper, where only lo bounds (out + a < hi already).
        out.append(a)
        i += 1
        bounded = False


def range_weight(lo: str, hi: str | None) -> tuple[int, int]:
    """How much key space [lo, hi) spans, as a sortable (bigger = wider) pair: a shorter common prefix first,
    then the code-point gap at the first differing character."""
    if hi is None:
        return (0, MAX_CODE + 1 - (ord(lo[0]) if lo else -1))
    c = len(common_prefix(lo, hi))
    lo_code = ord(lo[c]) if c < len(lo) else -1
    hi_code = ord(hi[c]) if c < len(hi) else -1
    return (-c, hi_code - lo_code)


def alphabet_of(names: list[str] | tuple[str, ...], seen: set[str] | None = None) -> set[str]:
    """The set of characters in `names`, added to `seen` when given."""
    out = seen if seen is not None else set()
    out.update("".join(names))
    return out
