"""Memory bounds of one decode: the pixel budget (64 MP by default, checked from the header), libjpeg's
memory limit (3 bytes per budget pixel + 16 MiB), a valid progressive "bomb" under both measured in a
subprocess by its peak RSS, and normalize_u8's size arithmetic that must not wrap."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hivedata import _native, errors
from hivedata.loader.decoders.base import DEFAULT_MAX_PIXELS, Augment
from tests.support.broken_jpegs import progressive_bomb

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
LIMIT = 3 * DEFAULT_MAX_PIXELS + 16 * MiB  # libjpeg's memory limit at the default budget: 208 MiB


def test_the_default_budget_is_64_megapixels_on_both_sides():
    assert DEFAULT_MAX_PIXELS == 8192 * 8192
    assert Augment().max_pixels == _native.AugmentParams().max_pixels == DEFAULT_MAX_PIXELS
    with pytest.raises(ValueError, match="max_pixels"):
        Augment(max_pixels=0)


# Decodes one bomb in a fresh interpreter and reports how much its peak RSS grew. The peak is VmHWM, the
# high-water mark of this process's own memory map: ru_maxrss would do on its own, but Linux carries the
# forked parent's peak over an exec into it, so under a large pytest process it would not move at all.
_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from hivedata import _native, errors
    from tests.support.broken_jpegs import progressive_bomb

    def peak_kib():
        try:
            with open("/proc/self/status") as f:
                return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    w, h, comps, kw = json.loads(sys.argv[1])
    data = progressive_bomb(w, h, comps)
    out = np.empty((224, 224, 3), np.uint8)
    _native.decode_image(progressive_bomb(64, 64, comps), out, sample_seed=0)  # warm: code pages, allocator
    before = peak_kib()
    t = time.perf_counter()
    try:
        _native.decode_image(data, out, sample_seed=0, **kw)
        verdict = "ok"
    except errors.BadImageError as e:
        verdict = type(e).__name__ + ": " + str(e)
    print(json.dumps({"verdict": verdict, "s": time.perf_counter() - t, "bytes": len(data),
                      "grew_mib": (peak_kib() - before) / 1024}))
""")


def bomb(w: int, h: int, comps: int = 3, **kw) -> dict:
    # -P as the parent ran (scripts/asan.sh): the sanitized build on PYTHONPATH, not the checkout's
    py = [sys.executable, *(["-P"] if sys.flags.safe_path else [])]
    r = subprocess.run([*py, "-c", _CHILD, json.dumps([w, h, comps, kw])], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_over_the_pixel_budget_is_refused_from_the_header():
    """169 MP (the old default allowed 179 MP): decoding it took ~1 GB and 7 s; now refused at once."""
    r = bomb(13000, 13000)
    assert r["verdict"].startswith("ImageTooLargeError") and "13000x13000" in r["verdict"], r
    assert r["grew_mib"] < 8 and r["s"] < 0.2, r


def test_under_the_budget_over_the_memory_limit_is_refused_before_allocating():
    """8192 x 8192, 3 components 4:4:4 progressive: 384 MiB of coefficients > the 208 MiB limit."""
    r = bomb(8192, 8192, 3)
    assert r["verdict"].startswith("ImageTooLargeError") and "208 MiB" in r["verdict"], r
    assert r["grew_mib"] < 8 and r["s"] < 0.2, r


def test_just_under_both_limits_decodes_within_the_stated_rss():
    """The worst this budget lets through: 8192 x 8192 grayscale progressive, 128 MiB of coefficients.
    Stated bound: a decode grows peak RSS by at most libjpeg's limit (208 MiB) plus 16 MiB of our own."""
    r = bomb(8192, 8192, 1)
    assert r["verdict"] == "ok", r
    assert 100 < r["grew_mib"] < (LIMIT + 16 * MiB) / MiB, r


def test_a_larger_budget_raises_the_memory_limit_with_it():
    r = bomb(8192, 8192, 3, max_pixels=3 * DEFAULT_MAX_PIXELS)  # limit 3 * 3 * 64 MiB + 16 MiB
    assert r["verdict"] == "ok", r
    assert 300 < r["grew_mib"] < (9 * DEFAULT_MAX_PIXELS + 32 * MiB) / MiB, r


def test_a_refused_bomb_is_named(tmp_path):
    out = np.empty((224, 224, 3), np.uint8)
    with pytest.raises(errors.ImageTooLargeError) as ei:
        _native.decode_image(progressive_bomb(8192, 8192), out, sample_seed=0, name="n0/bomb.JPEG")
    assert ei.value.object == "n0/bomb.JPEG"
    assert "limit of 208 MiB" in str(ei.value) and "8192x8192 progressive" in str(ei.value)


# ------------------------------------------------------------------------------------------- normalize


@pytest.mark.parametrize(("n", "h", "w"), [
    ((2**64 + 2) // 3, 1, 1),  # n*h*w*3 wraps to 2: used to pass the size check and read far out of bounds
    (1, 2**32, 2**32),  # h*w wraps to 0
    (2**62, 1, 1),  # n*3 wraps
    (2**61, 1, 1),  # count fits, count * 4 float bytes wraps
])
def test_normalize_sizes_that_wrap_are_a_value_error(n, h, w):
    with pytest.raises(ValueError, match="overflows"):
        _native.normalize_u8(bytes(16), bytearray(64), n, h, w, False, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))


def test_normalize_still_checks_and_works():
    src = np.arange(2 * 3 * 4 * 3, dtype=np.uint8)
    dst = np.empty(src.size, np.float32)
    _native.normalize_u8(src, dst, 2, 3, 4, True, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert np.array_equal(dst, src.astype(np.float32))
    with pytest.raises(ValueError, match="source holds"):
        _native.normalize_u8(src[:-1], dst, 2, 3, 4, True, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="destination holds"):
        _native.normalize_u8(src, dst[:-1], 2, 3, 4, True, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
