"""How long a training peer's loop is blocked in opt.step() while the swarm averages: delayed updates off vs on.

N peers on loopback, each its own process with its own hivemind DHT, run the optimizer train.py builds
(hivedata.train.parts.build_learner: the real model's parameters, SGD with the schedule, fp16 gradient
compression, BatchNorm buffers as extra tensors) for a fixed time, once with ``--delayed_updates off`` and once
with ``on`` -- the same run, the same machine.

The accelerator is simulated: instead of a forward/backward pass, each step sleeps ``--compute_s`` (the time a GPU
would spend on ``--batch_size`` samples, off the CPU) and then hands the optimizer gradients of the real model's
size (random, made once). Everything hivemind does -- accumulating the gradients, matchmaking, the all-reduce,
the optimizer step, applying delayed updates -- is real and runs on this machine's cores, which a sleeping
"GPU" leaves free, as a real GPU peer's host CPU is free while its kernels run. On a CPU peer compute and
averaging share the cores, and overlap gains nothing (see README).

The default is a GPU peer at ~1,000 images/s (ResNet-50 at 224 px on one consumer GPU) that contributes its half
of a 16,384-sample global batch (large-batch training with LARS) to a 2-peer swarm: 8 steps of 1,024 samples,
1 s each (gradients accumulated on the device over smaller micro-batches before opt.step(), as large-batch peers
do), 8 s of compute per global epoch. Delayed updates can hide a round only if it takes less than that (the
"off" rows' longest step shows how long a round blocks here); a swarm whose rounds take longer than an epoch's
compute needs a larger --target_batch_size, or it stays partly blocked with delayed updates too.

Per peer and mode it prints samples/s, the share of wall time the training thread spent inside opt.step()
(from the first global epoch on: the first matchmaking is start-up), global epochs reached, and the gradient
rounds with their group sizes (from hivemind's own round results, SwarmOptimizer.group_sizes).

    python benchmarks/swarm_bench.py                      # 2 peers, resnet50, 90 s per mode
    python benchmarks/swarm_bench.py --peers 3 --seconds 120 --compute_s 0.25 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peer_flags(args: argparse.Namespace, mode: str, run_id: str) -> argparse.Namespace:
    """train.py's flags for one benchmark peer (no bucket: the swarm part only)."""
    from hivedata.train.config import fill_defaults, parse_args

    flags = parse_args(["--arch", args.arch, "--device", "cpu", "--run_id", run_id,
                        "--batch_size", str(args.batch_size), "--target_batch_size", str(args.target_batch_size),
                        "--matchmaking_time", str(args.matchmaking_time),
                        "--averaging_timeout", str(args.averaging_timeout), "--delayed_updates", mode,
                        "--no_progress"])
    return fill_defaults(flags, embedded=False)


def run_peer(args: argparse.Namespace, mode: str, run_id: str, initial_peers: list[str], out: mp.Queue,
             go: mp.Event, rank: int) -> None:
    """One peer: joins, waits for `go`, trains on simulated compute for args.seconds, reports on `out`."""
    mp.set_start_method("fork", force=True)  # hivemind forks its DHT and averager processes
    import hivemind
    import torch

    from hivedata.train.parts import build_learner
    from hivedata.train.quiet import quiet_hivemind
    from hivedata.train.swarm_optimizer import leave_swarm

    torch.set_num_threads(1)
    flags = peer_flags(args, mode, run_id)
    quiet_hivemind()  # as train.py does, before the DHT process starts
    dht = hivemind.DHT(start=True, initial_peers=initial_peers, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    out.put(("maddrs", rank, [str(m) for m in dht.get_visible_maddrs()]))
    learner = build_learner(flags, dht=dht, device=torch.device("cpu"), num_classes=1000, train_samples=10 ** 9)
    model, opt = learner.model, learner.opt
    gen = torch.Generator().manual_seed(rank)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in model.parameters()]
    out.put(("ready", rank, None))
    go.wait()
    steps: list[tuple[float, float, int]] = []  # (when the step's compute began, seconds in opt.step(), epoch)
    end = time.time() + args.seconds
    try:
        while time.time() < end:
            t0 = time.time()
            time.sleep(args.compute_s)  # the accelerator's forward and backward
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad()
            steps.append((t0, time.perf_counter() - t1, opt.local_epoch))
        done_at = time.time()
        first = next((i for i, (_, _, e) in enumerate(steps) if e > steps[0][2]), len(steps))
        window = steps[first + 1:]  # from the first step after the first epoch boundary
        wall = done_at - window[0][0] if window else 0.0
        per_step = [s for _, s, _ in window]
        out.put(("result", rank, {
            "mode": mode, "samples_per_s": len(window) * args.batch_size / wall if wall else 0.0,
            "blocked_share": sum(per_step) / wall if wall else 0.0, "steps": len(window), "window_s": wall,
            "step_s_median": statistics.median(per_step) if per_step else 0.0,
            "step_s_max": max(per_step) if per_step else 0.0, "global_epochs": opt.local_epoch,
            "rounds": len(opt.group_sizes), "group_sizes": [n for _, n in opt.group_sizes]}))
    finally:
        leave_swarm(opt, dht)


def run_mode(args: argparse.Namespace, mode: str) -> list[dict]:
    """All peers of one mode, started together once each has joined and built its optimizer; results by rank."""
    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    run_id = f"swarm-bench-{mode}-{os.getpid()}"
    procs: list = []
    got: dict[str, dict[int, object]] = {"maddrs": {}, "ready": {}, "result": {}}

    def expect(kind: str, count: int, timeout: float) -> None:
        """Reads messages until `count` of `kind` have arrived (others are kept for their own wait)."""
        while len(got[kind]) < count:
            got_kind, rank, value = out.get(timeout=timeout)
            got[got_kind][rank] = value

    try:
        initial: list[str] = []
        for rank in range(args.peers):
            procs.append(ctx.Process(target=run_peer, args=(args, mode, run_id, initial, out, go, rank)))
            procs[-1].start()
            expect("maddrs", rank + 1, 120)
            initial = list(got["maddrs"][0])  # everyone joins the first peer
        expect("ready", args.peers, 300)
        go.set()
        expect("result", args.peers, args.seconds + 300)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return [got["result"][r] for r in sorted(got["result"])]


def main(argv: list[str] | None = None) -> int:
    """Runs each mode, prints the table (and the JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=120.0, help="training time per mode")
    parser.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet50"])
    parser.add_argument("--compute_s", type=float, default=1.0, help="simulated accelerator seconds per step")
    parser.add_argument("--batch_size", type=int, default=1024, help="samples per step (per peer)")
    parser.add_argument("--target_batch_size", type=int, default=16384, help="samples per global epoch")
    parser.add_argument("--matchmaking_time", type=float, default=5.0)
    parser.add_argument("--averaging_timeout", type=float, default=60.0)
    parser.add_argument("--modes", default="off,on", help="--delayed_updates values to run, in order")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    os.environ["HIVEMIND_LOGLEVEL"] = "ERROR"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    print(f"{args.peers} peers, {args.arch}, {args.compute_s} s of simulated compute per step of {args.batch_size} "
          f"samples, global batch {args.target_batch_size}, {args.seconds:g} s per mode, {os.cpu_count()} cores",
          flush=True)
    table = {}
    for mode in modes:
        table[mode] = run_mode(args, mode)
    print(f"{'delayed':>8} {'peer':>4} {'samples/s':>10} {'blocked':>8} {'step p50':>9} {'step max':>9} "
          f"{'epochs':>6} {'rounds':>6}  group sizes")
    for mode, rows in table.items():
        for rank, r in enumerate(rows):
            sizes = r["group_sizes"]
            print(f"{mode:>8} {rank:>4} {r['samples_per_s']:>10.0f} {r['blocked_share']:>7.1%} "
                  f"{r['step_s_median']:>8.2f}s {r['step_s_max']:>8.2f}s {r['global_epochs']:>6} {r['rounds']:>6}  "
                  f"{dict((n, sizes.count(n)) for n in sorted(set(sizes)))}")
    if "off" in table and "on" in table:
        for rank in range(args.peers):
            off, on = table["off"][rank], table["on"][rank]
            print(f"peer {rank}: blocked {off['blocked_share']:.1%} -> {on['blocked_share']:.1%}, samples/s "
                  f"x{on['samples_per_s'] / max(off['samples_per_s'], 1e-9):.2f} with delayed updates")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "modes": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
