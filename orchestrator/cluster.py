"""Start an embedded loopback Ray cluster, or join an existing one; the one place that sets Ray's env vars.

The embedded cluster is started by the command itself (`ray.init(address="local")`): its GCS, raylet and
workers are this process's children and listen on 127.0.0.1 only. Its processes share this process's
fate: killed with it (GCS, raylet and workers at once; Ray's agents within about a minute).

Joining (`--address`) is checked first (`check_address`): a wrong address fails within seconds with a
message naming it and what was tried, where Ray itself would retry for about 14 minutes. The private Ray
APIs this needs are kept here, one function each (`_ask_gcs`, `start_node`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Callable

from orchestrator.settings import SettingError

# With ray 2.60 this makes every node, cluster_utils ones included, bind 127.0.0.1 (passing
# _node_ip_address="127.0.0.1" did not). Ray reads it when `ray` is imported, so it is set on import of
# this package (orchestrator/__init__.py), before any module here imports Ray.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# What the workers need (inherited by an embedded cluster's workers, sent as the job's runtime_env when
# joining one). Tune reuses a trial's actor for the next trial only once the previous trial's thread has
# stopped; such a thread stops at its next report (an evaluation), and Tune's default wait of 2 s made
# reuses fail under load, failing the next trial without a retry (issue 16).
WORKER_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "60"}
CHECK_TIMEOUT_S = 3.0  # per step of check_address


def set_ray_env() -> None:
    for key, value in {**RAY_ENV, **WORKER_ENV}.items():
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


class ClusterUnreachable(SettingError):
    """--address names no Ray cluster this process can join; the message says what was tried (a user
    error: exit 2, and the TUI launcher points at its address field)."""

    def __init__(self, address: str, problem: str):
        super().__init__("cluster.address", f"--address {address}: {problem}")


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
            object_store_mb: int | None = None) -> Cluster:
    """Join the cluster at `address` (checked first: ClusterUnreachable within seconds), reuse this process's
    Ray if it is already up (tests, notebooks), or start an embedded one on loopback (num_cpus / num_gpus /
    object_store_mb size it)."""
    import ray

    if ray.is_initialized():
        return Cluster(ray.get_runtime_context().gcs_address, owned=False)
    common = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": True,
              "configure_logging": True}
    if address:
        check_address(address)
        try:
            ray.init(address=address, runtime_env={"env_vars": dict(WORKER_ENV)}, **common)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
            raise ClusterUnreachable(address, f"the cluster answered, but joining it failed ({e})") from None
        return Cluster(ray.get_runtime_context().gcs_address, owned=True)
    object_store = object_store_mb * 1024 * 1024 if object_store_mb else None
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store, **common)
    return Cluster(ray.get_runtime_context().gcs_address, owned=True)


def check_address(address: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """ClusterUnreachable within seconds when `address` cannot be joined. Tried in order: the HOST:PORT
    form, the host's name, a TCP connection, the token when RAY_AUTH_MODE=token, one request to the
    cluster's GCS. "auto" (the cluster this machine last started) is left to Ray; a Ray Client address
    (ray://) gets the TCP check only."""
    import socket

    if address == "auto":
        return
    client = address.startswith("ray://")
    host, _, port_text = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ClusterUnreachable(address, "expected HOST:PORT, the address `ray start --head` prints (e.g. "
                                          "10.0.0.5:6379)")
    port = int(port_text)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ClusterUnreachable(address, f"cannot resolve the host name {host!r} ({e.strerror})") from None
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except ConnectionRefusedError:
        raise ClusterUnreachable(address, f"nothing answers there: no process listens on port {port} of {host} "
                                          f"(connection refused); is `ray start --head --port {port}` running "
                                          f"there?") from None
    except (TimeoutError, socket.timeout):
        raise ClusterUnreachable(address, f"no answer from {host}:{port} within {timeout_s:g} s (a wrong host, or "
                                          f"a firewall dropping the connection)") from None
    except OSError as e:
        raise ClusterUnreachable(address, f"cannot reach {host}:{port} ({e.strerror or e})") from None
    if not client:
        _ask_gcs(address, host, port, timeout_s)


def _speaks_http2(host: str, port: int, timeout_s: float) -> bool:
    """Whether the server answers an HTTP/2 client preface with a SETTINGS frame, as every gRPC server (a
    Ray GCS) does: tells a GCS port from another service within a second, where a GCS client waits ~13 s."""
    import socket

    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            conn.sendall(preface)
            header = b""
            while len(header) < 9:  # a frame header: length (3), type (1), flags (1), stream (4)
                chunk = conn.recv(9 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    return header[3] == 0x4  # SETTINGS


def _ask_gcs(address: str, host: str, port: int, timeout_s: float) -> None:
    """The token (when RAY_AUTH_MODE=token), a gRPC handshake, and one GCS request with a deadline. Private
    Ray API (ray 2.60): InnerGcsClient.standalone is what ray.init uses, without its 20 retries; Ray's C++
    client logs each failed attempt to fd 2, so that is silenced (the error raised says it once)."""
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
    from ray._raylet import AuthenticationMode, InnerGcsClient, get_authentication_mode
    from ray.exceptions import AuthenticationError

    token_mode = get_authentication_mode() == AuthenticationMode.TOKEN
    try:
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except AuthenticationError:
        raise ClusterUnreachable(address, "RAY_AUTH_MODE=token but this process has no token: set RAY_AUTH_TOKEN "
                                          "(or RAY_AUTH_TOKEN_PATH, or the file ~/.ray/auth_token) to the "
                                          "cluster's token (`ray get-auth-token` on the head prints it)") from None
    if not _speaks_http2(host, port, timeout_s):
        raise ClusterUnreachable(address, f"something listens on {host}:{port}, but it is not a Ray cluster (no "
                                          f"gRPC answer); is it the port `ray start --head` printed (default 6379)?")
    try:
        with _quiet_stderr():
            InnerGcsClient.standalone(address, None, int(timeout_s * 1000))
    except AuthenticationError:
        hint = ("the token given does not match the cluster's" if token_mode else
                "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's token")
        raise ClusterUnreachable(address, f"the cluster requires token authentication and refused this process: "
                                          f"{hint}") from None
    except Exception as e:  # noqa: BLE001 - ray.exceptions.RpcError and kin: the port is not a Ray GCS
        raise ClusterUnreachable(address, f"the port accepts connections but no Ray GCS answered "
                                          f"({type(e).__name__}: {str(e).strip()[:120]}); is it the port "
                                          f"`ray start --head` printed (default 6379)?") from None


@contextlib.contextmanager
def _quiet_stderr():
    """fd 2 to /dev/null for the duration (C++ logging bypasses sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Nodes ---------------------------------------------------------------------------------------------------


def node_label() -> str:
    """This worker's node, as shown in the task table."""
    import ray

    return ray.util.get_node_ip_address()


def node_id() -> str:
    """This worker's node id (what `lost_nodes` reports when the node is gone)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def lost_nodes() -> dict[str, str]:
    """{node id: IP} of every node the cluster has marked dead (one GCS request, no dashboard needed)."""
    import ray

    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if not n.get("Alive")}


def run_node(address: str, num_cpus: int, object_store_mb: int | None = None, temp_dir: str | None = None,
             on_started: Callable[[str], None] | None = None) -> str:
    """Run a worker node on 127.0.0.1 that joins the head at `address` (itself on loopback) until Ctrl-C or
    SIGTERM, or until one of its processes dies; its processes stop with it. Returns why it stopped.

    What `ray start --address --block` does after its guard: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which
    keeps every socket of a node on loopback, `ray start` refuses to start a worker node, and without it the
    node moves to the machine's network address. Private Ray API (ray 2.60), kept to this function."""
    import signal
    import time

    import ray._private.node
    import ray._private.parameter
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

    host = address.rpartition(":")[0].strip("[]")
    if host not in ("127.0.0.1", "localhost"):
        raise ClusterUnreachable(address, "`peterrec node` joins a head on this machine's loopback (127.0.0.1) "
                                          "only; on a real cluster start each node with `ray start --address` "
                                          "(docs/CLUSTER.md)")
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        raise ClusterUnreachable(address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is set to something other than 0 "
                                          "here, which would move the node off loopback; unset it")
    check_address(address)
    ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    params = ray._private.parameter.RayParams(
        gcs_address=address.replace("localhost", "127.0.0.1"), node_ip_address="127.0.0.1", num_cpus=num_cpus,
        num_gpus=0, temp_dir=temp_dir, include_log_monitor=True,
        object_store_memory=object_store_mb * 1024 * 1024 if object_store_mb else None)
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a stop asked for, like Ctrl-C (Ray's own handler exits with 1)
    try:
        if on_started:
            on_started(node.node_id)
        while True:
            time.sleep(1)
            dead = [kind for kind, _ in node.dead_processes()]
            if dead:
                return f"its {', '.join(dead)} process(es) ended"
    except KeyboardInterrupt:
        return "stopped"
    finally:
        node.kill_all_processes(check_alive=False, allow_graceful=True)
