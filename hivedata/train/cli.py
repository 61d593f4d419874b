"""train.py: parse flags, set up the embedded default if no bucket is given, train, summarise."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from hivedata.errors import HivedataError
from hivedata.train.config import fill_defaults, parse_args


def data_error(exc: BaseException, args: argparse.Namespace, stage: str | None = None) -> str | None:
    """'train.py: error: <flag>: <what is wrong>' for a configuration or data-location error; None for a bug.

    stage: "train" or "val" when it is known which loader's data failed, else the flag is told by the URL.
    """
    from hivedata.sources.labels import LabelsError, blame

    locations = {f"gs://{args.bucket}/{args.train_prefix}": "--train_prefix",
                 f"gs://{args.bucket}/{args.val_prefix}": "--val_prefix"}
    if args.val_labels and args.val_labels.startswith("gs://"):
        locations[args.val_labels] = "--val_labels"
    if stage == "train" and isinstance(exc, LabelsError):  # a flat folder given as the training set
        return (f"train.py: error: --train_prefix: training images go in class folders (<prefix>/<wnid>/<file>) "
                f"or packed shards; {exc}")
    default = {"train": "--train_prefix", "val": "--val_prefix"}.get(stage or "")
    line = blame(exc, locations, bucket=args.bucket, bucket_flag="--bucket_name", labels_flag="--val_labels",
                 default=default)
    return None if line is None else f"train.py: error: {line}"


def check_data(args: argparse.Namespace) -> str | None:
    """data_error()'s line when a flag points at the wrong data, else None (see open_checked)."""
    return open_checked(args)[0]


def open_checked(args: argparse.Namespace) -> tuple[str | None, tuple | None]:
    """Opens the training and validation sources before the swarm starts, so a misconfigured peer never joins.

    Returns (data_error()'s line, None) when a flag points at the wrong data, else (None, (train, val)) for the
    trainer to read from (each is opened once).
    """
    from hivedata.train.parts import open_train_source, open_val_source

    stage = "train"
    try:
        train = open_train_source(args)
        stage = "val"
        return None, (train, open_val_source(args, train.classes))
    except Exception as e:  # only our own data-location errors are answered; anything else is a bug: re-raised
        line = data_error(e, args, stage)
        if line is None:
            raise
        return line, None


def trust_ca_bundle(args: argparse.Namespace) -> str | None:
    """Makes every client of the storage endpoint (listings, loaders, checkpoints, the peer registry) trust
    --ca_bundle; returns the error line when the file is unusable."""
    if not args.ca_bundle:
        return None
    from hivedata.gcs.paths import storage_endpoint
    from hivedata.gcs.tls import TlsConfigError, trust

    try:
        trust(storage_endpoint(None), args.ca_bundle)
    except TlsConfigError as e:
        return f"train.py: error: --ca_bundle: {e}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Runs one training peer (and, on the embedded default, --peers - 1 more locally)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    embedded = args.bucket is None or args.embedded_peer
    fill_defaults(args, embedded=embedded)
    if args.warmup_epochs >= args.epochs:
        print(f"train.py: error: --warmup_epochs ({args.warmup_epochs}) must be below --epochs ({args.epochs})",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")  # read by hivemind at import
    problem = trust_ca_bundle(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    sources = None  # the embedded default and its extra peers open theirs in the trainer
    if args.bucket is not None and not args.embedded_peer:
        problem, sources = open_checked(args)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 2
    from hivedata.train.trainer import Trainer

    em, procs = None, []
    if args.bucket is None:
        from hivedata.tools.embedded import EMBEDDED_BUCKET, prepare_emulator

        print("embedded default: starting a local GCS emulator with a generated 10-class dataset ...", flush=True)
        em = prepare_emulator(progress=args.progress)
        args.bucket = EMBEDDED_BUCKET
        args.metrics = args.metrics or "results/metrics.jsonl"
        args.checkpoint_dir = args.checkpoint_dir or "results/checkpoints"
    if args.metrics:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    try:
        trainer = Trainer(args, loopback=embedded, sources=sources)
    except Exception as e:  # data a flag points at, found wrong while the loaders are built (shard sources)
        line = data_error(e, args)
        if line is None:
            raise
        print(line, file=sys.stderr)
        if em is not None:
            em.stop()
        return 2
    # SIGTERM (a preempted VM, a supervisor stopping us): finish the step, checkpoint, leave with status 143
    signal.signal(signal.SIGTERM, lambda signum, frame: trainer.request_stop("SIGTERM"))
    try:
        if em is not None and args.peers > 1:
            from hivedata.tools.embedded import start_extra_peers

            procs = start_extra_peers(args, argv)
            args.wait_peers = args.peers
        summary = trainer.run()
    except KeyboardInterrupt:
        print("train.py: interrupted; the checkpoint (if any) is in --checkpoint_dir", file=sys.stderr)
        return 130
    except HivedataError as e:  # an outage (or unreadable data) mid-run: one line, not a traceback
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"train.py: error: {first}\n  training stopped; the checkpoint (if any) is in --checkpoint_dir. "
              "--max_missing lets a few unreadable samples per epoch be skipped", file=sys.stderr)
        return 1
    finally:
        trainer.close()
        for p in procs:
            p.wait()
        if em is not None:
            em.stop()
    print(json.dumps({k: v for k, v in summary.items() if k != "group_sizes"} |
                     {"averaged_with_max": max((n for _, n in summary["group_sizes"]), default=1)}))
    if args.metrics and not args.embedded_peer:
        from hivedata.train.metrics import read_metrics
        from hivedata.train.plot import plot_metrics

        png = str(Path(args.metrics).with_suffix(".png"))
        plot_metrics(read_metrics(args.metrics), png, title=f"{args.arch} on gs://{args.bucket}")
        print(f"metrics: {args.metrics}, plot: {png}")
    if summary.get("stopped_by") == "SIGTERM":
        return 128 + signal.SIGTERM
    return 0 if all(p.returncode == 0 for p in procs) else 1
