"""Precision: bf16 autocast on CPU as on CUDA, the legacy bf16 flag, choose_precision, and metric parity
of bf16 against fp32 on the synthetic world. Tiny models; no wall-clock assertions (the measurement
runs on a fake clock)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import peterrec.precision as precision
from peterrec.backbone import Backbone
from peterrec.config import BackboneConfig, PatchConfig
from peterrec.finetune import FinetuneSettings, finetune_task, measure_precision, with_overrides
from peterrec.fused import PackTask, train_pack
from peterrec.task_model import build_task_model
from peterrec.pretrain import pretrain
from peterrec.training import TrainConfig, train
from tasks import load_job
from tasks.synth import synthesize

CPU = torch.device("cpu")


def test_precision_setting_and_the_legacy_bf16_flag():
    assert TrainConfig().precision == "fp32" and not TrainConfig().bf16
    old = {"epochs": 2, "batch_size": 8, "bf16": True}  # settings.train of an older adapter_config.json
    config = TrainConfig(**old)
    assert config.precision == "bf16" and config.bf16
    assert "bf16" not in config.to_dict() and config.to_dict()["precision"] == "bf16"
    assert TrainConfig(**config.to_dict()) == config
    assert replace(config, precision="fp32").precision == "fp32"  # an explicit precision wins
    assert replace(config, epochs=3).precision == "bf16"
    assert TrainConfig(precision="auto").precision == "auto"
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")
    settings = FinetuneSettings()
    assert with_overrides(settings, {"bf16": True}).train.precision == "bf16"  # an older task spec
    assert with_overrides(settings, {"precision": "bf16"}).train.precision == "bf16"


def fake_clock(monkeypatch, seconds: dict[str, float]):
    """choose_precision's clock advances by seconds[precision] per step: a deterministic measurement."""
    now = [0.0]
    monkeypatch.setattr(precision.time, "perf_counter", lambda: now[0])

    def step(which: str) -> int:
        now[0] += seconds[which]
        return 64

    return step


@pytest.mark.parametrize("native, seconds, expected", [
    (True, {"fp32": 1.0, "bf16": 0.5}, "bf16"),  # 2x: worth it
    (True, {"fp32": 1.0, "bf16": 0.95}, "fp32"),  # under min_gain
    (True, {"fp32": 1.0, "bf16": 2.0}, "fp32"),  # emulated, slower
    (False, {"fp32": 1.0, "bf16": 0.1}, "fp32"),  # no native units: not even measured
])
def test_choose_precision_auto(monkeypatch, native, seconds, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: (native, "units" if native else "none"))
    choice = precision.choose_precision("auto", CPU, fake_clock(monkeypatch, seconds), budget_s=10.0)
    assert choice.precision == expected
    assert choice.reason.startswith(expected)
    assert bool(choice.samples_per_s) == native
    if native:
        assert choice.samples_per_s["fp32"] == pytest.approx(64 / seconds["fp32"])


def test_choose_precision_keeps_an_explicit_choice():
    for asked in ("fp32", "bf16"):
        assert precision.choose_precision(asked, CPU, step=None).precision == asked
    with pytest.raises(ValueError, match="precision"):
        precision.choose_precision("half", CPU)


def tiny_task(seed: int = 0):
    torch.manual_seed(0)
    backbone = Backbone(BackboneConfig(vocab_size=40, channels=16, dilations=(1, 2), max_len=10)).requires_grad_(False)
    rng = np.random.default_rng(seed)
    items = rng.integers(1, 40, size=(48, 10)).astype(np.int64)
    labels = (items[:, -1] % 3).astype(np.int64)
    return backbone, (items, labels)


def trained(backbone, arrays, precision_: str, seed: int = 1):
    model = build_task_model(backbone, "classify", 3, "peterrec", PatchConfig(init_std=0.1), seed=seed)
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, seed=seed, precision=precision_)
    train(model, arrays, config, CPU, loss_fn=model.loss)
    return model


def test_bf16_autocast_trains_on_cpu_with_fp32_master_weights():
    backbone, arrays = tiny_task()
    fp32, bf16 = trained(backbone, arrays, "fp32"), trained(backbone, arrays, "bf16")
    a, b = fp32.task_state_dict(), bf16.task_state_dict()
    assert all(t.dtype == torch.float32 for t in b.values())
    assert any(not torch.equal(a[n], b[n]) for n in a)  # autocast really ran the matmuls in bf16
    for n in a:
        torch.testing.assert_close(b[n], a[n], atol=0.05, rtol=0.05)


def test_a_pack_trains_in_its_tasks_precision():
    """A bf16 pack ends close to each task trained alone in bf16, and differs from an fp32 pack."""
    backbone, _ = tiny_task()

    def tasks(precision_):
        out = []
        for i in range(2):
            _, arrays = tiny_task(seed=i)
            model = build_task_model(backbone, "classify", 3, "peterrec", PatchConfig(init_std=0.1), seed=i)
            config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, seed=i, precision=precision_)
            out.append(PackTask(f"t{i}", model, arrays, config))
        return out

    packed, packed32 = tasks("bf16"), tasks("fp32")
    assert all(o.ok for o in train_pack(packed).values()) and all(o.ok for o in train_pack(packed32).values())
    for pack_task, task32, alone in zip(packed, packed32, tasks("bf16")):
        train(alone.model, alone.arrays, alone.config, CPU, loss_fn=alone.model.loss)
        mine, single, full = (t.model.task_state_dict() for t in (pack_task, alone, task32))
        assert any(not torch.equal(mine[n], full[n]) for n in mine)
        for n in mine:
            torch.testing.assert_close(mine[n], single[n], atol=0.02, rtol=0.02)


# ------------------------------------------------------------------------------------------------------
# Metric parity on the synthetic world: every task, bf16 against fp32 and fp32's seed-to-seed spread.

POINT = 0.01  # metrics are fractions: one point is 0.01
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    spec = synthesize(tmp_path_factory.mktemp("world") / "data", tasks=4, users=2000, items=80, seed=5, max_len=20)
    job, sequences, data = load_job(spec)
    config = BackboneConfig(vocab_size=job.vocab_size, channels=32, dilations=(1, 2), max_len=20)
    backbone = pretrain(sequences, config, TrainConfig(epochs=1, batch_size=64, lr=3e-3, seed=0)).backbone
    return job, sequences, data, backbone.requires_grad_(False)


def test_bf16_metrics_match_fp32_on_the_synthetic_world(world):
    job, sequences, data, backbone = world
    assert {t.kind for t in job.tasks} == {"classify", "coldrec"}
    for task in job.tasks:
        values = {}
        for precision_ in ("fp32", "bf16"):
            for seed in SEEDS:
                train_config = TrainConfig(epochs=50, max_steps=100, batch_size=64, lr=3e-3, seed=seed,
                                           precision=precision_)
                settings = FinetuneSettings(train=train_config)
                values[precision_, seed] = finetune_task(backbone, task, data[task.name], sequences, settings).value
        fp32 = np.array([values["fp32", s] for s in SEEDS])
        bf16 = np.array([values["bf16", s] for s in SEEDS])
        spread = fp32.max() - fp32.min()
        gap = abs(bf16.mean() - fp32.mean())
        assert gap <= max(0.5 * POINT, spread), (task.name, task.metric, fp32, bf16)


def test_measure_precision_on_a_job(world):
    job, sequences, data, backbone = world
    task = job.tasks[0]
    members = [(task, data[task.name], FinetuneSettings(train=TrainConfig(batch_size=32)))]
    assert measure_precision(backbone, members, sequences, "fp32").precision == "fp32"
    choice = measure_precision(backbone, members, sequences, "auto", budget_s=0.5)
    assert choice.precision in ("fp32", "bf16") and choice.reason.startswith(choice.precision)
    native, _ = precision.native_bf16(CPU)
    assert set(choice.samples_per_s) == ({"fp32", "bf16"} if native else set())
