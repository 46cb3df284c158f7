"""`peterrec serve`: every task of a bundle online, over one shared backbone, with Ray Serve.

  python cli.py serve --backbone runs/demo/pretrain --bundle runs/demo/job --tasks data/demo
  curl -s 127.0.0.1:8000/v1/predict -d '{"task": "gender", "user_id": "u17"}'
"""

from __future__ import annotations

HELP = "serve every task of a bundle over HTTP, one shared backbone, mixed-task batches (Ray Serve)"
DESCRIPTION = """Serve every task of a bundle online with Ray Serve. The backbone is put into Ray's object store
once; each replica reads it zero-copy and applies each task's patch set to that task's rows: requests for
different tasks that arrive within --batch-wait-ms share one backbone pass. By default the command starts
its own Ray on this machine and listens on 127.0.0.1 only; --address deploys onto a running cluster.

API (JSON): POST /v1/predict  {"task": NAME, "items": [ids...] | "user_id": ID, "top_k": K}, or a list of them;
items are raw ids (strings, via --items) or dense ids (integers). GET /v1/tasks, GET /healthz, GET /metrics
(Prometheus), GET /v1/status, POST /v1/admin/reload (loads new and changed bundle entries after they verify;
set PETERREC_SERVE_TOKEN to require `Authorization: Bearer <token>`). The command shows a live status and
stops Serve on Ctrl-C. Example:

  python cli.py serve --backbone runs/demo/pretrain --bundle runs/demo/job --tasks data/demo
  curl -s 127.0.0.1:8000/v1/predict -d '{"task": "gender", "user_id": "u17"}'"""


def add_arguments(parser):
    parser.add_argument("--backbone", required=True, metavar="CKPT", help="backbone checkpoint directory")
    parser.add_argument("--bundle", required=True, metavar="PATH",
                        help="bundle directory, job directory holding bundle/, or .tar archive (reload reads it again)")
    parser.add_argument("--items", metavar="FILE",
                        help="source items.parquet mapping raw item ids to dense ids (default with --tasks: the "
                             "data directory's source/items.parquet, when there is one)")
    users = parser.add_mutually_exclusive_group()
    users.add_argument("--sequences", metavar="FILE", help="sequences table: requests may name a user_id")
    users.add_argument("--tasks", metavar="SPEC", help="task spec (or data directory) whose [source] sequences "
                                                       "serve user_id lookups")
    http = parser.add_argument_group("HTTP")
    http.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    http.add_argument("--port", type=int, default=8000, help="port to listen on")
    batching = parser.add_argument_group("replicas and batching")
    batching.add_argument("--replicas", type=int, default=1, help="replicas of the server, each with every task")
    batching.add_argument("--max-batch-size", type=int, default=256,
                          help="most predictions in one backbone pass (1: no batching)")
    batching.add_argument("--batch-wait-ms", type=float, default=5.0,
                          help="how long a batch waits for more requests before it runs")
    batching.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each replica holds (torch threads)")
    batching.add_argument("--gpus-per-replica", type=float, default=0.0,
                          help="GPUs each replica holds; fractions share a GPU between replicas")
    batching.add_argument("--device", choices=["cpu", "cuda"], default=None,
                          help="replica device (default: cuda with --gpus-per-replica, else cpu)")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--address", default=None, help="deploy onto this Ray cluster instead of starting one")
    cluster.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded cluster (default: all)")
    cluster.add_argument("--object-store-mb", type=int, default=None, help="object store size of the embedded cluster")
    cluster.add_argument("--ui", choices=["rich", "plain"], default=None,
                         help="rich: a live status table; plain: a status line every 10 s of traffic "
                              "(default: rich on a terminal)")


def run(args) -> int:
    from commands._common import user_errors

    with user_errors():
        settings = settings_from(args)
        prepared = _prepare(settings)
    return _serve(args, settings, prepared)


def settings_from(args):
    import os
    from pathlib import Path

    from orchestrator.settings import resolve_spec
    from orchestrator.serve.app import ServeSettings
    from orchestrator.serve.server import TOKEN_ENV

    sequences, items = args.sequences, args.items
    if args.tasks:
        from tasks import load_spec

        sequences = load_spec(resolve_spec(args.tasks)).sequences
        default_items = Path(sequences).with_name("items.parquet")
        items = items or (default_items if default_items.is_file() else None)
    return ServeSettings(backbone=Path(args.backbone), bundle=Path(args.bundle), items=items and Path(items),
                         sequences=sequences and Path(sequences), host=args.host, port=args.port,
                         replicas=args.replicas, max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                         cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                         device=args.device, token=os.environ.get(TOKEN_ENV) or None, address=args.address,
                         num_cpus=args.num_cpus, object_store_mb=args.object_store_mb)


def _prepare(settings):
    from orchestrator.serve.app import prepare

    return prepare(settings)


def _serve(args, settings, prepared) -> int:
    import signal
    import sys

    from rich.console import Console

    from commands._common import fail
    from orchestrator.serve.app import start_server
    from orchestrator.serve.server import TOKEN_ENV
    from orchestrator.serve.status import watch

    from orchestrator.cluster import ClusterUnreachable

    console = Console(highlight=False)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` and service managers stop it as Ctrl-C does
    try:
        server = start_server(prepared, settings)
    except (ConnectionError, ClusterUnreachable) as e:  # --address that cannot be joined
        return fail(str(e))
    where = f"the Ray cluster at {settings.address}" if settings.address else "an embedded Ray cluster (loopback)"
    console.print(f"serving {len(prepared.tasks)} task(s) of {settings.bundle} on {where}: {settings.replicas} "
                  f"replica(s), {settings.cpus_per_replica:g} CPU + {settings.gpus_per_replica:g} GPU each, "
                  f"batches of up to {settings.max_batch_size} within {settings.batch_wait_ms:g} ms")
    try:
        auth = f' -H "Authorization: Bearer ${TOKEN_ENV}"' if settings.token else ""
        example = prepared.tasks[0]
        console.print(f"ready: {server.url}   try: curl -s {server.url}/v1/predict -d "
                      f"'{{\"task\": \"{example}\", \"items\": [1, 2, 3]}}'   reload: curl -s -X POST{auth} "
                      f"{server.url}/v1/admin/reload")
        ui = args.ui or ("rich" if sys.stdout.isatty() else "plain")
        watch(server, ui, console)
    except KeyboardInterrupt:
        console.print("stopping: in-flight requests finish, then Serve shuts down")
    finally:
        server.stop()
    console.print("stopped")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt
