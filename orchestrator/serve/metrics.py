"""Prometheus metrics: Ray Serve's own plus the server's, recorded through Ray's metrics pipeline.

Ray Serve already records HTTP requests and latency per route (ray_serve_num_http_requests,
ray_serve_http_request_latency_ms) and its batches (ray_serve_actual_batch_size,
ray_serve_batch_wait_time_ms, ...). The server adds what Serve cannot know: rows per task, the
number of tasks fused into one backbone pass, the tasks loaded. Every node's Ray metrics agent
exports them; GET /metrics gathers the serve families from the agents and merges them into one
Prometheus text (samples appear after Ray's report interval, RAY_metrics_report_interval_ms).
"""

from __future__ import annotations

import asyncio

LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
PREFIXES = ("ray_serve_", "ray_peterrec_serve_")  # the families GET /metrics shows
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    """The server's metrics, created inside a replica (Serve adds deployment/replica/application tags)."""

    def __init__(self):
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.rows = Counter("peterrec_serve_rows", "Predictions answered (one per request object)", ("task",))
        self.rejected = Counter("peterrec_serve_rejected", "Bad requests answered with a 4xx", ("status",))
        self.latency = Histogram("peterrec_serve_request_latency_ms", "POST /v1/predict latency in the replica",
                                 boundaries=LATENCY_MS)
        self.batch_rows = Histogram("peterrec_serve_batch_rows", "Rows per fused backbone pass", boundaries=SIZES)
        self.batch_tasks = Histogram("peterrec_serve_batch_tasks", "Distinct tasks per fused backbone pass",
                                     boundaries=SIZES)
        self.tasks = Gauge("peterrec_serve_tasks_loaded", "Tasks this replica serves")


async def prometheus_text(timeout_s: float = 5.0) -> str:
    """The serve families from every alive node's metrics agent, merged into one exposition."""
    import aiohttp
    import ray

    nodes = [(n["NodeManagerAddress"], n["MetricsExportPort"]) for n in ray.nodes()
             if n.get("Alive") and n.get("MetricsExportPort")]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async def fetch(host: str, port: int) -> str:
            try:
                async with session.get(f"http://{host}:{port}/metrics") as response:
                    return await response.text()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return ""  # a node that does not answer is left out of this scrape

        texts = await asyncio.gather(*(fetch(host, port) for host, port in nodes))
    return merge(texts)


def merge(texts: list[str]) -> str:
    """Keep the serve families; each family's HELP and TYPE once, then its samples from every text."""
    families: dict[str, dict] = {}
    for text in texts:
        family = None  # the family the following sample lines belong to (None: not shown)
        for line in text.splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                kind, name = line[2:6], line.split(maxsplit=3)[2]
                family = families.setdefault(name, {"HELP": None, "TYPE": None, "samples": []}) \
                    if name.startswith(PREFIXES) else None
                if family is not None and family[kind] is None:
                    family[kind] = line
            elif line and not line.startswith("#") and family is not None:
                family["samples"].append(line)
    out = []
    for family in families.values():
        out += [line for line in (family["HELP"], family["TYPE"]) if line] + family["samples"]
    return "\n".join(out) + "\n"
