"""Append-only training metrics: one JSON object per line (.jsonl) or CSV rows (.csv), flushed per row.

Fields are whatever the caller logs. JSON lines keep NaN/Infinity (Python's json dialect) so a diverged
loss stays visible. A CSV header is fixed by the first row (or by ``fields=``, or by the header already in
an existing file); a later row with a key outside it raises ValueError, a row missing some keys leaves
their cells empty (read back as None).
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "MetricsLog", "read_metrics"]

FORMATS = ("jsonl", "csv")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown metrics format {fmt!r}; expected one of {list(FORMATS)}")
        return fmt
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"cannot tell the metrics format of {str(path)!r} from its suffix; use .jsonl or .csv, "
                         "or pass fmt=") from None


def _plain(value: Any) -> Any:
    """numpy/torch scalars and paths to plain Python values json and csv understand."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


class MetricsLog:
    """Appends metric rows to path (.jsonl or .csv, or fmt=), one flushed line per write()."""

    def __init__(self, path: str | Path, *, fmt: str | None = None, fields: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.fmt = _format_of(self.path, fmt)
        self._lock = threading.Lock()
        self._fields: list[str] | None = list(fields) if fields is not None else None
        existing = _csv_header(self.path) if self.fmt == "csv" else None
        if existing is not None and self._fields is not None and existing != self._fields:
            raise ValueError(f"{self.path} already has CSV columns {existing}, not {self._fields}")
        self._header_written = existing is not None
        self._fields = existing or self._fields
        self._file = open(self.path, "a", encoding="utf-8", newline="")
        self._writer: Any = None

    @property
    def fields(self) -> list[str] | None:
        """The CSV columns (None until the first row of a new CSV file, and always for JSON lines)."""
        return None if self.fmt != "csv" else self._fields

    def write(self, row: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Appends one row (a mapping and/or keyword fields) and flushes it."""
        data = {str(k): _plain(v) for k, v in {**(row or {}), **fields}.items()}
        with self._lock:
            if self._file.closed:
                raise ValueError(f"MetricsLog({str(self.path)!r}) is closed")
            if self.fmt == "jsonl":
                self._file.write(json.dumps(data, separators=(",", ":")) + "\n")
            else:
                self._write_csv(data)
            self._file.flush()

    log = write

    def _write_csv(self, data: dict[str, Any]) -> None:
        if self._fields is None:
            self._fields = list(data)
        new = [k for k in data if k not in self._fields]
        if new:
            raise ValueError(f"{self.path}: new metric keys {new} are not among the CSV columns {self._fields}; "
                             "pass fields= with every column up front, or log to .jsonl")
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=self._fields, restval="", lineterminator="\n")
        if not self._header_written:
            self._writer.writeheader()
            self._header_written = True
        cells = {k: json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v) for k, v in data.items()}
        self._writer.writerow(cells)

    def close(self) -> None:
        """Closes the file; further writes raise."""
        with self._lock:
            self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetricsLog({str(self.path)!r}, fmt={self.fmt!r})"


def _csv_header(path: Path) -> list[str] | None:
    """The header of an existing, non-empty CSV file, else None."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, encoding="utf-8", newline="") as f:
        return next(csv.reader(f), None) or None


def _cell(text: str | None) -> Any:
    """A CSV cell back to None, bool, int, float, a JSON list/dict, or the string itself."""
    if not text:
        return None
    if text in ("True", "False"):
        return text == "True"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text[0] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def read_metrics(path: str | Path, *, fmt: str | None = None) -> list[dict[str, Any]]:
    """All rows of a .jsonl or .csv metrics file (a torn last JSON line, from a crash mid-write, is skipped)."""
    path = Path(path)
    kind = _format_of(path, fmt)
    text = path.read_text(encoding="utf-8")
    if kind == "csv":
        return [{k: _cell(v) for k, v in row.items() if k is not None} for row in csv.DictReader(io.StringIO(text))]
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object: {line[:80]!r}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{i + 1}: not a JSON object: {line[:80]!r}")
        rows.append(obj)
    return rows

