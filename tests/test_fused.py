"""Fused multi-task packs: a task trained in a pack ends where it would alone; mixed-task inference.

Tiny models (16 channels, 2 blocks, length 10), K = 3 tasks. No wall-clock assertions.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from peterrec.backbone import Backbone
from peterrec.config import BackboneConfig, PatchConfig
from peterrec.fused import (PackChoice, PackedPatches, PackTask, StackedPatches, check_packable, choose_pack_size,
                            predict_mixed, stacked_for, train_pack)
from peterrec.task_model import build_task_model
from peterrec.training import TrainConfig, train

VOCAB, LENGTH, CHANNELS = 40, 10, 16
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    bb = Backbone(BackboneConfig(vocab_size=VOCAB, channels=CHANNELS, dilations=(1, 2), max_len=LENGTH))
    return bb.requires_grad_(False)


def arrays(seed: int, n: int, kind: str, outputs: int):
    rng = np.random.default_rng(seed)
    items = rng.integers(1, VOCAB, size=(n, LENGTH)).astype(np.int64)
    items[:, : rng.integers(0, 4)] = 0  # some left padding
    labels = ((items[:, -1] + items[:, -2]) % outputs).astype(np.int64)  # learnable
    return items, labels


# name, kind, outputs, rows, TrainConfig kwargs: every task has its own lr, batch, epochs, seed.
TASKS = [
    ("gender", "classify", 3, 50, dict(lr=1e-2, batch_size=8, epochs=3, seed=1)),
    ("cold", "coldrec", 30, 40, dict(lr=5e-3, batch_size=12, epochs=2, max_steps=6, seed=2)),
    ("age", "classify", 4, 37, dict(lr=2e-2, batch_size=5, epochs=2, seed=3, weight_decay=0.01)),
]


def make_tasks(backbone, patch_configs, modes=None, evaluate=True, on_progress=None):
    """Fresh models (same init for the same seed) and PackTasks for TASKS."""
    tasks = []
    for i, (name, kind, outputs, n, cfg) in enumerate(TASKS):
        mode = modes[i] if modes else "peterrec"
        model = build_task_model(backbone, kind, outputs, mode, patch_configs[i], seed=10 + i)
        data = arrays(i, n, kind, outputs)
        valid_items = torch.as_tensor(arrays(100 + i, 20, kind, outputs)[0])
        # A metric that depends on every trained weight, so keep-best picks a definite step.
        metric = (lambda m=model, v=valid_items: -float(m.scores(v).square().mean())) if evaluate else None
        config = TrainConfig(log_every=2, eval_every=3 if i == 0 else 0, **cfg)
        tasks.append(PackTask(name, model, data, config, metric, (on_progress or {}).get(name)))
    return tasks


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOL, msg=lambda m: f"{name}: {m}")


def alone(task: PackTask):
    """The reference: training.train on a fresh copy of the task's model."""
    result = train(task.model, task.arrays, task.config, torch.device("cpu"), evaluate=task.evaluate,
                   on_progress=task.on_progress, loss_fn=task.model.loss)
    return weights(task.model), result


CASES = [  # (patch config per task, strategy)
    pytest.param([PatchConfig(insertion="serial", init_std=0.1)] * 3, "group", id="serial-ln2-group"),
    pytest.param([PatchConfig(insertion="serial", init_std=0.1)] * 3, "bmm", id="serial-ln2-bmm"),
    pytest.param([PatchConfig(insertion="parallel", init_std=0.1)] * 3, "bmm", id="parallel-ln2-bmm"),
    pytest.param([PatchConfig(insertion="parallel", init_std=0.1, train_layernorm2=False)] * 3, "group",
                 id="parallel-noln2-group"),
    pytest.param([PatchConfig(insertion="serial", init_std=0.1, train_layernorm2=False)] * 3, "bmm",
                 id="serial-noln2-bmm"),
    pytest.param([PatchConfig(insertion="serial", init_std=0.1),
                  PatchConfig(insertion="parallel", init_std=0.1, bottleneck_ratio=2, train_layernorm2=False),
                  PatchConfig(insertion="parallel", init_std=0.1, cardinality=2)], "bmm", id="mixed-bmm"),
    pytest.param([PatchConfig(insertion="serial", init_std=0.1),
                  PatchConfig(insertion="parallel", init_std=0.1, bottleneck_ratio=2, train_layernorm2=False),
                  PatchConfig(insertion="parallel", init_std=0.1, cardinality=2)], "group", id="mixed-group"),
]


@pytest.mark.parametrize("patch_configs, strategy", CASES)
def test_pack_matches_training_alone(backbone, patch_configs, strategy):
    packed = make_tasks(backbone, patch_configs)
    start = {t.name: weights(t.model) for t in packed}
    outcomes = train_pack(packed, strategy=strategy)
    for task, reference in zip(packed, make_tasks(backbone, patch_configs)):
        out = outcomes[task.name]
        assert out.ok, out.traceback
        ref_weights, ref_result = alone(reference)
        assert_same(weights(task.model), ref_weights)
        assert out.result.steps == ref_result.steps
        assert out.result.final_loss == pytest.approx(ref_result.final_loss, rel=1e-4)
        assert [h["step"] for h in out.result.history] == [h["step"] for h in ref_result.history]
        assert out.result.best_metric == pytest.approx(ref_result.best_metric, rel=1e-4, abs=1e-6)
        moved = max((weights(task.model)[n] - w).abs().max().item() for n, w in start[task.name].items())
        assert moved > 1e-3  # it really trained


def test_pack_of_one_matches_pack(backbone):
    """The per-task path alone (K=1 pack) is the same as inside a pack of 3."""
    configs = [PatchConfig(insertion="parallel", init_std=0.1)] * 3
    packed = make_tasks(backbone, configs)
    train_pack(packed)
    for task, single in zip(packed, make_tasks(backbone, configs)):
        assert train_pack([single])[single.name].ok
        assert_same(weights(task.model), weights(single.model))


def test_finecls_joins_a_pack(backbone):
    configs = [PatchConfig(init_std=0.1)] * 3
    modes = ["peterrec", "finecls", "peterrec"]
    packed = make_tasks(backbone, configs, modes)
    assert all(o.ok for o in train_pack(packed).values())
    for task, reference in zip(packed, make_tasks(backbone, configs, modes)):
        assert_same(weights(task.model), alone(reference)[0])


def failing_items(task: PackTask) -> PackTask:
    items = task.arrays[0].copy()
    items[-1, -1] = VOCAB + 5  # past the embedding table: the fused forward itself fails
    return PackTask(task.name, task.model, (items, task.arrays[1]), task.config, task.evaluate, task.on_progress)


def failing_labels(task: PackTask) -> PackTask:
    labels = task.arrays[1].copy()
    labels[:] = 99  # out of the class range: only this task's loss fails
    return PackTask(task.name, task.model, (task.arrays[0], labels), task.config, task.evaluate, task.on_progress)


def raise_at(step):
    def on_progress(progress):
        if progress.step >= step:
            raise RuntimeError("callback broke")
    return on_progress


def stop_at(step):
    return lambda progress: progress.step >= step


@pytest.mark.parametrize("how", ["callback-raises", "forward-fails", "loss-fails", "asks-to-stop"])
def test_one_task_leaving_does_not_stop_the_others(backbone, how):
    configs = [PatchConfig(insertion="serial", init_std=0.1)] * 3
    callbacks = {"callback-raises": {"gender": raise_at(4)}, "asks-to-stop": {"gender": stop_at(4)}}.get(how)
    packed = make_tasks(backbone, configs, on_progress=callbacks)
    if how == "forward-fails":
        packed[0] = failing_items(packed[0])
    if how == "loss-fails":
        packed[0] = failing_labels(packed[0])
    outcomes = train_pack(packed, strategy="bmm")
    gender = outcomes["gender"]
    if how == "asks-to-stop":
        assert gender.ok and gender.result.stopped and gender.result.steps == 4
        reference = make_tasks(backbone, configs, on_progress=callbacks)[0]
        assert_same(weights(packed[0].model), alone(reference)[0])
    else:
        assert not gender.ok and gender.result is None and gender.traceback
    for task, reference in list(zip(packed, make_tasks(backbone, configs)))[1:]:
        assert outcomes[task.name].ok
        assert outcomes[task.name].result.steps == reference.config.total_steps(len(reference.arrays[1]))
        assert_same(weights(task.model), alone(reference)[0])


def test_iter_train_pack_yields_each_task_as_it_leaves(backbone):
    """The short task comes back (final weights and all) while the longer ones still train."""
    from peterrec.fused import iter_train_pack

    configs = [PatchConfig(insertion="serial", init_std=0.1)] * 3
    steps_when_yielded = {}
    tasks = make_tasks(backbone, configs)
    totals = {t.name: t.config.total_steps(len(t.arrays[1])) for t in tasks}
    members = {t.name: t for t in tasks}
    for outcome in iter_train_pack(tasks):
        assert outcome.ok and outcome.result.steps == totals[outcome.name]
        steps_when_yielded[outcome.name] = {n: weights(t.model) for n, t in members.items()}
        reference = make_tasks(backbone, configs)[[t.name for t in tasks].index(outcome.name)]
        assert_same(weights(members[outcome.name].model), alone(reference)[0])  # final when yielded
    order = list(steps_when_yielded)
    assert sorted(order) == sorted(totals) and order[0] == min(totals, key=totals.get)  # "cold": 6 steps


@pytest.mark.parametrize("strategy", ["group", "bmm", "stacked"])
def test_packed_patches_forward_matches_each_task(backbone, strategy):
    """Rows in any order, mixed insertion / widths / LayerNorm2 and a task without patches; "stacked" is
    StackedPatches, the inference path (stacked once, gathered per row)."""
    configs = [PatchConfig(insertion="serial", init_std=0.3), PatchConfig(insertion="parallel", init_std=0.3,
               bottleneck_ratio=2, train_layernorm2=False), PatchConfig(insertion="parallel", init_std=0.3)]
    models = [build_task_model(backbone, "classify", 3, m, c, seed=i)
              for i, (m, c) in enumerate(zip(["peterrec", "peterrec", "finecls"], configs))]
    for m in models[:2]:  # LayerNorm2 copies that differ from the backbone's
        for bp in m.patches.blocks:
            if bp.ln2 is not None:
                torch.nn.init.normal_(bp.ln2.weight), torch.nn.init.normal_(bp.ln2.bias)
    items = torch.as_tensor(arrays(7, 9, "classify", 3)[0])
    task_of_row = torch.tensor([2, 0, 1, 1, 0, 2, 0, 0, 1])
    patches = [m.patches for m in models]
    adapter = (StackedPatches(backbone, patches).rows(task_of_row) if strategy == "stacked"
               else PackedPatches(backbone, patches, task_of_row, strategy))
    hidden = backbone(items, adapter)
    for k, m in enumerate(models):
        rows = task_of_row == k
        torch.testing.assert_close(hidden[rows], backbone(items[rows], m.patches), **TOL)


@pytest.mark.parametrize("strategy", ["group", "bmm", "stacked"])
def test_predict_mixed_equals_each_task_scores(backbone, strategy):
    configs = [PatchConfig(insertion="serial", init_std=0.3), PatchConfig(insertion="parallel", init_std=0.3)]
    models = {
        "gender": build_task_model(backbone, "classify", 3, "peterrec", configs[0], seed=1),
        "cold": build_task_model(backbone, "coldrec", 30, "peterrec", configs[1], seed=2),
        "head_only": build_task_model(backbone, "classify", 4, "finecls", seed=3),
        "own_copy": build_task_model(backbone, "classify", 2, "finelast", seed=4),  # not fusable
    }
    rng = np.random.default_rng(0)
    names = list(models)
    task_of_row = [names[i] for i in rng.integers(0, len(names), size=23)]
    items = arrays(5, 23, "classify", 3)[0]
    if strategy == "stacked":
        scores = predict_mixed(backbone, models, items, task_of_row, batch_size=7,
                               stacked=stacked_for(backbone, models))
    else:
        scores = predict_mixed(backbone, models, items, task_of_row, batch_size=7, strategy=strategy)
    for r, name in enumerate(task_of_row):
        expected = models[name].scores(torch.as_tensor(items[r:r + 1]))[0]
        torch.testing.assert_close(scores[r], expected, **TOL)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        predict_mixed(backbone, models, items[:1], ["nope"])


def test_choose_pack_size_measures_without_touching_the_tasks(backbone):
    tasks = make_tasks(backbone, [PatchConfig()] * 3, evaluate=False)
    before = [weights(t.model) for t in tasks]
    choice = choose_pack_size(backbone, tasks, budget_s=0.5)
    assert isinstance(choice, PackChoice) and choice.k in (1, 2, 3)
    assert 1 in choice.samples_per_s and choice.k in choice.samples_per_s and choice.reason
    for t, w in zip(tasks, before):
        assert_same(weights(t.model), w)
    assert choose_pack_size(backbone, tasks, budget_s=0.2, memory_limit=0).k == 1  # nothing fits


def test_unpackable_tasks_are_refused(backbone):
    own = build_task_model(backbone, "classify", 3, "fineall")
    other = build_task_model(copy.deepcopy(backbone), "classify", 3)
    with pytest.raises(ValueError, match="mode 'fineall' cannot be packed"):
        check_packable([build_task_model(backbone, "classify", 3), own])
    with pytest.raises(ValueError, match="not the pack's shared backbone"):
        check_packable([build_task_model(backbone, "classify", 3), other])


def test_a_task_with_nothing_to_train_is_refused_alone(backbone):
    configs = [PatchConfig(init_std=0.1)] * 3
    packed = make_tasks(backbone, configs, ["peterrec", "finecls", "peterrec"])
    packed[1].model.requires_grad_(False)  # finecls with a frozen head (and pooling) trains nothing
    outcomes = train_pack(packed)
    assert list(outcomes) == ["gender", "cold", "age"]
    assert not outcomes["cold"].ok and "nothing to train" in str(outcomes["cold"].error)
    for i in (0, 2):
        reference = make_tasks(backbone, configs, ["peterrec", "finecls", "peterrec"])[i]
        assert_same(weights(packed[i].model), alone(reference)[0])
