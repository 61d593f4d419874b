"""Fetch and loader figures over a simulated long link: plain HTTP and HTTPS (private CA), at several round-trip times.

Real GCS is HTTPS only (HTTP/2 over ALPN) and 30-100 ms from a training machine; the other benchmarks talk
plain HTTP to an emulator on loopback. This one starts fake-gcs-server twice on one data directory (HTTP, and
HTTPS with a certificate from a freshly made private CA, tests/support/tls.py), uploads photo-like JPEGs
(~105 KB mean; --distinct different images repeated under --objects names), and for every (scheme, rtt)
puts a user-space delay line (tests/support/delay_line.py, run as a child process) between this process and
the emulator. The 0 ms row goes through the line too (no delay), so rows differ by the delay only; a
`direct` row per scheme (no line at all; --no_direct drops it) shows what the line itself costs. Per row:

  fetch        objects/s and client CPU s per 1,000 objects of Fetcher.fetch over every object (warm pool)
  warm-up      wall and CPU seconds of a fresh Fetcher's first fetch of max_in_flight objects (connections,
               TLS handshakes)
  loader       images/s and client CPU ms per image of Loader(backend="native") on the train transform
               (--loader_seconds or --batches, whichever ends first), and the consumer's wait per batch
               (p50 / p99 of the time next() blocks)
  engine       what Fetcher.stats() reports (latency p50/p99, retries; `connects`, `http2`, `hedges` when the
               engine has them)
  line CPU     CPU seconds of the delay line process per 1,000 objects of the fetch part (it shares the cores)
  stragglers   once, over http through the fault proxy: one epoch in order with 1% of GETs answering
               --straggler_s late; the worst and p99 batch wait with hedging (the default) and without, and
               the hedges it took

CPU is time.process_time() of this process (all its threads); the emulator and the delay line are other
processes. The CA reaches the engine as ca_bundle= when Fetcher/Loader take it, else via CURL_CA_BUNDLE
(REQUESTS_CA_BUNDLE and SSL_CERT_FILE are pointed at it too while an https row runs: requests lists).
A part that fails (e.g. an engine that does not trust the CA) is reported with its error; the run goes on.

JSON schema (--json PATH):
    {"objects": int, "mean_object_bytes": float, "in_flight": int, "batch_size": int, "image_size": int,
     "cores": int, "loadavg_start": [float], "loadavg_end": [float], "emulator_alpn": str | null,
     "rows": [{"scheme": "http" | "https", "rtt_ms": float | null (direct), "ca_via": str | null,
               "fetch_objects_per_s": float, "fetch_mb_per_s": float, "fetch_cpu_s_per_1000": float,
               "warmup_wall_s": float, "warmup_cpu_s": float,
               "loader_images_per_s": float, "loader_cpu_ms_per_image": float, "loader_batches": int,
               "batch_wait_p50_ms": float, "batch_wait_p99_ms": float, "batch_wait_max_ms": float,
               "loader_open_s": float,                     # Loader(...) construction: listing the prefix
               "line_cpu_s_per_1000": float, "line_cpu_s_fetch": float, "line_cpu_s_loader": float,
               "engine": {...},                            # Fetcher.stats() after the fetch run
               "loader_stats": {...},                      # Loader.stats() (without skipped_names)
               "errors": {"fetch": str, "loader": str}}],  # only the parts that failed; their figures are null
     "ratios_vs_0ms": {"http": {"direct" | "50" | ...: {figure: ratio}}, "https": {...}},
     "https_vs_http_0ms": {figure: ratio}}
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivedata import Loader  # noqa: E402
from hivedata.gcs.fetch import Fetcher  # noqa: E402
from hivedata.gcs.transport import Transport  # noqa: E402
from hivedata.tools.emulator import Emulator  # noqa: E402
from hivedata.tools.synthetic import SyntheticSpec, make_jpeg  # noqa: E402
from tests.support.delay_line import DelayLineProcess  # noqa: E402
from tests.support.fault_proxy import FaultProxy  # noqa: E402
from tests.support.tls import make_tls  # noqa: E402

BUCKET = "hivedata-wan-bench"
CLASSES = 10
# figure -> (column heading, format); each also gets a ratio against the 0 ms row of its scheme
FIGURES = {
    "fetch_objects_per_s": ("fetch obj/s", "{:.0f}"),
    "fetch_cpu_s_per_1000": ("fetch CPU s/1k", "{:.3f}"),
    "warmup_wall_s": ("warm wall s", "{:.3f}"),
    "warmup_cpu_s": ("warm CPU s", "{:.3f}"),
    "loader_images_per_s": ("loader img/s", "{:.0f}"),
    "loader_cpu_ms_per_image": ("loader CPU ms/img", "{:.2f}"),
    "batch_wait_p50_ms": ("wait p50 ms", "{:.1f}"),
    "batch_wait_p99_ms": ("wait p99 ms", "{:.1f}"),
    "line_cpu_s_per_1000": ("line CPU s/1k", "{:.3f}"),
}
ENGINE_KEYS = ("latency_p50_s", "latency_p99_s", "retries", "network_errors", "connects", "http2", "hedges",
               "hedge_wins")


def upload_corpus(em: Emulator, n: int, distinct: int, seed: int = 0) -> tuple[list[str], int]:
    """Uploads n objects under train/<wnid>/ cycling through `distinct` synthetic JPEGs; returns names, bytes."""
    spec = SyntheticSpec(num_classes=CLASSES, seed=seed)
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        images = list(pool.map(lambda i: make_jpeg(i % CLASSES, i, spec, "train"), range(min(n, distinct))))
    names = [f"train/n{i % CLASSES:08d}/n{i % CLASSES:08d}_{i}.JPEG" for i in range(n)]
    em.create_bucket(BUCKET)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: em.upload(BUCKET, names[i], images[i % len(images)]), range(n)))
    return names, sum(len(images[i % len(images)]) for i in range(n))


def alpn(port: int, ca: Path) -> str | None:
    """The protocol the HTTPS server picks when offered h2 and http/1.1 (verified against ca)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as t:
        return t.selected_alpn_protocol()


def ca_route(cls: type) -> str:
    """How the CA reaches `cls`: "ca_bundle=" when its signature takes it, else "CURL_CA_BUNDLE"."""
    return "ca_bundle=" if "ca_bundle" in inspect.signature(cls).parameters else "CURL_CA_BUNDLE"


CA_VARIABLES = ("CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


@contextmanager
def ca_for(cls: type, ca: Path | None):
    """Keyword arguments that make `cls` trust `ca`: ca_bundle= when it takes it, else the CA variables meanwhile.

    Without ca_bundle=, CURL_CA_BUNDLE names the CA, and so do REQUESTS_CA_BUNDLE (which requests, for the
    listing, reads before CURL_CA_BUNDLE) and SSL_CERT_FILE, in case the environment points them elsewhere.
    """
    if ca is None:
        yield {}
        return
    if ca_route(cls) == "ca_bundle=":
        yield {"ca_bundle": str(ca)}
        return
    old = {v: os.environ.get(v) for v in CA_VARIABLES}
    os.environ.update(dict.fromkeys(CA_VARIABLES, str(ca)))
    try:
        yield {}
    finally:
        for v, value in old.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


def describe_error(e: BaseException) -> str:
    """One line: the exception type and the start of its message."""
    msg = " ".join(str(e).split())
    if len(msg) > 400:
        msg = msg[:150] + " ... " + msg[-240:]
    return f"{type(e).__name__}: {msg}"


def measure_fetch(endpoint: str, names: list[str], in_flight: int, ca: Path | None) -> dict[str, Any]:
    """Warm-up (first max_in_flight objects on a fresh Fetcher), then a streaming fetch of every object."""
    out: dict[str, Any] = {}
    with ca_for(Fetcher, ca) as kw:
        with Fetcher(BUCKET, endpoint=endpoint, credentials="anonymous", max_in_flight=in_flight, **kw) as f:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in f.fetch(names[:in_flight], order="completion"):
                pass
            out["warmup_wall_s"], out["warmup_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
            nbytes = count = 0
            c0, t0 = time.process_time(), time.perf_counter()
            for item in f.fetch(names, order="completion"):
                nbytes += len(item.data)
                count += 1
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            out["engine"] = dict(f.stats())
    out |= {"fetch_objects_per_s": count / wall, "fetch_mb_per_s": nbytes / wall / 1e6,
            "fetch_cpu_s_per_1000": cpu / count * 1000, "fetch_wall_s": wall}
    return out


def measure_loader(endpoint: str, args: argparse.Namespace, ca: Path | None) -> dict[str, Any]:
    """Loader(backend="native") over the train prefix for --loader_seconds or --batches after one warm-up batch."""
    out: dict[str, Any] = {}
    with ca_for(Loader, ca) as kw:
        t0 = time.perf_counter()
        loader = Loader(f"gs://{BUCKET}/train", batch_size=args.batch_size, train=True, image_size=args.size,
                        backend="native", endpoint=endpoint, credentials="anonymous", on_error="raise",
                        max_in_flight=args.in_flight, workers=args.workers, **kw)
        out["loader_open_s"] = time.perf_counter() - t0
        try:
            it = iter(loader)
            next(it)  # warm-up: threads, connections, slots
            waits: list[float] = []
            images = 0
            c0, t0 = time.process_time(), time.perf_counter()
            while time.perf_counter() - t0 < args.loader_seconds and len(waits) < args.batches:
                t = time.perf_counter()
                try:
                    x, _ = next(it)
                except StopIteration:  # the next epoch's first batch is waited for like any other
                    it = iter(loader)
                    x, _ = next(it)
                waits.append(time.perf_counter() - t)
                images += x.shape[0]
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            stats = loader.stats()
        finally:
            loader.close()
    w = np.asarray(waits) * 1000
    stats.pop("skipped_names", None)
    out |= {"loader_images_per_s": images / wall, "loader_cpu_ms_per_image": cpu / images * 1000,
            "loader_batches": len(waits), "batch_wait_p50_ms": float(np.percentile(w, 50)),
            "batch_wait_p99_ms": float(np.percentile(w, 99)), "batch_wait_max_ms": float(w.max()),
            "loader_stats": {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))}}
    return out


def measure_stragglers(em: Emulator, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One epoch of the loader (in order) with 1% of GETs answering --straggler_s late (fault proxy), hedged
    (the default) and not hedged, same run: the consumer's worst and p99 wait per batch, and the hedges."""
    slow = names[::100]
    out: dict[str, Any] = {"slow_gets": len(slow), "gets": len(names), "delay_s": args.straggler_s}
    for label, transport in (("hedged", Transport()), ("unhedged", Transport(hedge_budget=0))):
        with FaultProxy(em.url) as proxy:
            for name in slow:
                proxy.add_fault("slow_first_byte", count=1, delay=args.straggler_s, match=name)
            with Loader(f"gs://{BUCKET}/train", batch_size=args.batch_size, train=False, image_size=args.size,
                        backend="native", endpoint=proxy.url, credentials="anonymous", on_error="raise",
                        workers=args.workers, transport=transport) as loader:
                waits = []
                it = iter(loader)
                while True:
                    t = time.perf_counter()
                    try:
                        next(it)
                    except StopIteration:
                        break
                    waits.append(time.perf_counter() - t)
                st = loader.stats()
        w = np.asarray(waits)
        out[label] = {"batch_wait_max_s": float(w.max()), "batch_wait_p99_s": float(np.percentile(w, 99)),
                      "batches": len(waits), "hedges": st["hedges"], "hedge_wins": st["hedge_wins"],
                      "fetch_latency_p99_s": st["fetch_latency_p99_s"], "slow_answered": proxy.stats["slow_first_byte"]}
        print(f"stragglers {label:<8} worst batch wait {w.max():.2f} s, p99 {np.percentile(w, 99):.2f} s, "
              f"hedges {st['hedges']} ({st['hedges'] / len(names):.1%} of GETs)", flush=True)
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    return a / b if a is not None and b else None


def fmt(v: Any, spec: str) -> str:
    """A figure for the table ('-' when missing)."""
    return "-" if v is None else spec.format(v)


def rtt_label(rtt: float | None) -> str:
    """'direct' for a row without a delay line, else the rtt in ms."""
    return "direct" if rtt is None else f"{rtt:g}"


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_tables(rows: list[dict], ratios: dict, cross: dict) -> None:
    """The figures per row, their ratio against the 0 ms row of the scheme, https vs http at 0 ms, errors."""
    heads = [label for label, _ in FIGURES.values()]
    widths = [max(len(h), 8) for h in heads]

    def line(scheme: str, rtt: str, cells: list[str], extra: str = "") -> None:
        print(f"{scheme:<6} {rtt:>6}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
              + (f"  {extra}" if extra else ""))

    print()
    line("scheme", "rtt ms", heads, "engine after the fetch run")
    for r in rows:
        eng = r.get("engine") or {}
        extra = " ".join(f"{k.replace('latency_', 'lat_').removesuffix('_s')}="
                         + (f"{eng[k] * 1000:.1f}ms" if k.startswith("latency") else str(eng[k]))
                         for k in ENGINE_KEYS if k in eng)
        line(r["scheme"], rtt_label(r["rtt_ms"]), [fmt(r.get(k), spec) for k, (_, spec) in FIGURES.items()], extra)
    print("\nratio vs the 0 ms row of the same scheme (direct: no delay line at all)")
    for scheme, by_rtt in ratios.items():
        for rtt, figs in by_rtt.items():
            line(scheme, rtt, [fmt(figs.get(k), "{:.2f}x") for k in FIGURES])
    if cross:
        print("\nhttps / http at 0 ms")
        line("", "", [fmt(cross.get(k), "{:.2f}x") for k in FIGURES])
    failed = [r for r in rows if r.get("errors")]
    if failed:
        print("\nfailed parts")
        for r in failed:
            for part, err in r["errors"].items():
                print(f"  {r['scheme']} {rtt_label(r['rtt_ms'])} {part} (CA: {r.get('ca_via')}): {err}")


def run_row(scheme: str, rtt: float | None, em: Emulator, ca: Path | None, names: list[str],
            args: argparse.Namespace, skip: set[str]) -> dict[str, Any]:
    """One (scheme, rtt) row: a delay line to the emulator (none for rtt None), then fetch and loader through it."""
    via = f"Fetcher {ca_route(Fetcher)}, Loader {ca_route(Loader)}" if ca is not None else None
    row: dict[str, Any] = {"scheme": scheme, "rtt_ms": rtt, "ca_via": via, "errors": {}}
    row |= dict.fromkeys(FIGURES)
    line = DelayLineProcess(em.host, em.port, rtt_ms=rtt, scheme=scheme).start() if rtt is not None else None
    endpoint = line.url if line is not None else em.url
    try:
        for part, fn in (("fetch", lambda: measure_fetch(endpoint, names, args.in_flight, ca)),
                         ("loader", lambda: measure_loader(endpoint, args, ca))):
            if part in skip:
                continue
            t = time.perf_counter()
            line_cpu = process_cpu_s(line.pid) if line is not None else None
            try:
                res = fn()
            except Exception as e:  # a failed part is a result too (e.g. the engine does not trust the CA)
                row["errors"][part] = describe_error(e)
                print(f"{scheme:<5} {rtt_label(rtt):>6}  {part:<6} FAILED after {time.perf_counter() - t:.1f} s: "
                      f"{row['errors'][part]}", flush=True)
                continue
            if line is not None:  # the delay line's CPU over the whole part (warm-up and listing included)
                used = process_cpu_s(line.pid) - line_cpu
                row[f"line_cpu_s_{part}"] = used
                if part == "fetch":
                    row["line_cpu_s_per_1000"] = used / (len(names) + args.in_flight) * 1000
            row |= res
            main_figure = "fetch_objects_per_s" if part == "fetch" else "loader_images_per_s"
            print(f"{scheme:<5} {rtt_label(rtt):>6}  {part:<6} {res[main_figure]:8.0f}/s  "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)
    finally:
        if line is not None:
            line.close()
    if not row["errors"]:
        del row["errors"]
    return row


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=2000, help="objects uploaded and fetched per row")
    ap.add_argument("--distinct", type=int, default=200, help="different images among them (generation time)")
    ap.add_argument("--rtt_ms", default="0,50,100", help="comma-separated round-trip times")
    ap.add_argument("--no_direct", action="store_true", help="no row without a delay line (per scheme)")
    ap.add_argument("--schemes", default="http,https")
    ap.add_argument("--in_flight", type=int, default=256, help="max_in_flight (the default)")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224, help="loader output size (train transform)")
    ap.add_argument("--workers", type=int, default=None, help="loader decode threads (default: all cores)")
    ap.add_argument("--loader_seconds", type=float, default=10.0, help="measured loader time per row, at most")
    ap.add_argument("--batches", type=int, default=300, help="measured loader batches per row, at most")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: fetch, loader, stragglers")
    ap.add_argument("--straggler_s", type=float, default=5.0, help="how late 1%% of GETs answer (stragglers part)")
    ap.add_argument("--quick", action="store_true", help="400 objects, 0 and 50 ms, 4 s of loader per row")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.objects, args.distinct, args.loader_seconds = min(args.objects, 400), min(args.distinct, 100), 4.0
        if args.rtt_ms == ap.get_default("rtt_ms"):
            args.rtt_ms = "0,50"
    rtts: list[float | None] = [float(x) for x in args.rtt_ms.split(",") if x.strip()]
    if not args.no_direct:
        rtts.insert(0, None)
    schemes = [s for s in args.schemes.split(",") if s]
    if set(schemes) - {"http", "https"}:
        ap.error("--schemes takes http and/or https")
    skip = set(filter(None, args.skip.split(",")))
    if args.objects < args.in_flight:
        ap.error(f"--objects must be at least --in_flight ({args.in_flight})")

    loadavg_start = list(os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="hivedata-wan-"))
    rows: list[dict] = []
    try:
        tls = make_tls(work / "tls")
        data = work / "data"
        with Emulator(data_dir=data, export_env=False) as http_em:
            t = time.perf_counter()
            print(f"uploading {args.objects} objects ({args.distinct} distinct JPEGs) ...", flush=True)
            names, nbytes = upload_corpus(http_em, args.objects, args.distinct)
            print(f"  {nbytes / args.objects / 1e3:.0f} KB mean, {time.perf_counter() - t:.1f} s", flush=True)
            # the same data directory over HTTPS: what one server wrote, the other serves
            with Emulator(data_dir=data, export_env=False, scheme="https", cert_file=tls.cert, key_file=tls.key,
                          ca=tls.ca) as https_em:
                proto = alpn(https_em.port, tls.ca)
                print(f"https emulator {https_em.url}: ALPN picks {proto!r} when offered h2", flush=True)
                servers = {"http": (http_em, None), "https": (https_em, tls.ca)}
                for scheme in schemes:
                    em, ca = servers[scheme]
                    for rtt in rtts:
                        rows.append(run_row(scheme, rtt, em, ca, names, args, skip))
            stragglers = measure_stragglers(http_em, names, args) if "stragglers" not in skip else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loadavg_end = list(os.getloadavg())

    ratios: dict[str, dict[str, dict[str, float | None]]] = {}
    for scheme in schemes:
        base = next((r for r in rows if r["scheme"] == scheme and r["rtt_ms"] == 0), None)
        if base is not None:
            ratios[scheme] = {rtt_label(r["rtt_ms"]): {k: ratio(r.get(k), base.get(k)) for k in FIGURES}
                              for r in rows if r["scheme"] == scheme and r is not base}
    zero = {r["scheme"]: r for r in rows if r["rtt_ms"] == 0}
    cross = ({k: ratio(zero["https"].get(k), zero["http"].get(k)) for k in FIGURES}
             if "http" in zero and "https" in zero else {})
    print(f"\n{args.objects} objects, {nbytes / args.objects / 1e3:.0f} KB mean, in flight {args.in_flight}, "
          f"loader batch {args.batch_size} at {args.size} px (train), {os.cpu_count()} cores, load average "
          f"{loadavg_start[0]:.2f} -> {loadavg_end[0]:.2f}; CPU = this process only (line CPU: the delay line's)")
    print_tables(rows, ratios, cross)
    if stragglers:
        h, u = stragglers["hedged"], stragglers["unhedged"]
        print(f"\nstragglers: {stragglers['slow_gets']} of {stragglers['gets']} GETs answer {args.straggler_s:g} s "
              f"late (http, fault proxy); worst batch wait {h['batch_wait_max_s']:.2f} s hedged vs "
              f"{u['batch_wait_max_s']:.2f} s not ({ratio(h['batch_wait_max_s'], u['batch_wait_max_s']):.2f}x), "
              f"p99 {h['batch_wait_p99_s']:.2f} s vs {u['batch_wait_p99_s']:.2f} s; hedges {h['hedges']} "
              f"({h['hedges'] / stragglers['gets']:.1%} extra GETs), {h['hedge_wins']} won")
    if args.json:
        out = {"objects": args.objects, "mean_object_bytes": nbytes / args.objects, "in_flight": args.in_flight,
               "batch_size": args.batch_size, "image_size": args.size, "cores": os.cpu_count(),
               "loadavg_start": loadavg_start, "loadavg_end": loadavg_end, "emulator_alpn": proto,
               "rows": rows, "ratios_vs_0ms": ratios, "https_vs_http_0ms": cross, "stragglers": stragglers}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
