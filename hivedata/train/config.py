"""train.py's flags: the original peer script's (same meaning) plus ours, validated before anything starts."""

from __future__ import annotations

import argparse
import os


def missing_budget_flag(text: str) -> int | float:
    """--max_missing's value: an int is a count of samples, anything else a fraction in (0, 1)."""
    from hivedata.loader.failures import check_max_missing

    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        return check_max_missing(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """All flags, with help text."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Collaborative ResNet training with hivemind, streaming ImageNet from GCS with hivedata. "
                    "With no bucket it runs on an embedded GCS emulator with a small generated dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--bucket_name", "--bucket", dest="bucket", default=None,
                   help="GCS bucket with the dataset (none: the embedded emulator with generated data)")
    d.add_argument("--train_prefix", default="train",
                   help="training images: <prefix>/<wnid>/<file>.JPEG, packed shards <name>.index.npz "
                        "(python -m hivedata pack), or WebDataset shards <folder>/*.tar")
    d.add_argument("--shuffle", default="global", choices=["global", "block"],
                   help="block: a batch is a few runs of neighbouring samples, far fewer GETs (shards)")
    d.add_argument("--block_size", type=int, default=64, help="--shuffle block: samples per run")
    d.add_argument("--cache_dir", default=None, help="local disk cache of fetched bytes (none: no cache)")
    d.add_argument("--cache_size", default="20GB", help="the disk cache's size bound")
    d.add_argument("--val_prefix", default="val", help="validation images: class folders, or flat with --val_labels")
    d.add_argument("--val_labels", default=None,
                   help="labels for a flat validation folder (path or gs://; '<file> <wnid>' lines or "
                        "LOC_val_solution.csv); none: Kaggle's LOC_val_solution.csv or the devkit's "
                        "ILSVRC2012_validation_ground_truth.txt + meta.mat, found beside the folder or above it")
    d.add_argument("--image_size", type=int, default=None, help="training crop size (default 224; 64 embedded)")
    d.add_argument("--backend", default="auto", choices=["auto", "native", "pillow", "dali"], help="decoder")
    d.add_argument("--num_workers", type=int, default=None, help="decode threads (default: usable CPUs)")
    d.add_argument("--ca_bundle", default=None,
                   help="PEM file of CAs to trust for the storage endpoint (a private CA, a corporate TLS proxy); "
                        "default: REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE or SSL_CERT_FILE when set, else the system store")
    d.add_argument("--http_version", default="2", choices=["2", "1.1"],
                   help="2: HTTP/2 over TLS, GETs multiplexed over a few connections (real GCS); 1.1: one "
                        "connection per GET in flight (some proxies)")
    d.add_argument("--strict_decode", action="store_true",
                   help="an image libjpeg warns about (extraneous bytes, a bad progression) is skipped like a "
                        "broken one; default: warnings are counted and named in the loader stats, the image is "
                        "used (as Pillow does); truncated or corrupt images are always skipped")
    d.add_argument("--max_missing", type=missing_budget_flag, default=0,
                   help="samples per epoch that may fail to download (HTTP 401/403/404/410, network errors, "
                        "checksum mismatches after retries) before the peer stops: a fraction of the epoch "
                        "(e.g. 0.001) or a count (e.g. 50); each is replaced by another sample of its batch, "
                        "logged and counted. 0: the first unreadable object stops training, naming it. Images "
                        "that download but do not decode are always skipped and counted")
    cov = p.add_argument_group(
        "coverage", "how the swarm shares out the data. peer: every peer reads its own seeded order, so within a "
        "pass-worth of samples the swarm reads some images several times and skips others. swarm (coordinated "
        "coverage): a data epoch is ONE permutation of the dataset drawn from --seed, split into blocks that the "
        "peers claim through the hivemind DHT and mark done once read, so the swarm reads every sample once per data "
        "epoch; a peer renews its claims while it reads, a killed peer's unfinished blocks are read by the others "
        "--claim_ttl seconds later, a joining peer starts on blocks nobody claimed, and checkpoints record the "
        "swarm's data epoch (the lowest one with a block not read)")
    cov.add_argument("--coverage", default="peer", choices=["peer", "swarm"],
                     help="peer: per-peer orders (--shuffle); swarm: coordinated coverage (--shuffle is then unused: "
                          "blocks of a global permutation, or runs inside one shard for packed shards)")
    cov.add_argument("--coverage_block", type=int, default=None,
                     help="--coverage swarm: samples per claimed block (default 1024, or 1/32 of a smaller dataset, "
                          "at least a batch); with packed shards a block is a run of neighbours in one shard, so its "
                          "reads coalesce. Larger blocks: fewer DHT requests, more re-read when a peer dies")
    cov.add_argument("--claim_ttl", type=float, default=60.0,
                     help="--coverage swarm: seconds a claim lives unless renewed (renewed every ttl/3 while its "
                          "block is read): how long a killed peer's blocks wait before others read them")
    t = p.add_argument_group("training")
    t.add_argument("--arch", default=None, choices=["resnet18", "resnet50"],
                   help="model (default resnet50; resnet18 embedded)")
    t.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    t.add_argument("--batch_size", type=int, default=None, help="per-peer batch size (default 64; 32 embedded)")
    t.add_argument("--target_batch_size", type=int, default=None,
                   help="samples the whole swarm accumulates per optimizer step (= one global epoch of hivemind)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.1 x target_batch/256)")
    t.add_argument("--epochs", type=float, default=None,
                   help="passes over the training set for the whole swarm (the LR schedule spans them)")
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "lars"], help="LARS helps very large batches")
    t.add_argument("--weight_decay", type=float, default=5e-5, help="not applied to BN parameters and biases")
    t.add_argument("--warmup_epochs", type=float, default=None, help="linear warmup, in passes over the data")
    t.add_argument("--lr_decay", default="cosine", choices=["cosine", "poly"], help="decay after warmup")
    t.add_argument("--label_smoothing", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0, help="base seed; each peer derives its data order from it")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    t.add_argument("--max_minutes", type=float, default=None, help="stop after this long (checkpointing first)")
    t.add_argument("--target_accuracy", type=float, default=None,
                   help="stop once validation top-1 reaches this (0..1)")
    t.add_argument("--log_every", type=int, default=None,
                   help="metrics row and progress every N steps (default: 1; 20 on CUDA, where reading the loss "
                        "each step would make the GPU wait for the host)")
    v = p.add_argument_group("validation")
    v.add_argument("--val_every", type=int, default=None, help="validate every N global epochs")
    v.add_argument("--val_batches", type=int, default=None, help="at most this many validation batches")
    s = p.add_argument_group("swarm")
    s.add_argument("--run_id", default="hivedata-resnet", help="names the collaboration (DHT keys, bucket folder)")
    s.add_argument("--initial_peer", action="append", default=[], help="multiaddr of a peer to join (repeatable)")
    s.add_argument("--announce_gcs_path", default=None, help="write this peer's multiaddrs to this gs:// object")
    s.add_argument("--fetch_gcs_path", default=None, help="read initial peers from this gs:// object")
    s.add_argument("--host_port", type=int, default=0, help="TCP port for the DHT (0: any free port)")
    s.add_argument("--announce_maddr", action="append", default=[], help="public multiaddr to announce (NAT)")
    s.add_argument("--identity_path", default=None, help="private key file: a stable peer id across restarts")
    s.add_argument("--client_mode", action="store_true", help="not reachable from outside: connect out only")
    s.add_argument("--matchmaking_time", type=float, default=5.0, help="seconds to gather peers for averaging")
    s.add_argument("--averaging_timeout", type=float, default=60.0, help="give up an averaging round after this")
    o = p.add_argument_group(
        "overlap", "hivemind's delayed updates: averaging and the optimizer step run in the background while the "
                   "next gradients are computed, so the accelerator does not idle at the end of each global epoch. "
                   "The price is one step of staleness (gradients are computed on parameters one update old). "
                   "Worth it when compute runs on an accelerator; on a CPU peer the averaging competes with "
                   "training for the same cores and gains nothing")
    o.add_argument("--delayed_updates", default="auto", choices=["auto", "on", "off"],
                   help="average gradients and run the optimizer step in the background (hivemind's "
                        "delay_grad_averaging + delay_optimizer_step); auto: on with --device cuda, else off")
    o.add_argument("--offload_optimizer", default="auto", choices=["auto", "on", "off"],
                   help="keep the optimizer state in host memory (saves accelerator memory; needed by "
                        "--delayed_updates); auto: on, as hivemind does")
    o.add_argument("--delay_state_averaging", default="auto", choices=["auto", "on", "off"],
                   help="average parameters and BatchNorm statistics in the background; auto: on, as hivemind does")
    c = p.add_argument_group("checkpoints and metrics")
    c.add_argument("--checkpoint_dir", default=None, help="local directory or gs://bucket/prefix")
    c.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in --checkpoint_dir")
    c.add_argument("--metrics", default=None, help="per-step metrics file (.jsonl or .csv)")
    c.add_argument("--no_progress", dest="progress", action="store_false",
                   help="no progress bar (it is shown only when stderr is a terminal anyway)")
    c.add_argument("--peers", type=int, default=1, help="embedded default: start this many local peers")
    c.add_argument("--embedded_peer", action="store_true", help=argparse.SUPPRESS)  # set on local extra peers
    c.add_argument("--wait_peers", type=int, default=1, help=argparse.SUPPRESS)  # local peers start together
    return p


def validate(args: argparse.Namespace) -> list[str]:
    """Problems with a combination of flags (empty when fine)."""
    problems = []
    for name in ("batch_size", "target_batch_size", "image_size", "val_every", "val_batches", "num_workers",
                 "block_size", "log_every", "coverage_block"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            problems.append(f"--{name} must be positive, got {value}")
    if args.batch_size and args.target_batch_size and args.target_batch_size < args.batch_size:
        problems.append(f"--target_batch_size ({args.target_batch_size}) is smaller than --batch_size "
                        f"({args.batch_size})")
    if args.lr is not None and args.lr <= 0:
        problems.append(f"--lr must be positive, got {args.lr}")
    if args.epochs is not None and args.epochs <= 0:
        problems.append(f"--epochs must be positive, got {args.epochs}")
    if args.resume and not args.checkpoint_dir:
        problems.append("--resume needs --checkpoint_dir")
    if args.claim_ttl < 3:
        problems.append(f"--claim_ttl must be at least 3 seconds (claims are renewed every ttl/3), "
                        f"got {args.claim_ttl}")
    if args.peers < 1:
        problems.append(f"--peers must be >= 1, got {args.peers}")
    if args.peers > 1 and args.bucket:
        problems.append("--peers starts local peers on the embedded default only; on a real bucket run one "
                        "train.py per machine")
    if args.client_mode and (args.announce_gcs_path or args.announce_maddr):
        problems.append("--client_mode peers are not reachable: they cannot --announce_gcs_path/--announce_maddr")
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        problems.append(f"--target_accuracy is a fraction in (0, 1], got {args.target_accuracy}")
    if args.identity_path and not os.path.isdir(os.path.dirname(os.path.abspath(args.identity_path))):
        problems.append(f"--identity_path: directory of {args.identity_path} does not exist")
    if args.cache_dir is not None:
        from hivedata.loader.disk_cache import parse_cache_size

        try:
            parse_cache_size(args.cache_size)
        except ValueError as e:
            problems.append(f"--cache_size: {e}")
    if args.delayed_updates == "on" and args.offload_optimizer == "off":
        problems.append("--delayed_updates on needs the optimizer offloaded: drop --offload_optimizer off")
    if not 0 <= args.label_smoothing < 1:
        problems.append(f"--label_smoothing must be in [0, 1), got {args.label_smoothing}")
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses and validates; exits with a clear message (status 2) on a bad combination."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = validate(args)
    if problems:
        parser.error("; ".join(problems))
    return args


EMBEDDED_DEFAULTS = dict(arch="resnet18", image_size=64, batch_size=32, target_batch_size=128, lr=0.4, epochs=20,
                         warmup_epochs=2, val_every=8, val_batches=None)
REAL_DEFAULTS = dict(arch="resnet50", image_size=224, batch_size=64, target_batch_size=4096, lr=None, epochs=90,
                     warmup_epochs=5, val_every=1, val_batches=50)


def fill_defaults(args: argparse.Namespace, *, embedded: bool) -> argparse.Namespace:
    """Fills unset flags with the embedded (CPU-sized) or the real-ImageNet defaults."""
    for key, value in (EMBEDDED_DEFAULTS if embedded else REAL_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.lr is None:
        args.lr = 0.1 * args.target_batch_size / 256
    return args
