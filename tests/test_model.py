"""The model library: backbones, patches, modes, objectives, metrics, accounting, checkpoints."""

import math

import numpy as np
import pytest
import torch

from peterrec import Backbone, BackboneConfig, PatchConfig, TrainConfig, build_task_model, param_report, train
from peterrec.checkpoint import CheckpointError, fingerprint, load_backbone, save_checkpoint
from peterrec.efficiency import storage_for
from peterrec.modes import MODE_NAMES
from peterrec.metrics import full_ranks, rank_metrics_for, ranking_metrics, ranks_against, sample_negatives
from peterrec.objectives import ClozeObjective, NextItemObjective
from tasks import OutputExistsError

V, L = 40, 12


def tiny(causal=True, **kw) -> Backbone:
    torch.manual_seed(0)
    return Backbone(BackboneConfig(vocab_size=V, channels=16, dilations=(1, 2), causal=causal, max_len=L, **kw))


def items(b=4, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, V, (b, L), generator=g)
    x[0, :5] = 0  # left padding
    return x


@pytest.mark.parametrize("bad", [dict(vocab_size=1), dict(channels=0), dict(dilations=()),
                                 dict(dilations=(1, 0)), dict(causal=False, kernel_size=2), dict(pad_id=99)])
def test_backbone_config_rejects(bad):
    base = dict(vocab_size=V, channels=8)
    with pytest.raises(ValueError, match="invalid BackboneConfig"):
        BackboneConfig(**{**base, **bad})


def test_patch_config_rejects_width_not_multiple_of_cardinality():
    with pytest.raises(ValueError, match="cardinality"):
        PatchConfig(cardinality=3).width(16)  # width 4
    with pytest.raises(ValueError, match="insertion"):
        PatchConfig(insertion="sideways")


@pytest.mark.parametrize("causal, kernel, dilation", [(True, 3, 1), (True, 3, 4), (True, 2, 3), (False, 3, 2),
                                                     (False, 5, 1), (True, 1, 1), (True, 3, 8), (False, 3, 8),
                                                     (True, 3, 16), (False, 3, 16), (False, 5, 3)])
def test_dilated_conv_is_conv1d_over_the_padded_sequence(causal, kernel, dilation):
    """The channel-last matmul form computes exactly what nn.Conv1d does on (B, C, L), gradients of the
    input, weight and bias too (also where the receptive field reaches past the sequence: taps that read
    only padding are skipped, down to one tap at t itself for a dilation wider than the sequence)."""
    import torch.nn.functional as F

    from peterrec.backbone import DilatedConv

    torch.manual_seed(0)
    conv = DilatedConv(6, kernel, dilation, causal)
    x = torch.randn(3, 9, 6, requires_grad=True)
    reference = conv.conv(F.pad(x.transpose(1, 2), conv.padding)).transpose(1, 2)
    torch.testing.assert_close(conv(x), reference)
    wanted = [x, conv.conv.weight, conv.conv.bias]
    grads = [torch.autograd.grad(out.square().sum(), wanted) for out in (conv(x), reference)]
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs)


def test_dilated_conv_frozen_and_under_bf16_autocast():
    """A frozen conv passes only the input gradient; under bf16 autocast it multiplies in bf16 and
    hands back fp32 gradients close to the fp32 ones."""
    import torch.nn.functional as F

    from peterrec.backbone import DilatedConv

    torch.manual_seed(0)
    conv = DilatedConv(32, 3, 2, causal=True).requires_grad_(False)
    x = torch.randn(4, 10, 32, requires_grad=True)
    (dx,) = torch.autograd.grad(conv(x).square().sum(), [x])
    reference = conv.conv(F.pad(x.transpose(1, 2), conv.padding)).transpose(1, 2)
    torch.testing.assert_close(dx, torch.autograd.grad(reference.square().sum(), [x])[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.bfloat16
    (dx16,) = torch.autograd.grad(y.float().square().sum(), [x])
    assert dx16.dtype == torch.float32
    torch.testing.assert_close(y.float(), reference, atol=0.05, rtol=0.05)
    torch.testing.assert_close(dx16, dx, atol=0.2, rtol=0.05)


def test_causal_output_ignores_future_items():
    model = tiny(causal=True).eval()
    x = items()
    y = x.clone()
    t = 6
    y[:, t + 1:] = torch.randint(1, V, y[:, t + 1:].shape)
    with torch.no_grad():
        hx, hy = model(x), model(y)
    assert torch.equal(hx[:, : t + 1], hy[:, : t + 1])  # exactly, not approximately
    assert not torch.allclose(hx[:, t + 1:], hy[:, t + 1:])


def test_noncausal_output_sees_both_sides():
    model = tiny(causal=False).eval()
    x = items()
    y = x.clone()
    y[:, -1] = (y[:, -1] % (V - 1)) + 1
    with torch.no_grad():
        assert not torch.allclose(model(x)[:, -3], model(y)[:, -3])


@pytest.mark.parametrize("insertion", ["serial", "parallel"])
@pytest.mark.parametrize("cardinality", [1, 2])
def test_fresh_patches_are_near_identity(insertion, cardinality):
    backbone = tiny().eval()
    model = build_task_model(backbone, "classify", 3, "peterrec", PatchConfig(insertion=insertion,
                                                                               cardinality=cardinality)).eval()
    x = items()
    with torch.no_grad():
        plain, patched = backbone(x), backbone(x, model.patches)
    diff = (plain - patched).abs().max().item()
    assert 0 < diff < 1e-2 * plain.abs().max().item()


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("kind,outputs", [("classify", 3), ("coldrec", 25)])
@pytest.mark.parametrize("mode", MODE_NAMES)  # every mode: the shared backbone itself is never trained
def test_frozen_backbone_is_bit_identical_after_finetune(kind, outputs, mode):
    backbone = tiny()
    before = snapshot(backbone)
    model = build_task_model(backbone, kind, outputs, mode)
    x = items(32).numpy()
    y = np.random.default_rng(0).integers(0, outputs, 32)
    trained = snapshot(model.head)
    train(model, (x, y), TrainConfig(epochs=2, batch_size=8, lr=1e-2), torch.device("cpu"), loss_fn=model.loss)
    after = snapshot(backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not all(torch.equal(trained[k], v) for k, v in snapshot(model.head).items())


def test_finelast_trains_only_its_own_copy_of_last_blocks():
    backbone = tiny()
    before = snapshot(backbone)
    model = build_task_model(backbone, "classify", 2, "finelast", finelast_blocks=1)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("backbone.blocks.1.", "head.")) for n in names)
    train(model, (items(16).numpy(), np.zeros(16, dtype=np.int64)), TrainConfig(batch_size=8, lr=1e-2),
          loss_fn=model.loss)
    assert all(torch.equal(before[k], v) for k, v in snapshot(backbone).items())
    assert not torch.equal(model.backbone.blocks[1].conv1.conv.weight, backbone.blocks[1].conv1.conv.weight)


def test_parameter_accounting():
    backbone = tiny()
    c, w = 16, 4
    patch = (c * w + w) + (w * c + c)
    blocks = len(backbone.config.dilations)
    head = c * 3 + 3
    peter = param_report(build_task_model(backbone, "classify", 3, "peterrec",
                                          PatchConfig(train_layernorm2=False)))
    assert peter.trained_params == blocks * 2 * patch + head
    assert peter.fineall_params == peter.backbone_params + head
    assert math.isclose(peter.ratio_vs_fineall, 100 * peter.trained_params / peter.fineall_params)
    with_ln = param_report(build_task_model(backbone, "classify", 3, "peterrec"))
    assert with_ln.trained_params == peter.trained_params + blocks * 2 * c
    assert param_report(build_task_model(backbone, "classify", 3, "fineall")).ratio_vs_fineall == 100.0
    assert param_report(build_task_model(backbone, "classify", 3, "finecls")).trained_params == head
    zero = param_report(build_task_model(backbone, "classify", 3, "peterzero"))
    assert zero.stored_params == zero.trained_params + zero.backbone_params
    storage = storage_for(backbone, [peter.stored_params] * 10, [peter.fineall_params] * 10)
    assert storage.shared_params == peter.backbone_params + 10 * peter.stored_params
    assert storage.full_copies_params == 10 * peter.fineall_params
    assert storage.ratio == storage.shared_params / storage.full_copies_params < 1


def test_metrics_against_hand_computed_cases():
    pos = torch.tensor([0.9, 0.5, 0.1])
    others = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.4, 0.7], [0.2, 0.3, 0.1]])  # ranks 1, 3, 4 (a tie counts against)
    ranks = ranks_against(pos, others)
    assert ranks.tolist() == [1, 3, 4]
    m = ranking_metrics(ranks, k=2)
    assert m["hr@2"] == pytest.approx(1 / 3)
    assert m["mrr@2"] == pytest.approx(1 / 3)
    assert m["ndcg@2"] == pytest.approx(1 / 3)
    m = ranking_metrics(ranks, k=5)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(5)) / 3)
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    assert full_ranks(scores, torch.tensor([2, 0])).tolist() == [2, 1]
    full = rank_metrics_for(scores, torch.tensor([2, 0]), None, k=1)
    assert full["hr@1"] == 0.5


def test_sampled_negatives_exclude_label_and_are_distinct():
    labels = np.array([0, 5, 199, 77])
    neg = sample_negatives(labels, vocab=200, count=99, seed=3)
    assert neg.shape == (4, 99)
    assert not (neg == labels[:, None]).any()
    assert all(len(set(row)) == 99 for row in neg)
    assert neg.min() >= 0 and neg.max() < 200
    assert np.array_equal(neg, sample_negatives(labels, vocab=200, count=99, seed=3))
    small = sample_negatives(np.array([2]), vocab=10, count=99)
    assert sorted(small[0]) == [0, 1, 3, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("objective", ["next", "sampled", "cloze"])
def test_pretraining_objectives_lower_the_loss(objective):
    causal = objective != "cloze"
    backbone = tiny(causal=causal)
    obj = ClozeObjective(backbone) if not causal else NextItemObjective(backbone, 8 if objective == "sampled" else 0)
    # Sequences with a learnable rule: each item is followed by item + 1.
    start = np.random.default_rng(0).integers(1, V - L - 2, 256)
    seq = start[:, None] + np.arange(L + 1)[None, :]
    torch.manual_seed(0)
    x = torch.as_tensor(seq)
    with torch.no_grad():
        before = obj(x).item()
    train(obj, (seq,), TrainConfig(epochs=8, batch_size=32, lr=5e-3))
    with torch.no_grad():
        torch.manual_seed(0)
        after = obj(x).item()
    assert after < 0.7 * before


def test_training_is_deterministic_under_a_seed():
    def run():
        backbone = tiny()
        model = build_task_model(backbone, "coldrec", 20, "peterrec", seed=5)
        x, y = items(24).numpy(), np.arange(24) % 20
        train(model, (x, y), TrainConfig(epochs=2, batch_size=8, seed=3), loss_fn=model.loss)
        return model.task_state_dict()
    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_progress_callback_can_stop_training():
    backbone = tiny()
    model = build_task_model(backbone, "classify", 2, "finecls")
    seen = []
    result = train(model, (items(64).numpy(), np.zeros(64, dtype=np.int64)),
                   TrainConfig(epochs=5, batch_size=8, log_every=1), loss_fn=model.loss,
                   on_progress=lambda p: seen.append(p) or p.step >= 3)
    assert result.stopped and result.steps == 3
    assert seen[0].total_steps == 40 and seen[-1].done


def test_checkpoint_round_trip_and_errors(tmp_path):
    backbone = tiny(causal=False)
    path = save_checkpoint(tmp_path / "ckpt", backbone, info={"note": "x"})
    loaded, config = load_backbone(path)
    assert config["note"] == "x" and loaded.config == backbone.config
    assert fingerprint(loaded) == fingerprint(backbone) == config["fingerprint"]
    assert all(torch.equal(a, b) for a, b in zip(backbone.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(OutputExistsError):
        save_checkpoint(path, backbone)
    (path / "model.safetensors").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_backbone(path)
    with pytest.raises(CheckpointError, match="config.json"):
        load_backbone(tmp_path / "missing")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_fingerprint_changes_with_any_weight():
    backbone = tiny()
    before = fingerprint(backbone)
    with torch.no_grad():
        backbone.blocks[0].ln1.bias[0] += 1e-6
    assert fingerprint(backbone) != before
