"""MetricsLog round trips (.jsonl/.csv) and the Pillow-drawn metrics plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from hivedata.train.metrics import MetricsLog, read_metrics
from hivedata.train.plot import DEFAULT_SIZE, main, nice_ticks, plot_metrics, tick_labels


def _rows(n: int = 300, val_every: int = 50) -> list[dict]:
    rows = []
    for step in range(1, n + 1):
        row = {"step": step, "time": step * 0.25, "loss": 7 * math.exp(-step / 100) + 0.5,
               "samples_per_s": 900.0 + step % 7, "global_epoch": step // 10, "peers": 2,
               "lr": 0.4 * min(1.0, (step // 10 + 1) / 5), "loader_wait_s": 0.01}
        if step % val_every == 0:
            row.update(val_top1=step / (2 * n), val_top5=step / n)
        rows.append(row)
    return rows


# -- MetricsLog -----------------------------------------------------------------------------------------------


def test_jsonl_round_trip_flushes_each_row(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        log.write({"step": 1, "loss": 2.5, "lr": np.float32(0.1), "val": torch.tensor(0.5), "name": "a"})
        assert len(path.read_text().splitlines()) == 1  # on disk before close
        log.write(step=2, loss=float("nan"), extra={"skipped": 0})
    rows = read_metrics(path)
    assert rows[0] == {"step": 1, "loss": 2.5, "lr": pytest.approx(0.1), "val": 0.5, "name": "a"}
    assert rows[1]["step"] == 2 and math.isnan(rows[1]["loss"]) and rows[1]["extra"] == {"skipped": 0}
    with MetricsLog(path) as log:  # reopening appends
        log.write(step=3)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    with pytest.raises(ValueError, match="closed"):
        log.write(step=4)


def test_jsonl_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1}]
    path.write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match="m.jsonl:1"):
        read_metrics(path)


def test_csv_round_trip_and_missing_keys(tmp_path):
    path = tmp_path / "m.csv"
    with MetricsLog(path) as log:
        log.write({"step": 1, "loss": 2.5, "lr": 0.1, "ok": True, "name": "x", "val_top1": None})
        log.write({"step": 2, "loss": float("nan"), "lr": 0.05, "val_top1": 0.25})  # ok/name missing: empty cells
        assert log.fields == ["step", "loss", "lr", "ok", "name", "val_top1"]
    assert path.read_text().splitlines()[0] == "step,loss,lr,ok,name,val_top1"
    rows = read_metrics(path)
    assert rows[0] == {"step": 1, "loss": 2.5, "lr": 0.1, "ok": True, "name": "x", "val_top1": None}
    assert rows[1]["step"] == 2 and math.isnan(rows[1]["loss"]) and rows[1]["ok"] is None
    assert rows[1]["val_top1"] == 0.25


def test_csv_new_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "m.csv"
    log = MetricsLog(path)
    log.write(step=1, loss=2.0)
    with pytest.raises(ValueError, match=r"\['val_top1', 'val_top5'\]"):
        log.write(step=2, loss=1.0, val_top1=0.1, val_top5=0.3)
    log.close()
    # reopening keeps the existing header; declaring the columns up front allows sparse rows
    with MetricsLog(path) as again:
        assert again.fields == ["step", "loss"]
        with pytest.raises(ValueError, match="val_top1"):
            again.write(step=3, val_top1=0.2)
    declared = tmp_path / "d.csv"
    with MetricsLog(declared, fields=["step", "loss", "val_top1"]) as log2:
        log2.write(step=1, loss=2.0)
        log2.write(step=2, val_top1=0.5)
    assert read_metrics(declared) == [{"step": 1, "loss": 2.0, "val_top1": None},
                                      {"step": 2, "loss": None, "val_top1": 0.5}]


def test_format_selection(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        MetricsLog(tmp_path / "m.txt")
    with pytest.raises(ValueError, match="unknown metrics format"):
        MetricsLog(tmp_path / "m.txt", fmt="xml")
    with MetricsLog(tmp_path / "m.log", fmt="csv") as log:
        log.write(a=1)
    assert read_metrics(tmp_path / "m.log", fmt="csv") == [{"a": 1}]


# -- plot -----------------------------------------------------------------------------------------------------


def test_nice_ticks_and_labels():
    ticks, step = nice_ticks(0.0, 1.0)
    assert step == 0.2 and tick_labels(ticks, step) == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    ticks, step = nice_ticks(1.0, 20000.0)
    assert tick_labels(ticks, step) == ["5k", "10k", "15k", "20k"]
    ticks, step = nice_ticks(0.0, 4.1e-4)
    assert tick_labels(ticks, step) == ["0", "1e-4", "2e-4", "3e-4", "4e-4"]
    with pytest.raises(ValueError):
        nice_ticks(1.0, 1.0)


def test_plot_writes_png(tmp_path):
    rows = _rows()
    rows[120]["loss"] = float("nan")
    rows[121]["loss"] = float("inf")
    rows[130].pop("samples_per_s")
    rows.append({"note": "resumed"})  # a row without any plotted field
    rows += _rows(40, val_every=20)  # a resumed run appending with step restarting at 1
    out = tmp_path / "sub" / "m.png"
    plot_metrics(rows, out, title="test run")
    assert out.stat().st_size > 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == DEFAULT_SIZE
        pixels = np.asarray(img.convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.02  # something was drawn


@pytest.mark.parametrize("rows", [[], [{"step": 1}], [{"loss": 3.0}], [{"step": 1, "loss": float("nan"), "lr": "x"}],
                                  [{"step": 5, "loss": 1.0, "lr": 0.1, "global_epoch": 0, "val_top1": 0.5}]])
def test_plot_degenerate_rows(tmp_path, rows):
    out = tmp_path / "m.png"
    plot_metrics(rows, out, size=(640, 480))
    with Image.open(out) as img:
        assert img.size == (640, 480)


def test_main_on_a_file(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        for row in _rows(120):
            log.write(row)
    assert main([str(path)]) == 0
    assert "120 rows" in capsys.readouterr().out
    with Image.open(tmp_path / "metrics.png") as img:
        assert img.size == DEFAULT_SIZE
    csv_path = tmp_path / "metrics.csv"
    with MetricsLog(csv_path, fields=list(_rows(50)[-1])) as log:
        for row in _rows(50):
            log.write(row)
    out = tmp_path / "other.png"
    assert main([str(csv_path), "--out", str(out), "--title", "csv run"]) == 0
    assert out.stat().st_size > 0
    assert main([str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl" in capsys.readouterr().err
