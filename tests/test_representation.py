"""User representations (peterrec.pooling): padding never changes a user's vector, first_last reads the
first real item, mean and attention pool real positions only, attention trains with the head and travels
in bundles, and 'auto' resolves per task kind."""

import numpy as np
import pytest
import torch

from peterrec import Backbone, BackboneConfig, TrainConfig, build_task_model, train
from peterrec.backbone import limit_items, trim_padding
from peterrec.config import resolve_representation
from peterrec.pooling import AttentionPool, pool

V, L = 30, 10


def backbone(causal=True, mask_padding=True) -> Backbone:
    torch.manual_seed(0)
    return Backbone(BackboneConfig(vocab_size=V, channels=8, dilations=(1, 2), causal=causal, max_len=L,
                                   mask_padding=mask_padding))


def padded(seq, width):
    return torch.tensor([[0] * (width - len(seq)) + list(seq)])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("how", ["last", "first_last", "mean", "attention"])
def test_representation_does_not_depend_on_padding(causal, how):
    b = backbone(causal)
    model = build_task_model(b, "classify", 3, "peterrec", representation=how)
    with torch.no_grad():
        for p in model.parameters():  # patches and pooling away from their near-identity start
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        short, long = model(padded([3, 7, 9], 5)), model(padded([3, 7, 9], L))
        hidden_short = b(padded([3, 7, 9], 5), model.patches)[:, -3:]  # untrimmed: masking alone
        hidden_long = b(padded([3, 7, 9], L), model.patches)[:, -3:]
    torch.testing.assert_close(short, long)
    torch.testing.assert_close(hidden_short, hidden_long)


def test_without_masking_padding_leaks_into_the_vector():
    """Checkpoints from before mask_padding: the padding's hidden states feed the real positions."""
    b = backbone(mask_padding=False)
    with torch.no_grad():
        short, long = b(padded([3, 7, 9], 5))[:, -1], b(padded([3, 7, 9], L))[:, -1]
    assert not torch.allclose(short, long)


def test_first_last_reads_the_first_real_item_and_mean_skips_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # row 0: 0..3, row 1: 4..7
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    assert pool(hidden, mask, "first_last").flatten().tolist() == [2 + 3, 4 + 7]
    assert pool(hidden, mask, "mean").flatten().tolist() == [2.5, 5.5]
    assert pool(hidden, mask, "last").flatten().tolist() == [3, 7]


def test_attention_starts_as_the_mean_and_weighs_only_real_positions():
    attention = AttentionPool(4)
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    torch.testing.assert_close(attention(hidden, mask), pool(hidden, mask, "mean"))
    with torch.no_grad():
        attention.query.normal_()
    changed = hidden.clone()
    changed[0, :2] = 100.0  # padding positions: never read
    torch.testing.assert_close(attention(hidden, mask), attention(changed, mask))


def test_auto_resolves_per_task_kind_and_attention_trains_with_the_head():
    assert resolve_representation("auto", "classify", True) == "mean"
    assert resolve_representation("auto", "coldrec", False) == "attention"
    b = backbone()
    model = build_task_model(b, "coldrec", 12, "peterrec")
    assert model.representation == "attention" and model.pooling is not None
    assert {"pooling.query", "pooling.norm.weight", "pooling.norm.bias"} <= set(model.task_state_dict())
    rng = np.random.default_rng(0)
    x = rng.integers(1, V, (32, L))
    y = rng.integers(0, 12, 32)
    before = model.pooling.query.detach().clone()
    train(model, (x, y), TrainConfig(epochs=2, batch_size=8, lr=1e-2), torch.device("cpu"), loss_fn=model.loss)
    assert not torch.equal(before, model.pooling.query)


def test_input_len_keeps_only_the_latest_items():
    items = torch.tensor([[0, 0, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6]])
    assert limit_items(items, 3).tolist() == [[0, 0, 0, 5, 6, 7], [0, 0, 0, 4, 5, 6]]
    assert trim_padding(limit_items(items, 3)).tolist() == [[5, 6, 7], [4, 5, 6]]
    b = backbone()
    model = build_task_model(b, "classify", 2, "finecls", input_len=3)
    with torch.no_grad():
        torch.testing.assert_close(model(padded([1, 2, 5, 6, 7], L)), model(padded([5, 6, 7], L)))


def test_old_checkpoint_configs_keep_their_meaning_and_fingerprint_fields():
    old = {"vocab_size": V, "channels": 8, "kernel_size": 3, "dilations": [1, 2], "causal": True, "pad_id": 0,
           "max_len": L}
    config = BackboneConfig.from_dict(old)
    assert config.mask_padding is False and config.to_dict() == old
    assert BackboneConfig(vocab_size=V).to_dict()["mask_padding"] is True


def test_embedding_patch_starts_as_the_pretrained_model_trains_and_packs():
    from peterrec.config import PatchConfig
    from peterrec.fused import PackTask, train_pack

    b = backbone()
    plain = build_task_model(b, "classify", 3, "peterrec", seed=1)
    patched = build_task_model(b, "classify", 3, "peterrec", PatchConfig(embedding_rank=2), seed=1)
    assert {"patches.embedding.a.weight", "patches.embedding.b"} <= set(patched.task_state_dict())
    x = torch.randint(0, V, (6, L))
    with torch.no_grad():  # A starts at zero: the same vector as without the embedding patch
        patched.patches.blocks.load_state_dict(plain.patches.blocks.state_dict())
        patched.head.load_state_dict(plain.head.state_dict())
        torch.testing.assert_close(patched(x), plain(x))
    rng = np.random.default_rng(0)
    items, labels = rng.integers(1, V, (24, L)), rng.integers(0, 3, 24)
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-2)

    def fresh(seed):
        return build_task_model(b, "classify", 3, "peterrec", PatchConfig(embedding_rank=2), seed=seed)

    alone = [fresh(s) for s in (1, 2)]
    for m in alone:
        train(m, (items, labels), config, torch.device("cpu"), loss_fn=m.loss)
    assert alone[0].patches.embedding.a.weight.abs().sum() > 0  # trained
    assert alone[0].patches.embedding.a.weight[0].abs().sum() == 0  # padding row untouched
    packed = [fresh(s) for s in (1, 2)]
    outcomes = train_pack([PackTask(f"t{i}", m, (items, labels), config) for i, m in enumerate(packed)],
                          strategy="group")
    assert all(o.ok for o in outcomes.values())
    for a, p in zip(alone, packed):  # a pack gives each task the weights it gets alone
        for name, tensor in a.task_state_dict().items():
            torch.testing.assert_close(p.task_state_dict()[name], tensor, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stack", [False, True])
def test_mixed_inference_gives_each_task_its_own_embedding_patch_pooling_and_input_len(stack):
    from peterrec.config import PatchConfig
    from peterrec.fused.infer import predict_mixed, stacked_for

    b = backbone()
    models = {"emb": build_task_model(b, "classify", 3, "peterrec", PatchConfig(embedding_rank=2), seed=1),
              "cold": build_task_model(b, "coldrec", 9, "peterrec", seed=2, input_len=4),
              "head": build_task_model(b, "classify", 2, "finecls", seed=3)}
    with torch.no_grad():
        for m in models.values():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn_like(p))
    items = torch.randint(0, V, (9, L))
    items[0, :6] = 0
    tasks = ["emb", "cold", "head"] * 3
    out = predict_mixed(b, models, items, tasks, batch_size=6, stacked=stacked_for(b, models) if stack else None)
    with torch.no_grad():
        for row, (name, scores) in enumerate(zip(tasks, out)):
            torch.testing.assert_close(scores, models[name].scores(items[row:row + 1])[0], rtol=1e-4, atol=1e-5)
