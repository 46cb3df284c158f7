"""The Ray Serve deployment: a FastAPI ingress whose requests meet in one mixed-task batch.

Every request object of POST /v1/predict is validated (orchestrator.serve.request), then awaits
`_score(row)`. Serve's @serve.batch collects the rows that arrive within the wait window, whatever
their task, and `_score` runs them through MultiTaskPredictor.predict: one fused backbone pass in
which each task's patches apply to its own rows. The pass runs on the replica's user event loop, as
Serve's batching examples do: meanwhile new requests wait in Serve's own loop and join the next batch
together. (In a worker thread it contended for the GIL with the request handling, which then fed the
batcher a row or two at a time: 1.6 rows per pass at concurrency 64, against 15 this way.)

Each replica builds its backbone zero-copy from the arrays in Ray's object store (orchestrator.shared),
and its task models from the versions the catalog accepted; every SYNC_S it reports its stats to the
catalog and picks up a new generation if there is one. A new predictor replaces the old one in one
assignment: a batch already running finishes on the one it started with.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (Request) at
# decoration time, and Serve's class-based view rewrites their signatures.
import asyncio
import hashlib
import hmac
import time
from contextlib import suppress
from dataclasses import dataclass

import numpy as np
import psutil
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from orchestrator.serve.catalog import ServedTasks, task_info, task_model
from orchestrator.serve.loopback import keep_grpc_on_loopback
from orchestrator.serve.metrics import CONTENT_TYPE, ServerMetrics, prometheus_text
from orchestrator.serve.request import MAX_BODY_BYTES, Context, ItemIds, Problem, RequestError, Row, Users, \
    read_predict
from orchestrator.shared import SharedRefs, shared_backbone, shared_sequences
from peterrec.predict import MultiTaskPredictor, Prediction

SYNC_S = 0.5  # how often a replica reports to the catalog and looks for a new generation
RELOAD_WAIT_S = 10.0  # how long POST /v1/admin/reload waits for every replica to serve the new generation
DEFAULT_TOP_K = 10  # as `predict --top-k`
TOKEN_ENV = "PETERREC_SERVE_TOKEN"

api = FastAPI(title="peterrec serve", docs_url=None, redoc_url=None)


@dataclass(frozen=True)
class ServerInputs:
    """What every replica reads from the object store, by reference (Ray resolves only top-level refs)."""

    refs: SharedRefs  # the backbone, and the sequences when user_id lookups are on
    lookups: object  # ObjectRef of {"raw_item_ids": list | None, "user_ids": list | None}


class Stats:
    """What a replica saw since its last report to the catalog."""

    def __init__(self):
        self.requests: list[tuple[float, int]] = []  # (latency ms, rows)
        self.batches: list[tuple[int, int]] = []  # (rows, distinct tasks)
        self.errors = 0

    def drain(self) -> dict:
        out = {"requests": self.requests, "batches": self.batches, "errors": self.errors}
        self.requests, self.batches, self.errors = [], [], 0
        return out


# Helpers come before the class: serve.ingress pickles the routes when the class is defined, with the
# module globals that exist at that moment.

async def _body(request: Request) -> bytes:
    """The request body, refused (413) as soon as it passes MAX_BODY_BYTES."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestError([Problem("body", f"at most {MAX_BODY_BYTES} bytes", f"{declared} bytes", 413)])
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError([Problem("body", f"at most {MAX_BODY_BYTES} bytes", "more", 413)])
        chunks.append(chunk)
    return b"".join(chunks)


def _forward(predictor: MultiTaskPredictor, rows: list[Row]) -> list[dict | None]:
    """Answers for a batch of rows in one fused pass; None for a row whose task the predictor lacks."""
    known = [i for i, row in enumerate(rows) if row.task in predictor.models]
    answers: list[dict | None] = [None] * len(rows)
    if not known:
        return answers
    items = torch.from_numpy(np.stack([rows[i].items for i in known]))  # (B, L)
    top_k = max((rows[i].top_k or DEFAULT_TOP_K) for i in known)
    predictions = predictor.predict(items, [rows[i].task for i in known], top_k=top_k)
    for i, prediction in zip(known, predictions):
        answers[i] = answer(prediction, rows[i], predictor.configs[rows[i].task])
    return answers


def answer(prediction: Prediction, row: Row, task: dict) -> dict:
    """One row's answer, in the fields (and names) of `predict`'s output columns."""
    out = {"task": row.task, "kind": prediction.kind}
    if prediction.kind == "classify":
        label = int(prediction.probabilities.argmax())
        out["prediction"] = label
        if task.get("labels"):
            out["prediction_label"] = task["labels"][label]
        out["probabilities"] = prediction.probabilities.tolist()
        return out
    k = row.top_k or DEFAULT_TOP_K  # the batch asked for its largest top_k; this row keeps its own
    items = prediction.items[:k].tolist()
    out["top_items"] = items
    out["top_scores"] = prediction.scores[:k].tolist()
    if task.get("target_raw_ids"):
        out["top_raw_ids"] = [task["target_raw_ids"][j] for j in items]
    return out


@serve.ingress(api)
class BundleServer:
    async def __init__(self, inputs: ServerInputs, settings: dict):
        keep_grpc_on_loopback()
        self.settings = settings
        torch.set_num_threads(max(1, int(settings["cpus"])))
        self.backbone = shared_backbone(inputs.refs, settings["device"])
        self.backbone_bytes = sum(t.nbytes for t in self.backbone.state_dict().values())
        lookups = await inputs.lookups
        users = None
        if inputs.refs.sequences is not None:
            users = Users(lookups["user_ids"], shared_sequences(inputs.refs))
        items = ItemIds(lookups["raw_item_ids"]) if lookups["raw_item_ids"] is not None else None
        config = self.backbone.config
        self.context = Context({}, config.vocab_size, config.max_len, items, users)
        self.metrics = ServerMetrics()
        self.stats = Stats()
        self.replica = serve.get_replica_context().replica_tag
        self.catalog = serve.get_deployment_actor("catalog")
        self.version = ("", -1)
        self.tasks = ServedTasks({}, {})
        self.predictor = MultiTaskPredictor(self.backbone, self.tasks, top_k=DEFAULT_TOP_K)
        self.fingerprint = None
        self.applying = asyncio.Lock()
        self._score.set_max_batch_size(settings["max_batch_size"])
        self._score.set_batch_wait_timeout_s(settings["batch_wait_s"])
        await self._sync()
        self.syncing = asyncio.get_running_loop().create_task(self._sync_forever())

    # -- routes --------------------------------------------------------------------------------

    @api.post("/v1/predict")
    async def predict(self, request: Request) -> Response:
        start = time.perf_counter()
        try:
            rows, single = read_predict(await _body(request), self.context)
        except RequestError as e:
            return self._rejected(e)
        answers = await asyncio.gather(*(self._score(row) for row in rows))
        gone = [(i, row.task) for i, (row, result) in enumerate(zip(rows, answers)) if result is None]
        if gone:  # unloaded by a reload between validation and the batch
            at = "" if single else f"[{gone[0][0]}]."
            return self._rejected(RequestError([Problem(f"{at}task", "a served task (it was just unloaded)",
                                                        gone[0][1], 404)]))
        ms = (time.perf_counter() - start) * 1000
        self.stats.requests.append((ms, len(rows)))
        self.metrics.latency.observe(ms)
        for row in rows:
            self.metrics.rows.inc(tags={"task": row.task})
        return JSONResponse(answers[0] if single else answers)

    @api.get("/v1/tasks")
    async def tasks(self) -> dict:
        versions = self.tasks.versions
        return {"backbone": {"fingerprint": self.fingerprint, "config": self.backbone.config.to_dict()},
                "generation": self.version[1], "tasks": [task_info(versions[n]) for n in sorted(versions)]}

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "replica": self.replica, "tasks": len(self.tasks.versions),
                "generation": self.version[1]}

    @api.get("/metrics")
    async def metrics_text(self) -> Response:
        return Response(await prometheus_text(), media_type=CONTENT_TYPE)

    @api.get("/v1/status")
    async def status(self) -> dict:
        return await self.catalog.status.remote()

    @api.post("/v1/admin/reload")
    async def reload(self, request: Request) -> Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        report = await self.catalog.reload.remote()
        await self._sync()
        deadline = time.monotonic() + RELOAD_WAIT_S
        while True:  # every replica serves the new generation before the answer
            synced, alive = await self.catalog.synced.remote(report["epoch"], report["generation"])
            if synced >= alive or time.monotonic() > deadline:
                break
            await asyncio.sleep(SYNC_S / 5)
        return JSONResponse({**report, "replicas": {"serving_it": synced, "alive": alive}})

    # -- batching ------------------------------------------------------------------------------

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005)  # both set from the settings in __init__
    async def _score(self, rows: list[Row]) -> list[dict | None]:
        answers = _forward(self.predictor, rows)  # a reload swaps the predictor between batches, not during one
        tasks = len({row.task for row in rows})
        self.stats.batches.append((len(rows), tasks))
        self.metrics.batch_rows.observe(len(rows))
        self.metrics.batch_tasks.observe(tasks)
        return answers

    # -- versions ------------------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_S)
            try:
                await self._sync()
            except Exception as e:  # noqa: BLE001  (a restarting catalog: keep serving, look it up again)
                print(f"replica {self.replica}: catalog unreachable ({type(e).__name__}: {e}); retrying")
                with suppress(ValueError):
                    self.catalog = serve.get_deployment_actor("catalog")

    async def _sync(self) -> None:
        async with self.applying:
            stats = {**self.stats.drain(), "memory": self._memory()}
            current = tuple(await self.catalog.heartbeat.remote(self.replica, self.version, stats))
            if current != self.version:
                await self._apply(await self.catalog.snapshot.remote())

    async def _apply(self, snapshot: dict) -> None:
        """Serve the snapshot's versions: build the changed ones, keep the others' models."""
        old = self.tasks
        versions = snapshot["versions"]
        changed = [v for n, v in versions.items() if n not in old.versions or old.versions[n].files != v.files]
        arrays = await asyncio.gather(*(v.tensors for v in changed))
        built = await asyncio.to_thread(self._build, changed, arrays)
        models = {n: built[n] if n in built else old.models[n] for n in versions}
        self.tasks = ServedTasks(versions, models)
        self.predictor = MultiTaskPredictor(self.backbone, self.tasks, top_k=DEFAULT_TOP_K)
        self.context.tasks = {n: v.config["task"] for n, v in versions.items()}
        self.fingerprint = snapshot["fingerprint"]
        self.version = (snapshot["epoch"], snapshot["generation"])
        self.metrics.tasks.set(len(versions))

    @torch.no_grad()
    def _build(self, versions: list, arrays: list) -> dict:
        """Task models of new versions, each run once before it takes traffic (lazy kernel set-up and
        first touches of the weights happen here, not in a user's request)."""
        models = {v.name: task_model(self.backbone, v, a) for v, a in zip(versions, arrays)}
        device = next(self.backbone.parameters()).device
        warm = torch.ones(1, self.backbone.config.max_len, dtype=torch.long, device=device)  # (1, L)
        for model in models.values():
            model.scores(warm)
        return models

    # -- helpers -------------------------------------------------------------------------------

    def _rejected(self, error: RequestError) -> JSONResponse:
        self.stats.errors += 1
        self.metrics.rejected.inc(tags={"status": str(error.status)})
        return JSONResponse(error.to_json(), status_code=error.status)

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        """401 unless the bearer token matches (only when the server was started with one)."""
        wanted = self.settings.get("token_sha256")
        if not wanted:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.encode()).hexdigest()
        if scheme.lower() == "bearer" and hmac.compare_digest(given, wanted):
            return None
        error = RequestError([Problem("Authorization", f"'Bearer <token>' with the token in ${TOKEN_ENV}",
                                      status=401)])
        return JSONResponse(error.to_json(), status_code=401, headers={"WWW-Authenticate": "Bearer"})

    def _memory(self) -> dict:
        return {"rss": psutil.Process().memory_info().rss, "backbone_bytes": self.backbone_bytes,
                "patch_bytes": sum(v.nbytes for v in self.tasks.versions.values())}
