"""What `serve` shows while it runs, read from the server's own GET /v1/status once a second.

rich: a small live table (requests/s, p50/p99, batch sizes, tasks loaded, replicas). plain: a line
every PLAIN_EVERY_S while traffic or the tasks change, for logs.
"""

from __future__ import annotations

import time
import urllib.error

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

PLAIN_EVERY_S = 10.0


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _num(value, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def summary_rows(status: dict) -> list[tuple[str, str]]:
    replicas = status.get("replicas") or {}
    rss = [r["memory"]["rss"] for r in replicas.values() if r.get("memory")]
    return [
        ("tasks loaded", f"{status['tasks']} (generation {status['generation']})"),
        ("requests/s", f"{status['requests_per_s']:.1f} ({status['rows_per_s']:.1f} predictions/s)"),
        ("latency p50 / p99", f"{_ms(status['p50_ms'])} / {_ms(status['p99_ms'])}"),
        ("batch rows mean / max", f"{_num(status['mean_batch_rows'])} / {_num(status['max_batch_rows'], 'd')}"),
        ("tasks per batch", _num(status["mean_batch_tasks"])),
        ("replicas", f"{len(replicas)}" + (f" (RSS {max(rss) / 2**20:,.0f} MiB max)" if rss else "")),
        ("bad requests since start", str(status["errors"])),
    ]


def render(status: dict, url: str) -> Table:
    table = Table(title=f"serving on {url} (last {status['window_s']:.0f} s) · Ctrl-C stops",
                  show_header=False, box=None, pad_edge=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in summary_rows(status):
        table.add_row(name, value)
    for name, reason in (status.get("refused") or {}).items():
        table.add_row(f"[red]refused {escape(name)}", escape(reason[:100]))
    return table


def watch(server, ui: str, console: Console | None = None) -> None:
    """Show the status until Ctrl-C (KeyboardInterrupt propagates to the caller, which stops Serve)."""
    console = console or Console()
    if ui == "rich":
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while True:
                status = _status(server)
                if status is not None:
                    live.update(render(status, server.url))
                time.sleep(1.0)
    last, shown = 0.0, None
    while True:
        status = _status(server)
        if status is not None and time.monotonic() - last >= PLAIN_EVERY_S:
            line = " · ".join(f"{name} {value}" for name, value in summary_rows(status))
            if status["requests_per_s"] or line != shown:
                console.print(line, highlight=False, soft_wrap=True)
                last, shown = time.monotonic(), line
        time.sleep(1.0)


def _status(server) -> dict | None:
    try:
        return server.get("/v1/status")
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None  # a replica restarting: show the last status until it answers again
