"""`peterrec node`: a worker node of a loopback-only Ray cluster on this machine, for trying a cluster out."""

from __future__ import annotations

from commands._common import int_at_least

HELP = "run a Ray worker node on 127.0.0.1 that joins a loopback head (a multi-node cluster on one machine)"
DESCRIPTION = """Start one Ray worker node on this machine's loopback (127.0.0.1) that joins the head at --address,
and keep it running until Ctrl-C or SIGTERM (its Ray processes stop with it). `ray start --address` cannot
do this with the loopback-only setting the project uses, and without it the node moves to the machine's
network address. A real cluster of several machines uses `ray start` on each (docs/CLUSTER.md). Example:

  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --block --node-ip-address 127.0.0.1 --port 6391 \\
      --num-cpus 0 --include-dashboard false --disable-usage-stats &
  python cli.py node --address 127.0.0.1:6391 --num-cpus 1 --object-store-mb 200 &
  python cli.py node --address 127.0.0.1:6391 --num-cpus 1 --object-store-mb 200 &
  python cli.py finetune --backbone runs/demo/backbone --tasks runs/demo/data --out runs/demo/job \\
      --address 127.0.0.1:6391"""


def add_arguments(parser) -> None:
    parser.add_argument("--address", required=True, metavar="127.0.0.1:PORT",
                        help="the loopback head to join (the port of `ray start --head --port`)")
    parser.add_argument("--num-cpus", type=int_at_least(1), default=1, help="CPUs this node offers")
    parser.add_argument("--object-store-mb", type=int_at_least(1), default=None,
                        help="this node's object store in MiB (default: Ray's, 30%% of memory, per node)")
    parser.add_argument("--temp-dir", default=None,
                        help="Ray's session directory root, as given to the head (default: Ray's, /tmp/ray)")


def run(args) -> int:
    import os

    from commands._common import user_errors
    from orchestrator.cluster import run_node

    def started(node_id: str) -> None:
        print(f"node {node_id[:8]} on 127.0.0.1 ({args.num_cpus} CPU) joined the cluster at {args.address}; "
              f"Ctrl-C or `kill {os.getpid()}` stops it", flush=True)

    with user_errors():
        why = run_node(args.address, args.num_cpus, args.object_store_mb, args.temp_dir, on_started=started)
    print(f"node {why}", flush=True)
    return 0 if why == "stopped" else 1
