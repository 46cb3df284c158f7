"""The served tasks: which version of each task every replica serves, decided in one place.

`TaskCatalog` runs as the deployment's one deployment-scoped actor (Ray Serve keeps it beside the
replicas). It reads the bundle from disk, verifies each new or changed entry against the backbone
(checksums, fingerprint, shapes: `Bundle.load_task`), and puts the accepted patch set into Ray's object
store. Replicas never read the bundle: they follow the catalog's generation and build task models
from those arrays, so a replica started later serves exactly what the others serve. An entry that
does not verify is refused with a log line, and the version accepted before it keeps serving.

This module is the server's one user of peterrec.bundle (reading, verifying, building task models).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from orchestrator.shared import SharedRefs, shared_backbone
from peterrec.backbone import Backbone
from peterrec.bundle import BundleError, backbone_fingerprint, open_bundle
from peterrec.bundle.format import build_from_config
from peterrec.task_model import TaskModel

log = logging.getLogger("peterrec.serve")

WINDOW_S = 10.0  # the live status summarises the last this many seconds
ALIVE_S = 5.0  # a replica that has not reported for this long is not waited for


@dataclass(frozen=True)
class TaskVersion:
    """One accepted version of a task: its files' checksums (the identity of the version), its
    adapter config, and an ObjectRef of its task tensors ({name: np.ndarray})."""

    name: str
    files: dict
    config: dict
    tensors: object  # ObjectRef
    nbytes: int  # of those tensors


def task_model(backbone: Backbone, version: TaskVersion, arrays: dict[str, np.ndarray]) -> TaskModel:
    """The task model of an accepted version over `backbone` (its tensors copied out of the store)."""
    model = build_from_config(backbone, version.config)
    with warnings.catch_warnings():  # read-only store memory; copy_ only reads it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        model.load_task_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    return model.requires_grad_(False).eval()


def task_info(version: TaskVersion) -> dict:
    """What GET /v1/tasks shows of a task."""
    task, config = version.config["task"], version.config
    size_key = "num_classes" if task["kind"] == "classify" else "target_vocab"
    size = {size_key: task[size_key]}
    return {"name": task["name"], "kind": task["kind"], "mode": config["mode"], **size, "labels": task.get("labels"),
            "metric": task.get("metric"), "metrics": config.get("metrics"), "params": config.get("params"),
            "patch_bytes": version.nbytes, "backbone_fingerprint": config["backbone"]["fingerprint"]}


class TaskCatalog:
    """Accepted task versions, a generation that changes with them, and the replicas' latest stats."""

    def __init__(self, bundle: str, refs: SharedRefs):
        _log_to_stderr()
        self.bundle = bundle
        self.backbone = shared_backbone(refs)  # zero-copy; only to verify entries against
        self.fingerprint = backbone_fingerprint(self.backbone)
        self.epoch = uuid.uuid4().hex[:8]  # a restarted catalog starts a new epoch: replicas resync
        self.generation = 0
        self.versions: dict[str, TaskVersion] = {}
        self.refused: dict[str, str] = {}
        self.replicas: dict[str, dict] = {}  # replica id -> {"seen", "at", "memory"}
        self.requests: deque = deque()  # (time, latency ms, rows)
        self.batches: deque = deque()  # (time, rows, tasks)
        self.errors = 0
        self.reload()

    # -- versions ------------------------------------------------------------------------------

    def reload(self) -> dict:
        """Load new and changed entries that verify; keep the old version of every one that does not."""
        report = {"added": [], "replaced": [], "removed": [], "refused": {}, "unchanged": 0}
        try:
            bundle = open_bundle(self.bundle)
        except BundleError as e:
            report["refused"]["*"] = str(e)
            log.warning("reload refused the whole bundle, still serving generation %d: %s", self.generation, e)
            return self._finish(report)
        try:
            listed = {entry["name"]: entry for entry in bundle.tasks}
            for name, entry in listed.items():
                old = self.versions.get(name)
                if old is not None and old.files == entry["files"]:
                    report["unchanged"] += 1
                    self.refused.pop(name, None)  # the index lists the served version again
                    continue
                try:
                    self.versions[name] = self._accept(bundle, name, entry)
                    report["replaced" if old else "added"].append(name)
                    self.refused.pop(name, None)
                except BundleError as e:
                    report["refused"][name] = str(e)
                    self.refused[name] = str(e)
                    keeps = "the version loaded before keeps serving" if old else "it is not served"
                    log.warning("refused task %r: %s; %s", name, e, keeps)
            for name in [n for n in self.versions if n not in listed]:
                del self.versions[name]
                report["removed"].append(name)
                log.warning("task %r left the bundle's index: no longer served", name)
        finally:
            bundle.close()
        return self._finish(report)

    def _accept(self, bundle, name: str, entry: dict) -> TaskVersion:
        import ray

        model = bundle.load_task(name, self.backbone)  # checksums, fingerprint, shapes, values
        arrays = {k: v.detach().cpu().numpy() for k, v in model.task_state_dict().items()}
        nbytes = sum(a.nbytes for a in arrays.values())
        return TaskVersion(name, dict(entry["files"]), bundle.config(name), ray.put(arrays), nbytes)

    def _finish(self, report: dict) -> dict:
        if report["added"] or report["replaced"] or report["removed"]:
            self.generation += 1
        changes = {k: v for k, v in report.items() if v and k != "unchanged"}
        log.warning("generation %d: %d tasks served%s", self.generation, len(self.versions),
                    f" ({changes})" if changes else "")
        return {**report, "epoch": self.epoch, "generation": self.generation, "tasks": len(self.versions)}

    def snapshot(self) -> dict:
        return {"epoch": self.epoch, "generation": self.generation, "fingerprint": self.fingerprint,
                "versions": dict(self.versions)}

    # -- replicas ------------------------------------------------------------------------------

    def heartbeat(self, replica: str, seen: tuple, stats: dict) -> tuple[str, int]:
        """A replica reports what it serves and its stats since its last report; gets the current version."""
        now = time.time()
        self.replicas[replica] = {"seen": tuple(seen), "at": now, "memory": stats.get("memory")}
        self.requests.extend((now, ms, rows) for ms, rows in stats.get("requests", ()))
        self.batches.extend((now, rows, tasks) for rows, tasks in stats.get("batches", ()))
        self.errors += stats.get("errors", 0)
        return self.epoch, self.generation

    def synced(self, epoch: str, generation: int) -> tuple[int, int]:
        """(replicas serving this version or a later one, replicas alive)."""
        alive = [r for r in self.replicas.values() if time.time() - r["at"] < ALIVE_S]
        return sum(r["seen"][0] == epoch and r["seen"][1] >= generation for r in alive), len(alive)

    def status(self) -> dict:
        """The live status: tasks, refusals, and requests/s, latency and batch sizes over the last WINDOW_S."""
        now = time.time()
        for series in (self.requests, self.batches):
            while series and series[0][0] < now - WINDOW_S:
                series.popleft()
        latencies = np.array([ms for _, ms, _ in self.requests]) if self.requests else np.zeros(0)
        rows = np.array([r for _, r, _ in self.batches]) if self.batches else np.zeros(0)
        tasks = np.array([t for _, _, t in self.batches]) if self.batches else np.zeros(0)
        alive = {k: v for k, v in self.replicas.items() if now - v["at"] < ALIVE_S}
        return {
            "epoch": self.epoch, "generation": self.generation, "tasks": len(self.versions),
            "refused": dict(self.refused), "window_s": WINDOW_S, "errors": self.errors,
            "requests_per_s": len(latencies) / WINDOW_S,
            "rows_per_s": float(sum(r for _, _, r in self.requests)) / WINDOW_S,
            "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
            "batches_per_s": len(rows) / WINDOW_S,
            "mean_batch_rows": float(rows.mean()) if len(rows) else None,
            "max_batch_rows": int(rows.max()) if len(rows) else None,
            "mean_batch_tasks": float(tasks.mean()) if len(tasks) else None,
            "replicas": {k: {"version": list(v["seen"]), "memory": v["memory"]} for k, v in alive.items()},
        }


def _log_to_stderr() -> None:
    """Catalog log lines go to the actor's stderr: Ray prints them in the command's output and logs."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s peterrec.serve: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class ServedTasks:
    """Accepted versions and their built models, in the shape MultiTaskPredictor reads a bundle
    (names, config(name), load_task(name, backbone)), so a replica's predictor is the offline one."""

    def __init__(self, versions: dict[str, TaskVersion], models: dict[str, TaskModel]):
        self.versions, self.models = versions, models

    @property
    def names(self) -> list[str]:
        return list(self.versions)

    def config(self, name: str) -> dict:
        return self.versions[name].config

    def load_task(self, name: str, backbone: Backbone) -> TaskModel:
        return self.models[name]
