"""`python -m hivedata …`: emulator, demo, index, pack, plan, plot, verify."""

from __future__ import annotations

import argparse
import signal
import sys

from hivedata.tools.synthetic import SyntheticSpec


def _spec(args: argparse.Namespace) -> SyntheticSpec:
    return SyntheticSpec(num_classes=args.classes, train_per_class=args.train_per_class,
                         val_per_class=args.val_per_class, seed=args.seed)


def _add_data_args(p: argparse.ArgumentParser, train: int) -> None:
    p.add_argument("--classes", type=int, default=10, help="classes in the generated dataset")
    p.add_argument("--train-per-class", type=int, default=train, help="training images per class")
    p.add_argument("--val-per-class", type=int, default=20, help="validation images per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images")


def cmd_emulator(args: argparse.Namespace) -> int:
    """Keeps an emulator running (optionally with demo data) until Ctrl-C."""
    from hivedata.tools.demo import DEMO_BUCKET, upload_demo_data
    from hivedata.tools.emulator import Emulator

    try:  # Ctrl-C may come as soon as the address is printed: the emulator stops on the way out of `with`
        with Emulator(port=args.port, data_dir=args.data_dir) as em:
            if args.demo_data:
                upload_demo_data(_spec(args))
                print(f"demo data: gs://{DEMO_BUCKET}/train and gs://{DEMO_BUCKET}/val")
            print(f"fake-gcs-server running at {em.url}; in another shell:")
            print(f"  export STORAGE_EMULATOR_HOST={em.url}", flush=True)
            signal.pause()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Emulator + generated data + index + native fetch of every object, then a summary."""
    from hivedata.tools.demo import run_demo

    print("starting the embedded GCS and uploading generated ImageNet-like data ...", flush=True)
    report = run_demo(_spec(args))
    for line in report.lines():
        print(line)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Lists (or loads from cache) the index of a gs:// prefix and prints a summary."""
    from hivedata.sources.prefix import cache_path, load_index

    idx = load_index(args.url, labels=args.labels, refresh=args.refresh)
    print(f"{idx.url}: {len(idx)} objects, {len(idx.classes)} classes, {int(idx.sizes.sum()) / 1e9:.2f} GB")
    print(f"cached at {cache_path(args.url, labels=args.labels)}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Draws a metrics file's curves to PNG."""
    from hivedata.train.plot import main as plot_main

    return plot_main([args.metrics] + (["--out", args.out] if args.out else []) + (["--title", args.title]
                                                                                   if args.title else []))


def cmd_pack(args: argparse.Namespace) -> int:
    """Packs SRC into WebDataset tar shards under DST with an index (resuming)."""
    from hivedata.common import parse_size
    from hivedata.tools.pack import pack

    try:
        size = parse_size(args.shard_size)
        pack(args.src, args.dst, shard_size=size, stem=args.name, verify=args.verify, progress=not args.quiet,
             order=args.order, seed=args.seed, uploads=args.uploads, readers=args.readers,
             max_memory=parse_size(args.max_memory), fetch_in_flight=args.fetch_in_flight)
    except (ValueError, FileNotFoundError) as e:
        print(f"hivedata pack: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Prints what a swarm will ask of the bucket per read strategy, and a verdict."""
    from hivedata.common import parse_size
    from hivedata.tools.plan import Bucket, imagenet_layout, layout_of, make_plan

    shard_bytes = parse_size(args.shard_size)
    url = args.source or args.shards
    if url is None:
        layout = imagenet_layout(shard_bytes)
    else:
        from hivedata.gcs.paths import storage_endpoint
        from hivedata.sources.resolve import SourceOptions, open_source

        source = open_source(url, SourceOptions(storage_endpoint(None), "auto", labels=args.labels))
        if args.shards and not source.coalesces:
            raise ValueError(f"--shards {url} is not a set of shards (a …/name.index.npz or …/*.tar)")
        layout = layout_of(source, shard_bytes)
    bucket = Bucket(initial_reads_per_s=args.initial_reads_per_s, doubling_minutes=args.doubling_minutes,
                    max_ramp_minutes=args.max_ramp_minutes, usd_per_10k_ops=args.price_per_10k_ops)
    plan = make_plan(layout, peers=args.peers, images_per_s=args.images_per_s, batch_size=args.batch_size,
                     block_size=args.block_size, coalesce_gap=parse_size(args.coalesce_gap), bucket=bucket)
    for line in plan.table():
        print(line)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Decodes every image of URL whole, strictly; one line per broken one, a summary; 1 if any is broken."""
    from hivedata.tools.verify import VerifyReport, verify

    report = VerifyReport()
    for item in verify(args.url, labels=args.labels, threads=args.threads, max_pixels=args.max_pixels):
        if isinstance(item, VerifyReport):
            report = item
        else:
            print(f"{item[0]}\t{item[1]}", flush=True)
    print(f"hivedata verify: {report.summary()}", file=sys.stderr)
    return 1 if report.broken else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the hivedata command."""
    ap = argparse.ArgumentParser(prog="hivedata", description="Stream ImageNet from GCS into training.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("emulator", help="run a local GCS emulator and print STORAGE_EMULATOR_HOST")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--data-dir", help="keep the emulator's data here (default: a temporary directory)")
    p.add_argument("--demo-data", action="store_true", help="upload the generated demo dataset")
    _add_data_args(p, train=100)
    p.set_defaults(fn=cmd_emulator)
    p = sub.add_parser("demo", help="the embedded default end to end: emulator, data, index, fetch")
    _add_data_args(p, train=100)
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("index", help="index a gs:// prefix (cached locally)")
    p.add_argument("url", help="gs://bucket/prefix")
    p.add_argument("--labels", help="labels file for a flat validation folder (path or gs://); none: a "
                                    "well-known one beside the folder (LOC_val_solution.csv, devkit ground truth)")
    p.add_argument("--refresh", action="store_true", help="list the bucket again even if cached")
    p.set_defaults(fn=cmd_index)
    p = sub.add_parser("pack", help="pack a dataset into WebDataset tar shards + an index (resumable)")
    p.add_argument("src", help="gs://bucket/prefix or a local directory, ILSVRC layout (<class>/<file>.JPEG)")
    p.add_argument("dst", help="gs://bucket/prefix or a local directory for the shards and the index")
    p.add_argument("--shard-size", default="256MB", help="largest shard (e.g. 256MB, 1GiB)")
    p.add_argument("--name", help="shard name stem, e.g. train -> train-000000.tar (default: SRC's last part)")
    p.add_argument("--verify", type=int, default=0, metavar="N", help="compare N random packed samples with SRC")
    p.add_argument("--order", default="random", choices=["random", "sorted"],
                   help="sample order across shards: random (seeded; every shard holds every class) or sorted")
    p.add_argument("--seed", type=int, default=0, help="seed of the random order")
    p.add_argument("--quiet", action="store_true", help="no progress (else a live line on a terminal, a log line "
                                                        "every 30 s otherwise)")
    p.add_argument("--uploads", type=int, default=8, help="shards uploaded at once")
    p.add_argument("--readers", type=int, default=2, help="shards read at once")
    p.add_argument("--fetch-in-flight", type=int, default=64, help="GETs in flight per reader")
    p.add_argument("--max-memory", default="4GB", help="shards held in memory at once, at most about this much")
    p.set_defaults(fn=cmd_pack)
    p = sub.add_parser("plan", help="what a swarm asks of the bucket: GETs/s, egress, ramp-up, cost, per strategy")
    p.add_argument("--peers", type=int, required=True, help="training peers reading at once")
    p.add_argument("--images-per-s", type=float, required=True, help="images per second each peer reads")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--source", help="the dataset (gs://bucket/prefix, shards, a folder); default: ImageNet "
                                       "figures (1,281,167 images, ~110 KB each)")
    what.add_argument("--shards", help="packed shards (gs://…/name.index.npz or gs://…/*.tar)")
    p.add_argument("--labels", help="labels file for a flat folder --source (as for index)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=64, help="per-peer batch size (train.py's)")
    p.add_argument("--block_size", "--block-size", type=int, default=64, help="--shuffle block run length (train.py's)")
    p.add_argument("--coalesce-gap", default="64KiB", help="shard members this close share one GET (the Loader's)")
    p.add_argument("--shard-size", default="256MB", help="shard size assumed for data not packed yet (pack's)")
    p.add_argument("--price-per-10k-ops", type=float, default=0.004,
                   help="USD per 10,000 Class B operations (default: an assumption, GCS Standard list price as of "
                        "2025-01)")
    p.add_argument("--initial-reads-per-s", type=float, default=5000, help="the bucket's read rate to start with")
    p.add_argument("--doubling-minutes", type=float, default=20, help="the bucket may double its rate this often")
    p.add_argument("--max-ramp-minutes", type=float, default=60, help="longest ramp-up a strategy may need to fit")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("plot", help="draw a training metrics file (.jsonl/.csv) to PNG")
    p.add_argument("metrics", help="metrics file written by train.py")
    p.add_argument("--out", help="PNG path (default: next to the metrics file)")
    p.add_argument("--title", help="plot title")
    p.set_defaults(fn=cmd_plot)
    p = sub.add_parser("verify", help="decode every image whole with the strict checks; list the broken ones")
    p.add_argument("url", help="gs://bucket/prefix, shards (…/x.index.npz, …/*.tar) or a local directory")
    p.add_argument("--labels", help="labels file for a flat folder (as for index)")
    p.add_argument("--threads", type=int, help="decode threads (default: all cores)")
    p.add_argument("--max-pixels", type=int, help="pixel budget (default: the loader's, 64 MP)")
    p.set_defaults(fn=cmd_verify)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except Exception as e:  # data a flag points at that is missing or wrong: one line; anything else: a traceback
        line = data_error(e, args)
        if line is None:
            raise
        print(f"hivedata {args.cmd}: error: {line}", file=sys.stderr)
        return 2


def data_error(exc: BaseException, args: argparse.Namespace) -> str | None:
    """'<argument>: <what is wrong>' for a data-location error of `hivedata index`; None for anything else."""
    if args.cmd == "plan":
        return _plan_error(exc, args)
    if args.cmd not in ("index", "verify"):
        return None
    from hivedata.gcs.paths import parse_gcs_url
    from hivedata.sources.labels import blame

    try:
        loc = parse_gcs_url(args.url)
    except ValueError:
        return None
    locations = {f"gs://{loc.bucket}/{loc.prefix}": "URL"}
    if args.labels and args.labels.startswith("gs://"):
        locations[args.labels] = "--labels"
    return blame(exc, locations, bucket=loc.bucket, bucket_flag="URL", labels_flag="--labels", default="URL")


def _plan_error(exc: BaseException, args: argparse.Namespace) -> str | None:
    """'<flag>: <what is wrong>' for a bad plan argument or an unreadable --source/--shards; None otherwise."""
    if isinstance(exc, ValueError):
        return str(exc).removeprefix("plan: ")
    url = args.source or args.shards
    if url is None or not isinstance(exc, (OSError, LookupError)):
        return None
    return f"{'--source' if args.source else '--shards'} {url}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
