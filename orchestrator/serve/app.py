"""Start and stop the serving application: checks first, then Ray, the object store puts, Serve.

    server = start_server(prepare(settings), settings)   # blocks until /healthz answers
    ...                                                   # HTTP on settings.host:settings.port
    server.stop()                                         # Serve down (and the embedded Ray)
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from orchestrator.cluster import Cluster, check_address, connect
from orchestrator.serve.catalog import TaskCatalog
from orchestrator.serve.server import BundleServer, ServerInputs
from orchestrator.shared import SharedRefs, share

APP = "peterrec"
QUIET = {"log_level": "WARNING", "enable_access_log": False}  # the live status replaces a line per request


@dataclass(frozen=True)
class ServeSettings:
    backbone: Path
    bundle: Path
    items: Path | None = None  # source items.parquet: raw item ids -> dense ids
    sequences: Path | None = None  # sequences table: user_id lookups
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_batch_size: int = 256
    batch_wait_ms: float = 5.0
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    device: str | None = None  # default: cuda with --gpus-per-replica, else cpu
    token: str | None = None  # admin bearer token; None: admin routes are open (loopback default)
    address: str | None = None  # an existing Ray cluster; None: embedded, loopback only
    num_cpus: int | None = None  # embedded cluster size
    object_store_mb: int | None = None

    def __post_init__(self):
        checks = (("--replicas", self.replicas, self.replicas >= 1, ">= 1"),
                  ("--max-batch-size", self.max_batch_size, self.max_batch_size >= 1, ">= 1"),
                  ("--batch-wait-ms", self.batch_wait_ms, self.batch_wait_ms >= 0, ">= 0"),
                  ("--cpus-per-replica", self.cpus_per_replica, self.cpus_per_replica > 0, "> 0"),
                  ("--gpus-per-replica", self.gpus_per_replica, self.gpus_per_replica >= 0, ">= 0"),
                  ("--port", self.port, 0 < self.port <= 65535, "in 1..65535"))
        problems = [f"{flag} must be {what} (got {value})" for flag, value, ok, what in checks if not ok]
        if self.device not in (None, "cpu", "cuda"):
            problems.append(f"--device {self.device}: expected cpu or cuda (a replica uses the GPU Ray gives it)")
        elif self.device == "cuda" and not self.gpus_per_replica:
            problems.append("--device cuda needs --gpus-per-replica (e.g. 1, or 0.5 to share a GPU)")
        elif self.device == "cpu" and self.gpus_per_replica:
            problems.append("--device cpu with --gpus-per-replica: a replica's device follows its resources")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def replica_device(self) -> str:
        return "cuda" if self.gpus_per_replica else "cpu"


@dataclass
class Prepared:
    """Everything read and checked before Ray starts: a user error ends here, nothing started."""

    backbone: object  # Backbone (CPU)
    raw_item_ids: list | None
    sequences: object | None  # tasks.Sequences
    tasks: list[str]


def prepare(settings: ServeSettings) -> Prepared:
    """Read the backbone, the bundle's index (its backbone must be this one), and the lookups."""
    from peterrec.bundle import BundleError, backbone_fingerprint, open_bundle
    from peterrec.checkpoint import load_backbone
    from tasks import read_item_vocab, read_sequences

    if settings.address:  # within seconds, before anything is read (ClusterUnreachable)
        check_address(settings.address)
    backbone, _ = load_backbone(settings.backbone)
    bundle = open_bundle(settings.bundle)
    try:
        if bundle.fingerprint != backbone_fingerprint(backbone):
            raise BundleError(bundle.index_path, f"the bundle was trained on backbone {bundle.fingerprint[:16]}..., "
                                                 f"not on {settings.backbone}; serve it with that backbone")
        if not bundle.names:
            raise BundleError(bundle.index_path, "no tasks to serve")
        names = bundle.names
    finally:
        bundle.close()
    raw = read_item_vocab(settings.items).tolist() if settings.items else None
    sequences = read_sequences(settings.sequences, vocab_size=backbone.config.vocab_size) \
        if settings.sequences else None
    _check_port_free(settings.host, settings.port)
    if settings.address is None:
        _check_fits_embedded(settings)
    return Prepared(backbone.requires_grad_(False).eval(), raw, sequences, names)


def _check_fits_embedded(settings: ServeSettings) -> None:
    """Replicas that the embedded cluster cannot place would leave Serve waiting for them forever."""
    import os

    import torch

    cpus = settings.num_cpus or os.cpu_count() or 1
    if settings.replicas * settings.cpus_per_replica > cpus:
        raise ValueError(f"--replicas {settings.replicas} x --cpus-per-replica {settings.cpus_per_replica:g} needs "
                         f"{settings.replicas * settings.cpus_per_replica:g} CPUs; the embedded cluster has {cpus} CPUs "
                         f"(--num-cpus; or give fractions such as --cpus-per-replica 0.5)")
    gpus = torch.cuda.device_count()
    if settings.replicas * settings.gpus_per_replica > gpus:
        raise ValueError(f"--replicas {settings.replicas} x --gpus-per-replica {settings.gpus_per_replica:g} needs "
                         f"{settings.replicas * settings.gpus_per_replica:g} GPUs; this machine has {gpus}")


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") from None


class Server:
    """A running application: its URL, and stop() (Serve down, then the embedded Ray)."""

    def __init__(self, settings: ServeSettings, cluster: Cluster, keep: tuple):
        self.settings, self.cluster = settings, cluster
        self._keep = keep  # the driver owns the object store entries the replicas read: hold them
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.port}"

    def get(self, path: str, timeout: float = 5.0) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        """Delete the application (in-flight requests finish); shut Serve down unless other apps use it."""
        from ray import serve

        try:
            serve.delete(APP)
            if not serve.status().applications:
                serve.shutdown()
        finally:
            self.cluster.shutdown()


def start_server(prepared: Prepared, settings: ServeSettings, ready_timeout_s: float = 120.0) -> Server:
    import ray
    from ray import serve
    from ray.serve.config import DeploymentActorConfig

    from peterrec.checkpoint import backbone_arrays

    cluster = connect(settings.address, settings.num_cpus, None, settings.object_store_mb)
    try:
        backbone = prepared.backbone
        refs = share(backbone, prepared.sequences) if prepared.sequences is not None else \
            SharedRefs(ray.put(backbone_arrays(backbone)), backbone.config.to_dict(), None)
        lookups = ray.put({"raw_item_ids": prepared.raw_item_ids,
                           "user_ids": [str(u) for u in prepared.sequences.user_ids] if prepared.sequences else None})
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        serve.start(http_options={"host": settings.host, "port": settings.port}, logging_config=QUIET)
        deployment = serve.deployment(
            BundleServer, name="BundleServer", num_replicas=settings.replicas,
            max_ongoing_requests=max(64, 2 * settings.max_batch_size),
            ray_actor_options={"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica},
            deployment_actors=[DeploymentActorConfig(
                name="catalog", actor_class=ray.remote(TaskCatalog), actor_options={"num_cpus": 0},
                init_kwargs={"bundle": str(Path(settings.bundle).absolute()), "refs": refs})])
        options = {"max_batch_size": settings.max_batch_size, "batch_wait_s": settings.batch_wait_ms / 1000,
                   "cpus": settings.cpus_per_replica, "device": settings.replica_device,
                   "token_sha256": hashlib.sha256(settings.token.encode()).hexdigest() if settings.token else None}
        serve.run(deployment.bind(ServerInputs(refs, lookups), options), name=APP, route_prefix="/",
                  logging_config=QUIET)
        server = Server(settings, cluster, (refs, lookups))
        _wait_healthy(server, ready_timeout_s)
        return server
    except BaseException:
        cluster.shutdown()
        raise


def _wait_healthy(server: Server, timeout_s: float) -> None:
    """Serve's proxy can take a moment after the deployment is up: wait for /healthz through it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            server.get("/healthz")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
