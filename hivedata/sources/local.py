"""A local folder in the ILSVRC layout (<root>/<class>/<file>.JPEG, or flat with a labels file).

For users with a local copy, and for benchmarks against local-disk readers: the bytes are read from the
files into the batch arena in the consumer thread (prefill), then decoded by the same pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hivedata.common import is_image_name
from hivedata.errors import DataFormatError, HivedataError, LabelsError
from hivedata.sources.base import CacheKey
from hivedata.sources.read_plan import DEFAULT_MAX_GAP, ReadPlan, plan_whole_objects


class LocalFolderSource:
    """Image files under a local root: class folders sorted like torchvision's ImageFolder, or flat + labels."""

    bucket = ""
    endpoint = ""
    coalesces = False

    def __init__(self, root: str | os.PathLike, *, classes: Sequence[str] | None = None,
                 labels: str | dict[str, str] | None = None) -> None:
        base = Path(root).expanduser().resolve()
        if not base.is_dir():
            raise FileNotFoundError(f"{root} is not a directory")
        self.root, self.url = base, f"file://{base}"
        folders = sorted(d.name for d in base.iterdir() if d.is_dir())
        if folders:
            self.classes = list(classes) if classes is not None else folders
            unknown = sorted(set(folders) - set(self.classes))
            if unknown:
                raise DataFormatError(f"{base / unknown[0]} is not one of the {len(self.classes)} training classes",
                                      url=self.url)
            cidx = {c: i for i, c in enumerate(self.classes)}
            pairs = [(str(f), cidx[c]) for c in folders for f in sorted((base / c).iterdir())
                     if f.is_file() and is_image_name(f.name)]
        else:
            pairs = self._flat(base, classes, labels)
        if not pairs:
            raise FileNotFoundError(f"no images under {base}")
        self.paths = [p for p, _ in pairs]
        self.labels = np.array([label for _, label in pairs], dtype=np.int32)
        self.sizes = np.array([os.path.getsize(p) for p in self.paths], dtype=np.int64)

    def _flat(self, base: Path, classes: Sequence[str] | None,
              labels: str | dict[str, str] | None) -> list[tuple[str, int]]:
        from hivedata.sources.labels import parse_labels

        files = sorted(f for f in base.iterdir() if f.is_file() and is_image_name(f.name))
        if labels is None:
            raise LabelsError(f"{base} has no class folders: pass labels (a labels file or a dict file stem -> class)",
                              url=f"file://{base}")
        mapping = labels if isinstance(labels, dict) else parse_labels(Path(labels).read_text())
        self.classes = list(classes) if classes is not None else sorted(set(mapping.values()))
        cidx = {c: i for i, c in enumerate(self.classes)}
        pairs = []
        for f in files:
            wnid = mapping.get(f.name.rsplit(".", 1)[0])
            if wnid is None or wnid not in cidx:
                raise LabelsError(f"{f} has no class in the labels (or one that is not a training class)",
                                  url=f"file://{f}")
            pairs.append((str(f), cidx[wnid]))
        return pairs

    def __len__(self) -> int:
        return len(self.sizes)

    def groups(self) -> np.ndarray | None:
        """Files are independent: no group boundaries."""
        return None

    def plan(self, indices: np.ndarray, present: np.ndarray | None = None, *,
             max_gap: int = DEFAULT_MAX_GAP) -> ReadPlan:
        """One read per file, laid out back to back."""
        return plan_whole_objects(self.sizes[indices], present, names=[self.paths[i] for i in indices.tolist()])

    def prefill(self, plan: ReadPlan, arena: np.ndarray) -> ReadPlan:
        """Reads every file of the plan into the arena; a file that vanished or changed size is an error."""
        view = memoryview(arena)
        for s in plan.spans:
            if s.present:
                continue
            try:
                with open(s.object, "rb", buffering=0) as f:
                    got = f.readinto(view[s.offset:s.offset + s.length])
                    extra = f.read(1)
            except OSError as e:
                raise HivedataError(f"{s.object}: cannot read it ({e})") from e
            if got != s.length or extra:
                raise HivedataError(f"{s.object} changed size since the folder was listed: index it again")
        return plan.all_present()

    def cache_key(self, i: int) -> CacheKey | None:
        """Never cached: it is on a local disk already."""
        return None

    def describe(self, i: int) -> str:
        """file://<the file's path>"""
        return f"file://{self.paths[i]}"
