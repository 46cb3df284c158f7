"""Data-parallel pretraining on Ray Train: `python cli.py pretrain --workers N`.

A TorchTrainer runs N workers with DDP (gloo on CPU, NCCL on GPUs). The driver puts the sequences into
the object store once (numpy CSR arrays); each worker pads its own shard of the training users (a
seeded DistributedSampler-style split) and runs the project's one training loop (peterrec.training)
on the DDP-wrapped objective, with the global --batch-size split across the workers. At the end of
each epoch rank 0 measures the validation loss and reports a Ray Train checkpoint: the backbone
checkpoint format (safetensors + JSON) plus the optimizer and step (orchestrator.pretrain.state, peterrec.task_state).

Storage: STORAGE/pretrain (Ray Train's run directory) and STORAGE/peterrec-pretrain.json (the
settings the run started with). Running again with the same storage resumes: Ray Train V2 (ray 2.60)
restores the run's latest checkpoint by itself for the same RunConfig(storage_path, name), and the
worker picks it up with ray.train.get_checkpoint() (TorchTrainer.restore / can_restore are deprecated
there and raise). Progress goes from rank 0 to the job's progress hub (orchestrator.hub), which the
driver polls for its display.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from tasks.atomic import write_json_atomic

RUN_NAME = "pretrain"  # Ray Train's run directory inside the storage
SETTINGS_FILE = "peterrec-pretrain.json"
TASK = "pretrain"  # the one task of the progress hub
RESUMABLE = ("epochs", "max_steps", "bf16", "precision", "log_every")  # train settings a resumed run may change
POLL_S = 0.25


class PretrainFailed(RuntimeError):
    """The Ray Train run failed (a worker raised, or was lost); the message carries the cause."""


@dataclass
class RayOptions:
    """Where and how the workers run."""

    workers: int
    storage: Path  # Ray Train's storage_path (a directory all nodes can reach)
    resume: bool = False  # continue the run in `storage` from its latest checkpoint
    force: bool = False  # start over even if `storage` holds an earlier run
    address: str | None = None  # join this cluster; None: start an embedded loopback one
    use_gpu: bool = False  # one GPU per worker
    max_failures: int = 0  # Ray Train restarts the workers from the latest checkpoint this many times

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1 (got {self.workers})")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0 (got {self.max_failures})")
        self.storage = Path(self.storage).resolve()


def default_storage(out: str | Path) -> Path:
    """OUT.ray beside the output checkpoint."""
    out = Path(out)
    return out.with_name(out.name + ".ray")


def rank_rows(n: int, world: int, rank: int, seed: int) -> np.ndarray:
    """Rank's shard of rows 0..n-1, as torch's DistributedSampler(shuffle, drop_last=False) cuts it:
    a seeded permutation, wrapped round to a multiple of `world`, every world-th entry. Every rank gets
    the same number of rows, so every rank takes the same number of steps (DDP needs that)."""
    order = np.random.default_rng(seed).permutation(n)
    order = np.resize(order, math.ceil(n / world) * world)
    return np.sort(order[rank::world])


def rank_batch_size(batch_size: int, world: int) -> int:
    """The global --batch-size split across the workers (one step sees about batch_size examples)."""
    return max(1, batch_size // world)


def run_settings(sequences, config, train_config, workers: int, sampled_softmax: int,
                 valid_fraction: float, item_init: str = "random") -> dict:
    """What a resumed run must share with the run it continues (the data by content)."""
    digest = hashlib.sha256(np.ascontiguousarray(sequences.offsets).tobytes())
    digest.update(np.ascontiguousarray(sequences.items).tobytes())
    return {"format": "peterrec-pretrain-run", "version": 1, "backbone": config.to_dict(),
            "train": train_config.to_dict(), "workers": workers, "sampled_softmax": sampled_softmax,
            "valid_fraction": valid_fraction, "item_init": item_init,
            "data": {"users": len(sequences), "vocab_size": sequences.vocab_size, "sha256": digest.hexdigest()}}


def prepare_storage(storage: Path, settings: dict, resume: bool, force: bool) -> None:
    """Check `storage` against --resume / --force, then record the run's settings there.

    Without --resume an earlier run is refused (or, with --force, removed); with --resume the settings
    must match the earlier run's, but for --epochs and --max-steps."""
    saved_path = storage / SETTINGS_FILE
    if resume:
        try:
            saved = json.loads(saved_path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{storage}: no pretraining run to resume there (run without --resume "
                                    f"to start one)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{saved_path}: not valid JSON ({e})") from None
        saved = {"item_init": "random", **saved}  # runs started before the setting existed
        changed = [f"{key}: {saved.get(key)!r} -> {settings[key]!r}" for key in settings
                   if key != "train" and saved.get(key) != settings[key]]
        old_train = saved.get("train", {})
        changed += [f"train.{key}: {old_train.get(key)!r} -> {value!r}" for key, value in settings["train"].items()
                    if key not in RESUMABLE and old_train.get(key) != value]
        if changed:
            raise ValueError(f"{saved_path}: --resume needs the settings the run started with (only "
                             f"--epochs and --max-steps may change); changed: {'; '.join(changed)}")
    elif (storage / RUN_NAME).exists():  # Ray Train made it: a run started there (settings alone do not count)
        if not force:
            raise FileExistsError(f"{storage} holds an earlier pretraining run: pass --resume to continue it, "
                                  f"or --force to start over")
        shutil.rmtree(storage)
    storage.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved_path, settings)


@dataclass
class RayPretrainOutcome:
    outcome: object  # peterrec.pretrain.PretrainOutcome, as the in-process run returns it
    resumed_from_step: int  # 0 for a fresh run
    storage: Path
    checkpoint: str  # the Ray Train checkpoint the weights come from


def pretrain_on_ray(sequences, config, train_config, options: RayOptions, sampled_softmax: int = 0,
                    valid_fraction: float = 0.05, on_progress: Callable | None = None,
                    item_init: str = "random") -> RayPretrainOutcome:
    """Pretrain `config` on `sequences` with options.workers DDP workers; blocks until done. item_init as
    peterrec.pretrain.pretrain's (every worker computes the same start from the same training users).

    Raises FileExistsError / FileNotFoundError / ValueError for settings a user can fix (before Ray
    starts), ConnectionError when --address cannot be joined, PretrainFailed when the run fails.
    """
    if sequences.vocab_size > config.vocab_size:
        raise ValueError(f"the sequences use a vocabulary of {sequences.vocab_size} items but the backbone "
                         f"has vocab_size {config.vocab_size}")
    settings = run_settings(sequences, config, train_config, options.workers, sampled_softmax, valid_fraction,
                            item_init)
    prepare_storage(options.storage, settings, options.resume, options.force)

    from orchestrator.cluster import connect

    embedded_cpus = None if options.address else max(os.cpu_count() or 1, options.workers)
    cluster = connect(options.address, num_cpus=embedded_cpus)
    try:
        _check_fits(cluster.resources(), options)
        return _fit(sequences, config, train_config, options, sampled_softmax, valid_fraction, on_progress, item_init)
    finally:
        cluster.shutdown()


def _check_fits(resources: dict, options: RayOptions) -> None:
    if options.use_gpu and resources["gpus"] < options.workers:
        raise ValueError(f"--workers {options.workers} needs {options.workers} GPUs (one each) but the cluster "
                         f"has {resources['gpus']:g}; pass --device cpu or fewer --workers")
    if resources["cpus"] < options.workers:
        raise ValueError(f"--workers {options.workers} needs {options.workers} CPUs but the cluster has "
                         f"{resources['cpus']:g}")


def _fit(sequences, config, train_config, options: RayOptions, sampled_softmax: int, valid_fraction: float,
         on_progress: Callable | None, item_init: str) -> RayPretrainOutcome:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from orchestrator.hub import ActorHub, start_hub
    from orchestrator.pretrain.state import load_weights
    from orchestrator.state import TaskState
    from peterrec.backbone import Backbone
    from peterrec.objectives import make_objective
    from peterrec.pretrain import PretrainOutcome, split_users
    from peterrec.training import TrainResult

    train_rows, valid_rows = split_users(len(sequences), valid_fraction, train_config.seed)
    data = ray.put({"offsets": sequences.offsets, "items": sequences.items, "vocab_size": sequences.vocab_size,
                    "train_rows": train_rows, "valid_rows": valid_rows})  # the one put of the sequences
    hub = ActorHub(start_hub([TaskState(TASK, "pretrain", "valid loss")]))
    worker_train = replace(train_config, batch_size=rank_batch_size(train_config.batch_size, options.workers))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"data": data, "hub": hub, "backbone": config.to_dict(),
                           "train": worker_train.to_dict(), "sampled_softmax": sampled_softmax,
                           "item_init": item_init},
        scaling_config=ray.train.ScalingConfig(num_workers=options.workers, use_gpu=options.use_gpu),
        run_config=ray.train.RunConfig(
            name=RUN_NAME, storage_path=str(options.storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=options.max_failures)),
    )
    follower = _Follower(hub, on_progress)
    follower.start()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise PretrainFailed(f"pretraining on Ray failed ({e}); `--resume` continues from the latest "
                             f"checkpoint in {options.storage}") from None
    finally:
        follower.finish()
        ray.kill(hub.actor)
    summary = result.return_value
    if result.checkpoint is None or not summary:
        raise PretrainFailed(f"the run in {options.storage} stopped before its end (interrupted?); `--resume` "
                             f"continues it from its latest checkpoint")
    backbone = Backbone(config)
    objective = make_objective(backbone, sampled_softmax)
    with result.checkpoint.as_directory() as directory:
        load_weights(Path(directory), objective)
    train_result = TrainResult(summary["steps"], summary["final_loss"], None, summary["seconds"],
                               summary["samples_per_s"], False, summary["history"])
    outcome = PretrainOutcome(backbone, objective.eval(), train_result, summary["valid_loss_before"],
                              summary["valid_loss_after"], item_init=item_init)
    return RayPretrainOutcome(outcome, summary["start_step"], options.storage, result.checkpoint.path)


class _Follower(threading.Thread):
    """Polls the hub while fit() blocks the main thread, and hands on_progress a training.Progress."""

    def __init__(self, hub, on_progress: Callable | None):
        super().__init__(daemon=True, name="pretrain-progress")
        self.hub, self.on_progress = hub, on_progress
        self.stop = threading.Event()
        self.version = 0

    def poll(self) -> None:
        from peterrec.training import Progress

        snapshot = self.hub.snapshot(self.version, timeout=10)
        self.version = snapshot["version"]
        task = snapshot["tasks"].get(TASK)
        if task and task["total"] and self.on_progress:
            self.on_progress(Progress(task["step"], task["total"], task["epoch"], _number(task["loss"]),
                                      task["samples_per_s"] or 0.0, task["metric"]))

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            try:
                self.poll()
            except Exception:  # a display must never fail the run; the next poll may do better
                continue

    def finish(self) -> None:
        self.stop.set()
        self.join()
        try:
            self.poll()
        except Exception:
            pass


def _number(value) -> float:
    return float("nan") if value is None else float(value)


# --- On each worker ------------------------------------------------------------------------------


def train_worker(config: dict) -> dict | None:
    """The Ray Train loop of one worker (rank 0 returns the run's summary)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from orchestrator.pretrain.state import load_rng, load_weights, save_pretrain_state, save_rng
    from orchestrator.shared import SequenceArrays
    from peterrec.backbone import Backbone
    from peterrec.config import BackboneConfig
    from peterrec.item_init import init_item_embedding
    from peterrec.objectives import make_objective
    from peterrec.pretrain import mean_loss, pretrain_arrays
    from peterrec.task_state import load_train_state
    from peterrec.training import TrainConfig, rng_state, train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    backbone_config = BackboneConfig.from_dict(config["backbone"])
    train_config = TrainConfig(**config["train"])
    device = ray.train.torch.get_device()
    hub = config["hub"]

    data = ray.get(config["data"])  # zero-copy views of the driver's arrays
    sequences = SequenceArrays(data["offsets"], data["items"], data["vocab_size"])
    shard = data["train_rows"][rank_rows(len(data["train_rows"]), world, rank, train_config.seed)]
    train_items = pretrain_arrays(sequences, backbone_config, shard)  # (n / world, L [+1]) padded
    valid_items = pretrain_arrays(sequences, backbone_config, data["valid_rows"]) if rank == 0 else None

    torch.manual_seed(train_config.seed)
    backbone = Backbone(backbone_config)
    # Before a checkpoint's weights replace it: a frozen embedding stays frozen in a resumed run too.
    init_item_embedding(backbone, config["item_init"], sequences, data["train_rows"], train_config.seed)
    objective = make_objective(backbone, config["sampled_softmax"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a resumed run (or a restart after a failure): Ray Train's latest
        with checkpoint.as_directory() as directory:
            load_weights(Path(directory), objective)
            model = ray.train.torch.prepare_model(objective)  # to the device, DDP when world > 1
            optimizer = _optimizer(model, train_config)
            state = load_train_state(Path(directory), optimizer)
            rng = load_rng(Path(directory), rank, world)
    else:
        model = ray.train.torch.prepare_model(objective)
        optimizer = _optimizer(model, train_config)
        state = {"step": 0, "epoch": 0, "valid_loss_before": None, "history": []}
        rng = None
    start_step = int(state["step"])
    if rank == 0 and state["valid_loss_before"] is None:
        state["valid_loss_before"] = mean_loss(objective, valid_items, device)
    attempt = hub.started(TASK, ray.util.get_node_ip_address(), os.getpid())[0] if rank == 0 else 0
    latest_valid = {"loss": state["history"][-1]["valid_loss"] if state["history"] else None}

    def on_progress(p) -> None:
        if rank == 0:
            hub.report(TASK, attempt, p.step, p.total_steps, p.epoch, p.loss, latest_valid["loss"],
                              p.samples_per_s * world)

    def on_epoch_end(p) -> None:
        metrics = {"step": p.step, "epoch": p.epoch, "loss": p.loss}
        rngs = _gather(rng_state(device), world)  # every rank takes part; rank 0 saves them all
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        metrics["valid_loss"] = latest_valid["loss"] = mean_loss(objective, valid_items, device)
        state["history"].append({"step": p.step, "epoch": p.epoch, "loss": p.loss,
                                 "valid_loss": metrics["valid_loss"]})
        state.update(step=p.step, epoch=p.epoch)
        on_progress(p)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "checkpoint"
            save_pretrain_state(path, objective, optimizer, state,
                                {"pretraining": {"step": p.step, "epoch": p.epoch, "workers": world}})
            save_rng(path, rngs)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(path))

    result = train(model, (train_items,), train_config, device, on_progress=on_progress, optimizer=optimizer,
                   start_step=start_step, on_epoch_end=on_epoch_end, rng=rng)
    if rank != 0:
        return None
    final_loss = result.final_loss if start_step < result.steps or not state["history"] \
        else state["history"][-1]["loss"]  # nothing left to train: the loss of the restored checkpoint
    return {"steps": result.steps, "start_step": start_step, "final_loss": final_loss,
            "seconds": result.seconds, "samples_per_s": result.samples_per_s * world,
            "valid_loss_before": state["valid_loss_before"],
            "valid_loss_after": mean_loss(objective, valid_items, device), "history": state["history"]}


def _gather(state: dict, world: int) -> list[dict]:
    """Every rank's RNG state, in rank order (CPU tensors: the same call on gloo and NCCL)."""
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return [state]
    states = [None] * world
    dist.all_gather_object(states, {k: v.cpu() for k, v in state.items()})
    return states


def _optimizer(model, train_config):
    from peterrec.training import make_optimizer

    return make_optimizer([p for p in model.parameters() if p.requires_grad], train_config)
