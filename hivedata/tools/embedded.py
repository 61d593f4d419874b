"""train.py's embedded default: a local GCS emulator with a small learnable dataset, and local peers."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from hivedata import lifeline
from hivedata.tools.emulator import Emulator
from hivedata.tools.synthetic import SyntheticSpec
from hivedata.tools.synthetic_store import upload_dataset

EMBEDDED_BUCKET = "hivedata-embedded"
EMBEDDED_SPEC = SyntheticSpec(num_classes=10, train_per_class=100, val_per_class=20, seed=0)
TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"  # the repository's train.py (hivedata/tools/ -> root)


def prepare_emulator(spec: SyntheticSpec = EMBEDDED_SPEC, *, progress: bool = True) -> Emulator:
    """Starts the emulator (exporting STORAGE_EMULATOR_HOST) and uploads the generated dataset."""
    em = Emulator().start()
    upload_dataset(EMBEDDED_BUCKET, spec, train_prefix="train", val_prefix="val", progress=progress)
    return em


def peer_command(argv: list[str], index: int, metrics: str | None, checkpoint_dir: str | None,
                 peers: int) -> list[str]:
    """The command line of extra local peer `index`: the same flags, pointed at the embedded bucket."""
    drop = {"--peers", "--metrics", "--checkpoint_dir", "--wait_peers"}
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if a.split("=", 1)[0] in drop:
            continue
        out.append(a)
    cmd = [sys.executable, str(TRAIN_PY), *out,
           "--bucket", EMBEDDED_BUCKET, "--embedded_peer", "--wait_peers", str(peers)]
    if metrics:
        cmd += ["--metrics", metrics]
    if checkpoint_dir:
        cmd += ["--checkpoint_dir", checkpoint_dir]
    return cmd


def start_extra_peers(args: argparse.Namespace, argv: list[str]) -> list[subprocess.Popen]:
    """Starts peers 1..N-1 as subprocesses; they find peer 0 through the bucket's peer registry."""
    procs = []
    for i in range(1, args.peers):
        metrics = None
        if args.metrics:
            base, dot, ext = args.metrics.rpartition(".")
            metrics = f"{base}.peer{i}.{ext}" if dot else f"{args.metrics}.peer{i}"
        ckpt = f"{args.checkpoint_dir.rstrip('/')}/peer{i}" if args.checkpoint_dir else None
        cmd = lifeline.command(peer_command(argv, i, metrics, ckpt, args.peers))  # they die with this peer
        procs.append(subprocess.Popen(cmd, env=dict(os.environ)))
    return procs
