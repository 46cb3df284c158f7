"""`pretrain --workers 2` on Ray Train: DDP over shards, checkpoints every epoch, an interrupted run
resumed from its latest checkpoint; and, without Ray, the pieces resume rests on (rank shards, the
optimizer state in safetensors + JSON, the training loop's replay of finished steps).

Ray is started once for the module (2 CPUs); each Ray Train run costs ~20 s of worker start-up on a
2-core machine, so the module runs two: one stopped after its first epoch, then its resume.
"""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import cli
from orchestrator.pretrain.ray_train import RUN_NAME, SETTINGS_FILE, default_storage, prepare_storage, rank_rows
from orchestrator.pretrain.state import RNG_FILE
from peterrec.task_state import OPTIMIZER_FILE, STATE_FILE, load_train_state, save_train_state
from peterrec.checkpoint import fingerprint, load_backbone

# 190 training users, 95 per worker, 32 / 2 = 16 per worker and step: 6 steps per epoch.
TINY = ["--channels", "8", "--dilations", "1,2", "--max-len", "20", "--batch-size", "32", "--lr", "0.005"]
STEPS_PER_EPOCH = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tasks.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "data", tasks=2, users=200, items=50, seed=0).parent


@pytest.fixture(scope="module")
def ray_cluster():
    from orchestrator.cluster import connect

    # Ray Train's controller polls its workers every 2 s by default; the preemption watcher is one more
    # process to start. Neither matters for a test of a few seconds of training.
    keys = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2", RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0")
    cluster = connect(num_cpus=2, object_store_mb=200)
    yield cluster
    cluster.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pretrain(*args) -> int:
    return cli.main(["pretrain", *map(str, args)])


def vectors_of(backbone) -> np.ndarray:
    return backbone.embedding.weight.detach().numpy()[:-1]  # without the [MASK] row


def svd_start(data: Path, seen_rows: int):
    """The SVD start of the run's training users (peterrec.item_init)."""
    from orchestrator.settings import resolve_spec
    from peterrec.item_init import svd_item_vectors
    from peterrec.pretrain import split_users
    from tasks import load_spec, read_sequences

    spec = load_spec(resolve_spec(data))
    sequences = read_sequences(spec.sequences, spec.vocab_size)
    vectors, seen = svd_item_vectors(sequences, split_users(len(sequences), 0.05, 0)[0], 8)
    assert len(vectors) == seen_rows
    return vectors, seen


def ray_checkpoints(storage: Path) -> list[Path]:
    return sorted(p for p in (storage / RUN_NAME).glob("checkpoint_*") if p.is_dir())


def test_two_workers_stop_after_an_epoch_then_resume_to_the_end(data, ray_cluster, tmp_path, capsys):
    """Cloze, so every step draws its masks from each rank's RNG: the resumed run ends with the very tensors
    of an uninterrupted one (each rank's RNG state is in the checkpoint; issue 16). With --item-init svd: the
    item embedding is the SVD start in every checkpoint (frozen, a resumed run included)."""
    out = tmp_path / "backbone"
    storage = default_storage(out)

    # An interrupted run: it stops after its first epoch (of 3) and leaves that epoch's checkpoint.
    args = ["--data", data, "--out", out, "--workers", 2, "--epochs", 3, *TINY, "--arch", "noncausal",
            "--item-init", "svd"]
    assert pretrain(*args, "--max-steps", STEPS_PER_EPOCH) == 0
    first = json.loads((out / "config.json").read_text())["pretraining"]
    assert first["steps"] == STEPS_PER_EPOCH and first["workers"] == 2 and first["resumed_from_step"] == 0
    assert first["valid_loss_after"] < first["valid_loss_before"]
    [checkpoint] = ray_checkpoints(storage)
    files = {p.name for p in checkpoint.iterdir()}
    assert files == {"config.json", "model.safetensors", OPTIMIZER_FILE, RNG_FILE, STATE_FILE}  # no pickle
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["step"] == STEPS_PER_EPOCH and len(state["history"]) == 1
    backbone, _ = load_backbone(out)
    assert fingerprint(backbone) == fingerprint(load_backbone(checkpoint)[0])
    assert "pretraining summary" in capsys.readouterr().out

    # Another run in the same storage is refused; the same command with --resume goes on to epoch 3.
    assert pretrain("--data", data, "--out", tmp_path / "other", "--storage", storage, "--workers", 2, *TINY) == 2
    assert "--resume" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert pretrain(*args, "--resume", "--force") == 0
    printed = capsys.readouterr().out
    assert "resumed from step" in printed and "pretraining summary" in printed
    info = json.loads((out / "config.json").read_text())["pretraining"]
    assert info["steps"] == 3 * STEPS_PER_EPOCH and info["resumed_from_step"] == STEPS_PER_EPOCH
    assert info["valid_loss_before"] == first["valid_loss_before"]  # measured once, kept in the checkpoint
    assert info["valid_loss_after"] < first["valid_loss_after"] < info["valid_loss_before"]
    latest = ray_checkpoints(storage)[-1]
    assert json.loads((latest / STATE_FILE).read_text())["step"] == 3 * STEPS_PER_EPOCH
    resumed, config = load_backbone(out)
    assert fingerprint(resumed) == fingerprint(load_backbone(latest)[0]) != fingerprint(backbone)
    assert config["backbone"]["channels"] == 8 and info["item_init"] == "svd"
    vectors, seen = svd_start(data, seen_rows=len(vectors_of(resumed)))
    assert np.allclose(vectors_of(resumed)[seen], vectors[seen]) and np.allclose(vectors_of(backbone)[seen],
                                                                                   vectors[seen])

    # The same three epochs in one go: bit for bit the same backbone and output layer.
    whole = tmp_path / "whole"
    assert pretrain(*[whole if a == out else a for a in args]) == 0
    a, b = load_file(str(out / "model.safetensors")), load_file(str(whole / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        max((a[k] - b[k]).abs().max().item() for k in a)


def test_resume_checks_the_storage_before_ray_starts(data, tmp_path, capsys):
    out = tmp_path / "backbone"
    args = ["--data", data, "--out", out, "--workers", 2, *TINY]
    assert pretrain(*args, "--resume") == 2
    assert "no pretraining run to resume" in capsys.readouterr().err
    assert not out.exists() and not default_storage(out).exists()


def test_storage_refuses_an_earlier_run_and_changed_settings(tmp_path):
    storage = tmp_path / "run.ray"
    settings = {"backbone": {"channels": 8}, "train": {"epochs": 1, "max_steps": None, "lr": 0.1}, "workers": 2}
    prepare_storage(storage, settings, resume=False, force=False)
    prepare_storage(storage, settings, resume=False, force=False)  # no run started there yet (Ray failed?)
    (storage / RUN_NAME).mkdir()  # as Ray Train does when the run starts
    with pytest.raises(FileExistsError, match="--resume"):
        prepare_storage(storage, settings, resume=False, force=False)
    longer = {**settings, "train": {**settings["train"], "epochs": 5, "max_steps": 100}}
    prepare_storage(storage, longer, resume=True, force=False)  # more epochs / steps: fine
    with pytest.raises(ValueError, match=r"workers: 2 -> 3.*train.lr: 0.1 -> 0.2"):
        prepare_storage(storage, {**longer, "workers": 3, "train": {**longer["train"], "lr": 0.2}},
                        resume=True, force=False)
    (storage / "stale").write_text("x")
    prepare_storage(storage, settings, resume=False, force=True)
    assert sorted(p.name for p in storage.iterdir()) == [SETTINGS_FILE]


@pytest.mark.parametrize("n, world", [(190, 2), (7, 3), (1, 2)])
def test_rank_shards_are_equal_sized_and_cover_every_row(n, world):
    shards = [rank_rows(n, world, rank, seed=0) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert set(np.concatenate(shards)) == set(range(n))
    assert sum(map(len, shards)) - n < world  # wrapped round like DistributedSampler, never more
    np.testing.assert_array_equal(shards[0], rank_rows(n, world, 0, seed=0))
    if n > world:
        assert not np.array_equal(shards[0], rank_rows(n, world, 0, seed=1))


def tiny_objective():
    from peterrec import Backbone, BackboneConfig
    from peterrec.objectives import make_objective

    torch.manual_seed(0)
    return make_objective(Backbone(BackboneConfig(vocab_size=30, channels=8, dilations=(1, 2), max_len=10)))


def test_resumed_training_matches_an_uninterrupted_run(tmp_path):
    """Stopped after epoch 1, saved (weights + optimizer), loaded into fresh objects, trained on: the
    same weights as two epochs in one go (the next-item objective is deterministic)."""
    from orchestrator.pretrain.state import load_weights
    from peterrec.training import TrainConfig, make_optimizer, train

    items = np.random.default_rng(0).integers(1, 30, size=(40, 11))
    config = TrainConfig(epochs=2, batch_size=16, lr=0.01, seed=3)
    whole = tiny_objective()
    train(whole, (items,), config, torch.device("cpu"))

    first = tiny_objective()
    optimizer = make_optimizer(list(first.parameters()), config)
    saved = []

    def save_and_stop(p):
        from peterrec.checkpoint import save_checkpoint

        path = save_checkpoint(tmp_path / "ckpt", first.backbone, first.output)
        save_train_state(path, optimizer, {"step": p.step, "epoch": p.epoch})
        saved.append(p.step)
        return True

    train(first, (items,), config, torch.device("cpu"), optimizer=optimizer, on_epoch_end=save_and_stop)
    assert saved == [3]

    second = tiny_objective()
    optimizer = make_optimizer(list(second.parameters()), config)
    load_weights(tmp_path / "ckpt", second)
    state = load_train_state(tmp_path / "ckpt", optimizer)
    assert state == {"step": 3, "epoch": 0}
    result = train(second, (items,), config, torch.device("cpu"), optimizer=optimizer, start_step=state["step"])
    assert result.steps == 6
    for a, b in zip(whole.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_optimizer_state_is_safetensors_and_json(tmp_path):
    objective = tiny_objective()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=0.01, betas=(0.8, 0.9))
    objective(torch.randint(1, 30, (4, 11))).backward()
    optimizer.step()
    save_train_state(tmp_path, optimizer, {"step": 1})
    tensors = load_file(str(tmp_path / OPTIMIZER_FILE))
    assert "state.0.exp_avg" in tensors and "state.0.step" in tensors
    fresh = torch.optim.AdamW(objective.parameters(), lr=0.5)
    assert load_train_state(tmp_path, fresh) == {"step": 1}
    assert fresh.param_groups[0]["lr"] == 0.01 and fresh.param_groups[0]["betas"] == (0.8, 0.9)
    for index, entries in optimizer.state_dict()["state"].items():
        for key, value in entries.items():
            torch.testing.assert_close(fresh.state_dict()["state"][index][key], value)


@pytest.mark.parametrize("sampled", [0, 5], ids=["cloze", "cloze-sampled-softmax"])
def test_resume_with_the_rng_state_is_bit_exact(tmp_path, sampled):
    """Cloze masks and sampled negatives come from the global RNG: a run resumed with the RNG state taken
    where it stopped trains exactly as one that never stopped (issue 16: reseeding made them differ)."""
    from peterrec import Backbone, BackboneConfig
    from peterrec.objectives import make_objective
    from peterrec.training import TrainConfig, make_optimizer, rng_state, train

    def objective():
        torch.manual_seed(0)
        return make_objective(Backbone(BackboneConfig(vocab_size=30, channels=8, dilations=(1, 2), max_len=10,
                                                      causal=False)), sampled)

    items = np.random.default_rng(0).integers(1, 30, size=(40, 10))
    config = TrainConfig(epochs=2, batch_size=16, lr=0.01, seed=3)
    cpu = torch.device("cpu")
    whole = objective()
    train(whole, (items,), config, cpu)

    first = objective()
    optimizer = make_optimizer(list(first.parameters()), config)
    saved = {}

    def stop(p):
        saved.update(step=p.step, rng=rng_state(cpu), weights={k: v.clone() for k, v in first.state_dict().items()},
                     optimizer=copy.deepcopy(optimizer.state_dict()))
        return True

    train(first, (items,), config, cpu, optimizer=optimizer, on_epoch_end=stop)
    for rng in (saved["rng"], None):  # with the saved RNG state: exact; reseeded: not
        second = objective()
        second.load_state_dict(saved["weights"])
        optimizer = make_optimizer(list(second.parameters()), config)
        optimizer.load_state_dict(saved["optimizer"])
        torch.manual_seed(123)  # whatever happened in between
        train(second, (items,), config, cpu, optimizer=optimizer, start_step=saved["step"], rng=rng)
        same = all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), second.state_dict().values()))
        assert same == (rng is not None)
