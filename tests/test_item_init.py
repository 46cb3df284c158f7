"""`--item-init svd`: the item embedding starts from a truncated SVD of the training users' bags of items
(peterrec.item_init) and stays fixed while the blocks pretrain."""

import json

import numpy as np
import pytest
import torch

import cli
from peterrec.backbone import Backbone
from peterrec.checkpoint import load_backbone
from peterrec.config import BackboneConfig
from peterrec.item_init import bag_of_items, init_item_embedding, svd_item_vectors, user_items
from peterrec.pretrain import pretrain, split_users
from peterrec.training import TrainConfig
from tasks.sequences import Sequences


def two_tastes(users: int = 60, seed: int = 0) -> Sequences:
    """Half the users pick from items 1-10, half from items 11-20; item 21 nobody has."""
    rng = np.random.default_rng(seed)
    lists = [rng.choice(np.arange(1, 11) if u % 2 == 0 else np.arange(11, 21), size=8) for u in range(users)]
    return Sequences.from_lists([f"u{u}" for u in range(users)], lists, vocab_size=22)


def test_bag_counts_an_item_once_and_has_unit_rows():
    sequences = Sequences.from_lists(["a", "b"], [[3, 3, 5], [1]], vocab_size=6)
    bag = bag_of_items(sequences, np.array([0, 1])).to_dense().numpy()
    assert np.allclose(bag[0], [0, 0, 0, 2**-0.5, 0, 2**-0.5]) and np.allclose(bag[1], [0, 1, 0, 0, 0, 0])


def test_svd_vectors_are_the_bags_leading_factors():
    sequences = two_tastes()
    rows = np.arange(len(sequences))
    vectors, seen = svd_item_vectors(sequences, rows, channels=4)
    assert vectors.shape == (22, 4) and vectors.dtype == np.float32
    assert seen[1:21].all() and not seen[0] and not seen[21]
    assert not vectors[~seen].any()
    assert np.linalg.norm(vectors[seen], axis=1).mean() == pytest.approx(1.0, rel=1e-5)
    # Rank 2 (the two tastes; the 3rd singular value is far below the 2nd): the same item geometry as numpy's
    # exact SVD, V sqrt(S) V^T, which does not depend on the factors' signs or on a rotation within them.
    _, s, vt = np.linalg.svd(bag_of_items(sequences, rows).to_dense().numpy())
    assert s[2] < 0.5 * s[1]
    exact = vt[:2].T * np.sqrt(s[:2])
    exact /= np.linalg.norm(exact[seen], axis=1).mean()
    top2, _ = svd_item_vectors(sequences, rows, channels=2)
    assert np.allclose(top2 @ top2.T, exact @ exact.T, atol=1e-4)
    # The two tastes point apart: an item is closer to its own group's items than to the other group's.
    unit = vectors[1:21] / np.linalg.norm(vectors[1:21], axis=1, keepdims=True)
    cosine = unit @ unit.T
    assert cosine[:10, :10].mean() > cosine[:10, 10:].mean() + 0.5
    # Seeded: the same vectors again, and the caller's RNG is not touched.
    state = torch.random.get_rng_state()
    again, _ = svd_item_vectors(sequences, rows, channels=4)
    assert np.array_equal(vectors, again) and torch.equal(state, torch.random.get_rng_state())


def test_more_channels_than_users_leaves_the_extra_columns_zero():
    sequences = two_tastes(users=6)
    vectors, seen = svd_item_vectors(sequences, np.arange(6), channels=16)
    assert not vectors[:, 6:].any() and vectors[:, :6].any()


def test_svd_start_is_frozen_through_pretraining_and_recorded():
    sequences = two_tastes()
    config = BackboneConfig(vocab_size=22, channels=8, dilations=(1, 2), max_len=8)
    train_config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=0)
    outcome = pretrain(sequences, config, train_config, item_init="svd")
    train_rows, _ = split_users(len(sequences), 0.05, 0)
    vectors, seen = svd_item_vectors(sequences, train_rows, channels=8)
    embedding = outcome.backbone.embedding.weight.detach().numpy()[:22]  # the last row is [MASK]
    assert np.allclose(embedding[seen], vectors[seen])  # held fixed while the blocks trained
    assert not outcome.backbone.embedding.weight.requires_grad
    assert outcome.info(train_config)["pretraining"]["item_init"] == "svd"
    # The blocks did train; the random start trains its embedding as before.
    untrained = Backbone(config)
    assert not torch.equal(outcome.backbone.blocks[0].conv1.conv.weight, untrained.blocks[0].conv1.conv.weight)
    plain = pretrain(sequences, config, train_config)
    torch.manual_seed(0)
    assert not torch.equal(plain.backbone.embedding.weight, Backbone(config).embedding.weight)
    assert plain.info(train_config)["pretraining"]["item_init"] == "random"


def test_unknown_item_init_and_continuing_a_backbone_are_refused():
    sequences = two_tastes()
    config = BackboneConfig(vocab_size=22, channels=8, dilations=(1,), max_len=8)
    with pytest.raises(ValueError, match="item init must be one of"):
        init_item_embedding(Backbone(config), "pca", sequences, np.arange(10))
    with pytest.raises(ValueError, match="continuing one keeps its embedding"):
        pretrain(sequences, config, TrainConfig(epochs=1), backbone=Backbone(config), item_init="svd")


def test_pretrain_command_takes_item_init(tmp_path, capsys):
    from tasks.synth import synthesize

    data = synthesize(tmp_path / "data", tasks=1, users=120, items=40, seed=0).parent
    out = tmp_path / "backbone"
    assert cli.main(["pretrain", "--data", str(data), "--out", str(out), "--item-init", "svd", "--channels", "8",
                     "--dilations", "1,2", "--max-len", "20", "--epochs", "1"]) == 0
    backbone, config = load_backbone(out)
    assert config["pretraining"]["item_init"] == "svd"
    assert backbone.embedding.weight.requires_grad  # frozen only while pretraining: FineAll trains it
    with pytest.raises(SystemExit) as exit_:  # argparse's choices
        cli.main(["pretrain", "--data", str(data), "--out", str(tmp_path / "x"), "--item-init", "pca"])
    assert exit_.value.code == 2
    assert "--item-init" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_user_items_reads_each_users_latest_items_once():
    sequences = Sequences.from_lists(["a", "b", "c"], [[3, 3, 5, 2], [1], [4, 4]], vocab_size=6)
    rows, items = user_items(sequences, np.array([2, 0]))
    assert rows.tolist() == [0, 1, 1, 1] and items.tolist() == [4, 2, 3, 5]
    rows, items = user_items(sequences, np.array([0, 1]), last=2)
    assert rows.tolist() == [0, 0, 1] and items.tolist() == [2, 5, 1]
