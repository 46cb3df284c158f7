"""Start an embedded loopback Ray cluster, or join an existing one; the one place that sets Ray's env vars.

The embedded cluster is started by the command itself (`ray.init(address="local")`): its GCS, raylet and
workers are this process's children and listen on 127.0.0.1 only. Its processes share this process's
fate: killed with it (GCS, raylet and workers at once; Ray's agents within about a minute).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# With ray 2.60 this makes every node, cluster_utils ones included, bind 127.0.0.1 (passing
# _node_ip_address="127.0.0.1" did not). Ray reads it when `ray` is imported, so it is set on import of
# this package (orchestrator/__init__.py), before any module here imports Ray.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def set_ray_env() -> None:
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


@dataclass
class Cluster:
    """A connection to a Ray cluster. `owned`: this process called ray.init, so shutdown() calls
    ray.shutdown(), which stops an embedded cluster and only disconnects from a joined one."""

    address: str
    owned: bool

    def resources(self) -> dict:
        import ray

        total = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {"nodes": len(nodes), "cpus": total.get("CPU", 0.0), "gpus": total.get("GPU", 0.0),
                "node_ips": sorted({n["NodeManagerAddress"] for n in nodes})}

    def usage(self) -> dict:
        """What the cluster is doing now, from Ray's own view of it (the GCS: what `ray status` shows): per
        node its CPU, GPU, memory and object store, used and total; and the resources queued tasks wait for.
        (Ray's memory figure is what tasks reserved, its object store figure the bytes stored.)"""
        import time

        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(self.address, timeout=5)
        names = {"CPU": "cpu", "GPU": "gpu", "memory": "memory", "object_store_memory": "object_store"}
        nodes = []
        for kind, group in (("alive", status.active_nodes), ("idle", status.idle_nodes)):
            for node in group:
                use = {names[u.resource_name]: [u.used, u.total] for u in node.resource_usage.usage
                       if u.resource_name in names}
                nodes.append({"id": node.node_id, "ip": node.ip_address, "status": node.node_status.lower()
                              if isinstance(node.node_status, str) else kind, **use})
        waiting = [{"resources": dict(r.bundle), "count": r.count}
                   for demand in status.resource_demands.ray_task_actor_demand for r in demand.bundles_by_count]
        return {"at": time.time(), "nodes": sorted(nodes, key=lambda n: n["ip"]), "waiting": waiting}

    def shutdown(self) -> None:
        import ray

        if self.owned and ray.is_initialized():
            ray.shutdown()


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
            object_store_mb: int | None = None) -> Cluster:
    """Join the cluster at `address`, reuse this process's Ray if it is already up (tests, notebooks),
    or start an embedded one on loopback (num_cpus / num_gpus / object_store_mb size it)."""
    import ray

    if ray.is_initialized():
        return Cluster(ray.get_runtime_context().gcs_address, owned=False)
    common = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": True,
              "configure_logging": True}
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConnectionError(
                f"cannot join the Ray cluster at {address}: {e}. If it was started with `ray start` (Ray 2.60 "
                f"turns token authentication on by default), set RAY_AUTH_MODE=token and make the "
                f"cluster's token available (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token)") from None
        return Cluster(ray.get_runtime_context().gcs_address, owned=True)
    object_store = object_store_mb * 1024 * 1024 if object_store_mb else None
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store, **common)
    return Cluster(ray.get_runtime_context().gcs_address, owned=True)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """ConnectionError within `timeout` when nothing listens at a cluster address (joining one makes Ray
    wait for minutes). "auto", "local" and ray:// client addresses are left to Ray."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address in ("auto", "local") or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"cluster {address}: nothing answers there ({e}); start it with `ray start --head`, "
                              f"or leave the address out for a local cluster") from None


def node_label() -> str:
    """This worker's node, as shown in the task table."""
    import ray

    return ray.util.get_node_ip_address()
