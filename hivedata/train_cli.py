"""train.py: parse flags, set up the embedded default if no bucket is given, train, summarise."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

from .train_config import fill_defaults, parse_args


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
    from .trainer import Trainer

    em, procs = None, []
    if args.bucket is None:
        from .embedded import EMBEDDED_BUCKET, prepare_emulator

        print("embedded default: starting a local GCS emulator with a generated 10-class dataset ...", flush=True)
        em = prepare_emulator()
        args.bucket = EMBEDDED_BUCKET
        args.metrics = args.metrics or "results/metrics.jsonl"
        args.checkpoint_dir = args.checkpoint_dir or "results/checkpoints"
    if args.metrics:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(args, loopback=embedded)
    # SIGTERM (a preempted VM, a supervisor stopping us): finish the step, checkpoint, leave with status 143
    signal.signal(signal.SIGTERM, lambda signum, frame: trainer.request_stop("SIGTERM"))
    try:
        if em is not None and args.peers > 1:
            from .embedded import start_extra_peers

            procs = start_extra_peers(args, argv)
            args.wait_peers = args.peers
        summary = trainer.run()
    except KeyboardInterrupt:
        print("train.py: interrupted; the checkpoint (if any) is in --checkpoint_dir", file=sys.stderr)
        return 130
    finally:
        trainer.close()
        for p in procs:
            p.wait()
        if em is not None:
            em.stop()
    print(json.dumps({k: v for k, v in summary.items() if k != "group_sizes"} |
                     {"averaged_with_max": max((n for _, n in summary["group_sizes"]), default=1)}))
    if args.metrics and not args.embedded_peer:
        from .metrics import read_metrics
        from .plot import plot_metrics

        png = str(Path(args.metrics).with_suffix(".png"))
        plot_metrics(read_metrics(args.metrics), png, title=f"{args.arch} on gs://{args.bucket}")
        print(f"metrics: {args.metrics}, plot: {png}")
    if summary.get("stopped_by") == "SIGTERM":
        return 128 + signal.SIGTERM
    return 0 if all(p.returncode == 0 for p in procs) else 1
