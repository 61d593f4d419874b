"""Labels of a flat validation folder (formats, finding a well-known file) and data-location errors (blame()).

A flat folder (<prefix>/<file>, as ILSVRC2012_img_val.tar unpacks) needs a labels file. Given none, the
places ImageNet's own distributions put one are searched, nearest first: the folder itself, then each
parent up to the bucket root; at each, Kaggle's `LOC_val_solution.csv`, then the devkit's
`ILSVRC2012_validation_ground_truth.txt` with its `meta.mat` (beside it or in `ILSVRC2012_devkit_t12/data/`).
Kaggle's LOC_synset_mapping.txt is not a substitute for meta.mat: it lists the WNIDs sorted, while the
ground truth's ILSVRC2012_IDs follow meta.mat's own order (ID 1 is n02119789, not n01440764).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hivedata.errors import (  # noqa: F401 (the data-location errors are re-exported)
    DataFormatError,
    DataLocationError,
    LabelsError,
    NoImagesError,
    ObjectNotFoundError,
    ObjectPermissionError,
)
from hivedata.gcs.json_client import GcsJsonClient, ObjectMeta
from hivedata.gcs.paths import parse_gcs_url

log = logging.getLogger(__name__)

KAGGLE_SOLUTION = "LOC_val_solution.csv"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
DEVKIT_DATA = "ILSVRC2012_devkit_t12/data/"
LABELS_FORMATS = "'<file> <wnid>' lines or LOC_val_solution.csv"


def stem(name: str) -> str:
    """File name without folders and extension: what a labels file keys on."""
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


_stem = stem  # the name prefix.py has always used


def parse_labels(text: str) -> dict[str, str]:
    """Validation labels: '<file> <wnid>' lines or Kaggle's LOC_val_solution.csv -> {file stem: wnid}."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    out: dict[str, str] = {}
    if lines and lines[0].lower().startswith("imageid,"):
        for n, ln in enumerate(lines[1:], start=2):
            image_id, _, pred = ln.partition(",")
            tokens = pred.split()
            if not image_id or not tokens:
                raise LabelsError(f"labels file line {n} is not 'ImageId,PredictionString': {ln[:80]!r}")
            out[stem(image_id)] = tokens[0]
        return out
    for n, ln in enumerate(lines, start=1):
        parts = ln.split()
        if len(parts) != 2:
            raise LabelsError(f"labels file line {n} is not '<file> <wnid>': {ln[:80]!r}")
        out[stem(parts[0])] = parts[1]
    return out


def parse_ground_truth(text: str) -> list[int]:
    """The devkit's ground truth: line k holds the 1-based ILSVRC2012_ID of ILSVRC2012_val_{k:08d}."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for n, ln in enumerate(lines, start=1):
        try:
            out.append(int(ln))
        except ValueError:
            raise LabelsError(f"ground truth line {n} is not an ILSVRC2012_ID: {ln[:80]!r}") from None
    return out


def parse_synsets_mat(data: bytes) -> dict[int, str]:
    """The devkit's meta.mat -> {ILSVRC2012_ID: WNID} (needs scipy, which hivemind depends on)."""
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:
        raise LabelsError("reading the devkit's meta.mat needs scipy (pip install scipy)") from None
    try:
        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        ids, wnids = synsets["ILSVRC2012_ID"], synsets["WNID"]
        return {int(i): str(w) for i, w in zip(ids.ravel(), wnids.ravel(), strict=True)}
    except (MatReadError, NotImplementedError, KeyError, ValueError, TypeError, IndexError, OSError) as e:
        raise LabelsError(f"meta.mat has no readable 'synsets' table with ILSVRC2012_ID and WNID: {e}") from None


def ground_truth_labels(ids: Sequence[int], id_to_wnid: dict[int, str]) -> dict[str, str]:
    """{ILSVRC2012_val_{k:08d}: WNID} from the ground truth's IDs and meta.mat's table."""
    out = {}
    for k, i in enumerate(ids, start=1):
        wnid = id_to_wnid.get(i)
        if wnid is None:
            raise LabelsError(f"ground truth line {k} names ILSVRC2012_ID {i}, which meta.mat does not have")
        out[f"ILSVRC2012_val_{k:08d}"] = wnid
    return out


def search_dirs(prefix: str) -> list[str]:
    """Where to look for a folder's labels, nearest first: the folder, then each parent up to the root ("")."""
    parts = [p for p in prefix.split("/") if p]
    return [("/".join(parts[:n]) + "/") if n else "" for n in range(len(parts), -1, -1)]


@dataclass
class FoundLabels:
    """A labels mapping found beside a flat folder, with the objects it came from."""

    mapping: dict[str, str]
    sources: list[str]
    kind: str


def find_labels(bucket: str, prefix: str, read: Callable[[str], bytes | None]) -> FoundLabels:
    """Searches the well-known places for the labels of flat folder `prefix`; LabelsError when none is there.

    read(object name) returns the object's bytes, or None when it does not exist.
    """
    dirs = search_dirs(prefix)
    orphans = []
    for d in dirs:
        data = read(d + KAGGLE_SOLUTION)
        if data is not None:
            url = f"gs://{bucket}/{d}{KAGGLE_SOLUTION}"
            with _naming(url):
                return FoundLabels(parse_labels(_text(data, url)), [d + KAGGLE_SOLUTION],
                                   "Kaggle's LOC_val_solution.csv")
        for where in (d, d + DEVKIT_DATA):
            truth = read(where + DEVKIT_GROUND_TRUTH)
            if truth is None:
                continue
            url = f"gs://{bucket}/{where}{DEVKIT_GROUND_TRUTH}"
            meta = read(where + DEVKIT_META)
            if meta is None:
                orphans.append(url)
                continue
            with _naming(url):
                ids = parse_ground_truth(_text(truth, url))
            with _naming(f"gs://{bucket}/{where}{DEVKIT_META}"):
                id_to_wnid = parse_synsets_mat(meta)
            with _naming(url):
                return FoundLabels(ground_truth_labels(ids, id_to_wnid), [where + DEVKIT_GROUND_TRUTH,
                                                                          where + DEVKIT_META], "the ILSVRC2012 devkit")
    looked = ", ".join(f"gs://{bucket}/{d}" for d in dirs)
    msg = (f"gs://{bucket}/{prefix} has no class folders: pass a labels file ({LABELS_FORMATS}); none was found "
           f"(looked for {KAGGLE_SOLUTION}, and {DEVKIT_GROUND_TRUTH} with {DEVKIT_META} also in "
           f"{DEVKIT_DATA}, in {looked})")
    if orphans:
        msg += f"; {orphans[0]} has no {DEVKIT_META} beside it to map its class numbers to WNIDs"
    raise LabelsError(msg, url=f"gs://{bucket}/{prefix}")


def discover_labels(client: GcsJsonClient, bucket: str, prefix: str) -> FoundLabels:
    """find_labels() against the bucket, logging which file it uses."""
    def read(name: str) -> bytes | None:
        try:
            return client.download(bucket, name)
        except ObjectNotFoundError:
            return None
        except ObjectPermissionError as e:
            raise LabelsError(f"cannot read gs://{bucket}/{name} ({e}): pass a labels file instead",
                              url=f"gs://{bucket}/{name}") from None

    found = find_labels(bucket, prefix, read)
    log.info("gs://%s/%s has no class folders: using the labels in %s (%s), %d entries; pass a labels file "
             "to use another", bucket, prefix, " + ".join(f"gs://{bucket}/{s}" for s in found.sources), found.kind,
             len(found.mapping))
    return found


@contextlib.contextmanager
def _naming(url: str) -> Iterator[None]:
    """Names the file in a LabelsError raised while parsing it."""
    try:
        yield
    except LabelsError as e:
        if e.url is not None:
            raise
        raise LabelsError(f"{url}: {e}", url=url) from None


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise LabelsError(f"labels file {what} is not text ({e.reason} at byte {e.start})", url=what) from None


def load_labels(labels: str | dict[str, str], client: GcsJsonClient) -> dict[str, str]:
    """A labels mapping from a dict, its text, a local path or a gs:// URL; LabelsError names the file."""
    if isinstance(labels, dict):
        return labels
    if "\n" in labels:
        return parse_labels(labels)
    try:
        if labels.startswith("gs://"):
            loc = parse_gcs_url(labels)
            data = client.download(loc.bucket, loc.prefix)
        else:
            data = Path(labels).read_bytes()
    except ObjectNotFoundError:
        raise LabelsError(f"labels file {labels} does not exist (HTTP 404)", url=labels) from None
    except ObjectPermissionError as e:
        raise LabelsError(f"labels file {labels}: permission denied (HTTP {e.status})", url=labels) from None
    except OSError as e:
        raise LabelsError(f"labels file {labels} cannot be read: {e.strerror or e}", url=labels) from None
    with _naming(labels):
        return parse_labels(_text(data, labels))


_load_labels = load_labels  # the name prefix.py has always used


def describe_labels(labels: Any) -> str:
    """How error messages name the labels: the path or URL, else 'the labels given'."""
    return labels if isinstance(labels, str) and "\n" not in labels else "the labels given"


def label_flat(images: Sequence[ObjectMeta], labels: str | dict[str, str] | None, classes: Sequence[str] | None,
               client: GcsJsonClient, bucket: str, prefix: str) -> tuple[list[str], list[int]]:
    """Class list and one label per image of flat folder gs://bucket/prefix (labels=None: find_labels())."""
    if labels is None:
        found = discover_labels(client, bucket, prefix)
        mapping, source = found.mapping, " + ".join(f"gs://{bucket}/{s}" for s in found.sources)
        url: str | None = f"gs://{bucket}/{found.sources[0]}"
    else:
        mapping, source = load_labels(labels, client), describe_labels(labels)
        url = labels if isinstance(labels, str) and "\n" not in labels else None
    class_list = list(classes) if classes is not None else sorted(set(mapping.values()))
    cidx = {c: i for i, c in enumerate(class_list)}
    out, missing, unknown = [], [], []
    for o in images:
        wnid = mapping.get(stem(o.name))
        if wnid is None:
            missing.append(o.name)
        elif wnid not in cidx:
            unknown.append((o.name, wnid))
        else:
            out.append(cidx[wnid])
    if missing:
        more = f" (and {len(missing) - 1} more of the {len(images)} images)" if len(missing) > 1 else ""
        raise LabelsError(f"gs://{bucket}/{missing[0]} has no entry in the labels file ({source}){more}", url=url)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise LabelsError(f"gs://{bucket}/{unknown[0][0]} is labelled {unknown[0][1]!r} in the labels file "
                          f"({source}), which is not one of the {len(class_list)} training classes{more}", url=url)
    return class_list, out


def blame(exc: BaseException, locations: dict[str, str], *, bucket: str | None, bucket_flag: str, labels_flag: str,
          default: str | None = None) -> str | None:
    """'<flag>: <what is wrong>' for a data-location error, or None for anything else (a bug keeps its traceback).

    locations maps each gs:// URL given on the command line (a prefix or an object) to its flag; the longest
    one that the error's URL lies under names the flag, else `default`. A failed listing of `bucket` blames
    bucket_flag, a labels file labels_flag.
    """
    if isinstance(exc, (ObjectNotFoundError, ObjectPermissionError)):
        if exc.object is None and exc.bucket == bucket:  # a listing failed: the bucket, not a prefix, is wrong
            if isinstance(exc, ObjectNotFoundError):
                return f"{bucket_flag}: bucket gs://{bucket} does not exist ({exc})"
            return (f"{bucket_flag}: {exc}: these credentials may not list gs://{bucket} (check the bucket name, "
                    f"or run 'gcloud auth application-default login')")
        flag = _flag_of(f"gs://{exc.bucket}/{exc.object or ''}", locations, default)
        return f"{flag}: {exc}" if flag else None
    if isinstance(exc, LabelsError):
        return f"{labels_flag}: {exc}"
    if isinstance(exc, DataLocationError):
        url = getattr(exc, "url", None) or next(iter(re.findall(r"gs://\S+", str(exc))), "")
        flag = _flag_of(url, locations, default)
        return f"{flag}: {exc}" if flag else str(exc)
    return None


def _flag_of(url: str, locations: dict[str, str], default: str | None) -> str | None:
    best, flag = -1, default
    for loc, name in locations.items():
        base = loc[:-len("*.tar")] if loc.endswith("*.tar") else loc
        if (url == base or url.startswith(base.rstrip("/") + "/")) and len(base) > best:
            best, flag = len(base), name
    return flag
