"""A local ILSVRC-layout folder as a source: the Loader reads it, pack packs it, in_memory loads it."""

from __future__ import annotations

import pytest
import torch

from hivedata.errors import HivedataError
from hivedata.loader.loader import Loader
from hivedata.sources import SourceOptions, open_source
from hivedata.sources.local import LocalFolderSource
from hivedata.tools.pack import pack
from tests.support.images import jpeg, natural_image

CLASSES = ["n01", "n02", "n03"]


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "train"
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            (root / cls / f"{cls}_{i}.JPEG").write_bytes(jpeg(natural_image(40, 30, seed=10 * c + i)))
    (root / CLASSES[0] / "notes.txt").write_text("not an image")
    return root


def _eval(source, **kw):
    with Loader(source, batch_size=5, train=False, image_size=16, backend="native", workers=1, **kw) as ld:
        batches = [(x.clone(), y.clone()) for x, y in ld]
        return batches, ld.stats()


def test_open_source_reads_a_path_or_a_file_url_as_a_local_folder(folder):
    for url in (str(folder), f"file://{folder}"):
        src = open_source(url, SourceOptions("http://127.0.0.1:9", "anonymous"))
        assert isinstance(src, LocalFolderSource) and src.classes == CLASSES and len(src) == 12
        assert src.describe(0) == f"file://{folder}/n01/n01_0.JPEG"


def test_the_loader_reads_every_file_with_its_label_and_no_gets(folder):
    batches, st = _eval(str(folder))
    assert torch.cat([y for _, y in batches]).tolist() == [c for c in range(3) for _ in range(4)]
    assert st["gets"] == 0 and st["skipped"] == 0
    in_memory, _ = _eval(str(folder), in_memory=True)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, in_memory, strict=True))


def test_a_file_that_changed_after_listing_is_an_error_naming_it(folder):
    src = LocalFolderSource(folder)
    (folder / "n02" / "n02_1.JPEG").write_bytes(b"short")
    with pytest.raises(HivedataError, match="n02_1.JPEG changed size"):
        _eval(src)


def test_a_flat_folder_needs_labels_and_uses_them(tmp_path):
    flat = tmp_path / "val"
    flat.mkdir()
    for i in range(3):
        (flat / f"v_{i}.JPEG").write_bytes(jpeg(natural_image(30, 30, seed=i)))
    with pytest.raises(ValueError, match="labels"):
        LocalFolderSource(flat)
    src = LocalFolderSource(flat, classes=CLASSES, labels={"v_0": "n03", "v_1": "n01", "v_2": "n03"})
    assert src.labels.tolist() == [2, 0, 2]


def test_pack_of_a_local_folder_keys_samples_by_their_relative_path(folder, tmp_path):
    index = pack(str(folder), str(tmp_path / "out"), shard_size=64 * 1024, progress=False, log=lambda s: None,
                 order="sorted", verify=12)
    assert [index.key(i) for i in range(3)] == ["n01/n01_0", "n01/n01_1", "n01/n01_2"]
    assert index.classes == CLASSES and index.labels.tolist() == [c for c in range(3) for _ in range(4)]
