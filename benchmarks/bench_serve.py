"""Serving 100 tasks over HTTP: mixed-task batching against batching off and one full model per task.

Run: .venv/bin/python benchmarks/bench_serve.py            (about 10 minutes on 2 idle CPU cores)
     .venv/bin/python benchmarks/bench_serve.py --quick    (a smoke run: 10 tasks, few requests)
     .venv/bin/python benchmarks/bench_serve.py --memory-only --channels 256   (memory at another width)
     .venv/bin/python benchmarks/bench_serve.py --model-only   (model work without HTTP, and memory: no Ray)

A synthetic bundle of --tasks tasks (half classify with 4 classes, half cold-start over 500 target items;
random weights: this measures serving, not accuracy) over one random backbone (4 blocks, dilations
1,4,1,4, 64 channels, length 50: the `pretrain` default shape, 20,000 items). One embedded Ray, and one
after another:

  (a) mixed-task batching: `serve` as it ships (--max-batch-size 256, --batch-wait-ms 5);
  (b) batching off: the same server with --max-batch-size 1, one backbone forward per request;
  (c) one full model per task: the same server over a bundle of the same tasks in mode fineall (each task
      its own backbone copy: 100 copies in the one replica, measured, not extrapolated), batching on:
      requests of one task still batch, but no two tasks share a forward.

A bounded load generator (aiohttp, on loopback) sends --requests single-object requests per cell (a
quarter of them at concurrency 1), each for a task drawn uniformly, at concurrency 1, 16 and 64; a cell
also stops at --time-limit seconds. Printed side by side: requests/s, p50/p99 latency as the client sees
it, rows per backbone pass, the ratios; on (a)'s server also the ceiling of Serve's HTTP path on this
machine (GET /healthz: proxy + replica, no model) and the same load sent as lists of 16 request objects
per call; the model work without HTTP (predict on 1 row vs 64 rows of uniform tasks, in this process);
and resident memory: a fresh process loads the tasks over one backbone as a replica does
(MultiTaskPredictor over the bundle), and its RSS growth, once loaded and after one pass over every task,
is set against the bytes of one backbone + the task tensors; likewise for the full copies. The client
shares the 2 cores with the server; the load average is printed to show how busy the machine was.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orchestrator  # noqa: E402,F401  (sets Ray's loopback environment before Ray is imported)
from orchestrator.cluster import connect  # noqa: E402
from orchestrator.serve.app import ServeSettings, prepare, start_server  # noqa: E402
from peterrec.backbone import Backbone  # noqa: E402
from peterrec.bundle import backbone_fingerprint, write_task  # noqa: E402
from peterrec.checkpoint import save_checkpoint  # noqa: E402
from peterrec.config import BackboneConfig  # noqa: E402
from peterrec.finetune import FinetuneSettings  # noqa: E402
from peterrec.task_model import build_task_model  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py: this script's folder is on sys.path)

VOCAB, TARGETS, CLASSES = 20_000, 500, 4
LIST = 16  # request objects per call in the list cell: concurrency 64 / LIST calls keep 64 in flight


def build(root: Path, tasks: int, config: BackboneConfig) -> SimpleNamespace:
    """A backbone checkpoint and two bundles of the same tasks: peterrec patch sets, and fineall copies."""
    torch.manual_seed(0)
    backbone = Backbone(config).eval()
    fingerprint = backbone_fingerprint(backbone)
    save_checkpoint(root / "backbone", backbone)
    names = []
    for i in range(tasks):
        kind, outputs = ("classify", CLASSES) if i % 2 == 0 else ("coldrec", TARGETS)
        name = f"{kind}_{i:03d}"
        spec = SimpleNamespace(name=name, kind=kind, metric="accuracy" if kind == "classify" else "mrr@5",
                               num_outputs=outputs, labels=None)
        for mode, bundle in (("peterrec", "patches"), ("fineall", "full")):
            model = build_task_model(backbone, kind, outputs, mode, seed=i).eval()
            write_task(root / bundle, model, spec, FinetuneSettings(mode=mode), {}, fingerprint, config)
        names.append(name)
    return SimpleNamespace(backbone=root / "backbone", patches=root / "patches", full=root / "full", names=names)


def bodies(names: list[str], n: int, seed: int, per_call: int = 1) -> list[bytes]:
    """n request bodies, each one object (or a list of per_call), tasks drawn uniformly, 10..50 dense ids each."""
    rng = np.random.default_rng(seed)

    def one() -> dict:
        items = rng.integers(1, VOCAB, size=int(rng.integers(10, 51))).tolist()
        return {"task": names[int(rng.integers(len(names)))], "items": items}

    return [json.dumps(one() if per_call == 1 else [one() for _ in range(per_call)]).encode() for _ in range(n)]


async def load(url: str, payloads: list[bytes] | None, concurrency: int, time_limit: float) -> dict:
    """Send the payloads (POST /v1/predict), or as many GET /healthz, `concurrency` at a time."""
    import aiohttp

    latencies, failures, cursor = [], 0, iter(range(len(payloads) if payloads else 10**9))
    total = len(payloads) if payloads else None
    deadline = time.monotonic() + time_limit
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            nonlocal failures
            for i in cursor:
                if time.monotonic() > deadline or (total is None and i >= 4000):
                    return
                start = time.perf_counter()
                if payloads is None:
                    request = session.get(url + "/healthz")
                else:
                    request = session.post(url + "/v1/predict", data=payloads[i],
                                           headers={"Content-Type": "application/json"})
                async with request as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
                latencies.append((time.perf_counter() - start) * 1000)

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - begin
    ms = np.array(latencies)
    return {"requests": len(ms), "failures": failures, "rps": len(ms) / wall,
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def resident(checkpoint: Path, bundle: Path, queue) -> None:
    """In a fresh process: RSS growth for loading every task of `bundle` over one backbone (plus one
    warm-up pass), after torch's own lazy set-up has been paid on the bare backbone."""
    import psutil

    from peterrec.bundle import open_bundle
    from peterrec.checkpoint import load_backbone
    from peterrec.predict import MultiTaskPredictor

    torch.set_num_threads(1)
    backbone, _ = load_backbone(checkpoint)
    backbone.requires_grad_(False).eval()
    warm = torch.ones(1, backbone.config.max_len, dtype=torch.long)
    with torch.no_grad():
        backbone(warm)
    def rss() -> int:
        gc.collect()
        trim()
        return psutil.Process().memory_info().rss

    before = rss()
    predictor = MultiTaskPredictor(backbone, open_bundle(bundle))
    loaded = rss() - before
    predictor.predict(warm.expand(len(predictor.tasks), -1), predictor.tasks)  # one pass over every task
    stored = sum(t.nbytes for m in predictor.models.values() for t in m.task_state_dict().values())
    modules = sum(1 for m in predictor.models.values() for _ in m.modules())
    queue.put({"loaded": loaded, "passed": rss() - before, "stored": stored, "modules": modules,
               "backbone": sum(t.nbytes for t in backbone.state_dict().values())})


def trim() -> None:
    """Hand freed heap pages back (glibc), so RSS counts what live objects hold, not what loading left free."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_resident(checkpoint: Path, bundle: Path) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=resident, args=(checkpoint, bundle, queue))
    process.start()
    result = queue.get(timeout=600)
    process.join()
    return result


def model_only(checkpoint: Path, bundle: Path, names: list[str], threads: int, seconds: float = 5.0,
               stack_once: bool = True) -> dict:
    """Rows/s of MultiTaskPredictor.predict without HTTP: one row per call against 64 rows of uniform tasks
    (stack_once=False: each batch's tasks' patches restacked, as before peterrec.fused.stacked)."""
    from peterrec.bundle import open_bundle
    from peterrec.checkpoint import load_backbone
    from peterrec.predict import MultiTaskPredictor

    torch.set_num_threads(threads)
    backbone, _ = load_backbone(checkpoint)
    predictor = MultiTaskPredictor(backbone.requires_grad_(False).eval(), open_bundle(bundle), stack_once=stack_once)
    rng = np.random.default_rng(3)
    out = {}
    for rows in (1, 64):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            items = torch.from_numpy(rng.integers(1, VOCAB, size=(rows, backbone.config.max_len)))
            predictor.predict(items, [names[int(i)] for i in rng.integers(len(names), size=rows)])
            done += rows
        out[rows] = done / (time.perf_counter() - start)
    return out


def serve_cell(settings: ServeSettings, payloads: list[bytes], args, warmup: list[bytes]) -> dict:
    """Start the server, run every concurrency, read its memory and batch sizes, stop it."""
    server = start_server(prepare(settings), settings)
    try:
        asyncio.run(load(server.url, warmup, 8, args.time_limit))
        results = {}
        for c in args.concurrency:
            n = args.requests if c > 1 else max(args.requests // 4, 50)
            before = server.get("/v1/status")
            results[c] = asyncio.run(load(server.url, payloads[:n], c, args.time_limit))
            after = server.get("/v1/status")
            results[c]["rows_per_pass"] = after["mean_batch_rows"] or before["mean_batch_rows"]
        memory = next(iter(server.get("/v1/status")["replicas"].values()))["memory"]
        extra = {}
        if args.ceiling:  # on (a)'s server only: the HTTP path alone, and lists of requests per call
            extra["ceiling"] = asyncio.run(load(server.url, None, max(args.concurrency), args.time_limit))
            lists = bodies(args.names, args.requests // LIST, seed=4, per_call=LIST)
            extra["lists"] = asyncio.run(load(server.url, lists, max(args.concurrency) // LIST, args.time_limit))
        return {"by_concurrency": results, "memory": memory, **extra}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--requests", type=int, default=2000, help="requests per cell (a quarter at concurrency 1)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds a cell may take at most")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0, help="torch threads follow")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--work", type=Path, default=None, help="where the bundles go (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="10 tasks, 200 requests per cell")
    parser.add_argument("--memory-only", action="store_true", help="only the resident memory figures (no Ray)")
    parser.add_argument("--model-only", action="store_true",
                        help="only the model work without HTTP (and the memory figures; no Ray)")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.requests, args.time_limit = 10, 200, 20.0
    args.ceiling = True
    config = BackboneConfig(vocab_size=VOCAB + 1, channels=args.channels, dilations=(1, 4, 1, 4), max_len=50)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(f"CPU: {cpu_model()} x {os.cpu_count()}, torch {torch.__version__}, "
          f"{args.cpus_per_replica:g} CPU per replica; load average at start {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    job = build(work, args.tasks, config)
    print(f"built {args.tasks} tasks twice (patches, full copies) in {time.perf_counter() - start:.0f} s under {work}")
    args.names = job.names
    payloads = bodies(job.names, args.requests, seed=1)
    warmup = bodies(job.names, 100, seed=2)
    common = {"backbone": job.backbone, "cpus_per_replica": args.cpus_per_replica}
    configs = {
        "(a) mixed-task batching": ServeSettings(bundle=job.patches, port=args.port, **common),
        "(b) batching off": ServeSettings(bundle=job.patches, port=args.port + 1, max_batch_size=1, **common),
        "(c) full model per task": ServeSettings(bundle=job.full, port=args.port + 2, **common),
    }
    print("model work without HTTP and resident memory, each in its own process ...", flush=True)
    memory = {"(a) mixed-task batching": measure_resident(job.backbone, job.patches),
              "(c) full model per task": measure_resident(job.backbone, job.full)}
    if args.memory_only:
        print_memory(memory)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    threads = max(1, int(args.cpus_per_replica))
    models = {}
    for _ in range(2):  # two rounds, sides alternated; each keeps its best
        for name, bundle, once in (("patch sets (a, b)", job.patches, True),
                                   ("patch sets, restacked per batch", job.patches, False),
                                   ("full copies (c)", job.full, True)):
            rates = model_only(job.backbone, bundle, job.names, threads, stack_once=once)
            models[name] = {k: max(v, models.get(name, {}).get(k, 0.0)) for k, v in rates.items()}
    if args.model_only:
        print_models(models)
        print_memory(memory)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    cluster = connect(num_cpus=os.cpu_count())
    results = {}
    try:
        for name, settings in configs.items():
            results[name] = serve_cell(settings, payloads, args, warmup)
            args.ceiling = False  # the HTTP path's ceiling is measured once, on (a)'s server
            print(f"{name}: done", flush=True)
    finally:
        cluster.shutdown()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report(results, memory, models, args)
    return 0


def report(results: dict, memory: dict, models: dict, args) -> None:
    print(f"\n{'configuration':<26} {'conc.':>5} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'rows/pass':>9}")
    for name, result in results.items():
        for c, r in result["by_concurrency"].items():
            rows = "-" if r["rows_per_pass"] is None else f"{r['rows_per_pass']:.1f}"
            print(f"{name:<26} {c:>5} {r['requests']:>8} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
                  f"{rows:>9}" + (f"  ({r['failures']} failed)" if r["failures"] else ""))
    a, b, c = (results[k]["by_concurrency"] for k in results)
    print("\nrequests/s ratios, same run:")
    for conc in args.concurrency:
        print(f"  concurrency {conc:>3}: (a)/(b) = {a[conc]['rps'] / b[conc]['rps']:.2f}x, "
              f"(a)/(c) = {a[conc]['rps'] / c[conc]['rps']:.2f}x")
    ceiling, lists = (results["(a) mixed-task batching"][k] for k in ("ceiling", "lists"))
    print(f"HTTP path alone (GET /healthz, concurrency {max(args.concurrency)}): {ceiling['rps']:.0f} req/s, "
          f"p50 {ceiling['p50']:.1f} ms, p99 {ceiling['p99']:.1f} ms")
    conc = max(args.concurrency) // LIST
    print(f"(a) with lists of {LIST} request objects per call, concurrency {conc}: "
          f"{lists['rps'] * LIST:.0f} predictions/s ({lists['rps'] * LIST / b[max(args.concurrency)]['rps']:.2f}x "
          f"(b) at {max(args.concurrency)}), p50 {lists['p50']:.1f} ms, p99 {lists['p99']:.1f} ms per call")
    print_models(models)
    print_memory(memory)
    for name in ("(a) mixed-task batching", "(c) full model per task"):
        print(f"  the serving replica of {name}: RSS {results[name]['memory']['rss'] / 2**20:,.0f} MiB in all")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def print_models(models: dict) -> None:
    print("model work alone (MultiTaskPredictor.predict in one process, no HTTP), rows/s:")
    for name, rates in models.items():
        print(f"  {name}: 1 row per pass {rates[1]:,.0f}, 64 rows of uniform tasks per pass {rates[64]:,.0f} "
              f"({rates[64] / rates[1]:.1f}x)")
    once, again = models["patch sets (a, b)"][64], models["patch sets, restacked per batch"][64]
    print(f"  64-row passes, patches stacked once / restacked per batch: {once / again:.2f}x")


def print_memory(memory: dict) -> None:
    print("resident memory of the loaded tasks (a fresh process: RSS growth + the one backbone):")
    for name, m in memory.items():
        weights = m["backbone"] + m["stored"]
        loaded, passed = m["backbone"] + m["loaded"], m["backbone"] + m["passed"]
        print(f"  {name}: one backbone + the task tensors = {weights / 2**20:,.1f} MiB "
              f"({m['backbone'] / 2**20:.1f} + {m['stored'] / 2**20:.1f}); resident once loaded "
              f"{loaded / 2**20:,.1f} MiB ({loaded / weights:.2f}x), after one pass over every task "
              f"{passed / 2**20:,.1f} MiB ({passed / weights:.2f}x); {m['modules']:,} nn.Modules")


if __name__ == "__main__":
    sys.exit(main())
