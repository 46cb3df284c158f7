"""How a backbone's item embedding starts before pretraining: random, or the low-rank structure of the
user x item matrix (a truncated SVD of the users' bags of items).

Why: on MovieLens 100K, next-item (or cloze) pretraining over ~900 histories leaves the item embedding no
better than random vectors at telling users apart (a linear probe on the mean of a user's item vectors: age
0.38-0.41 pretrained, 0.40 random), while an unsupervised SVD of the same bags gives 0.45-0.47
(docs/RESULTS.md). Methods that keep the embedding frozen (PeterRec, FineCLS, FineLast) can only re-weight
what it carries, so the SVD start is held fixed while the blocks pretrain on top of it.
"""

from __future__ import annotations

import numpy as np
import torch

from peterrec.config import ITEM_INITS

SVD_OVERSAMPLING = 10  # extra random directions for torch.svd_lowrank's range finder
SVD_ITERATIONS = 6  # its power iterations: the leading factors converge to a few decimals


def user_items(sequences, rows: np.ndarray, last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) int64 arrays: every item the users of `rows` have (of their latest `last` items), each pair
    once, sorted by row (0..len(rows)-1) then item; padding (item 0) never. The bag of items of a user x item
    matrix, for this module's SVD and for reproduce's baselines."""
    rows = np.asarray(rows, dtype=np.int64)
    offsets = np.asarray(sequences.offsets, dtype=np.int64)
    ends = offsets[rows + 1]
    starts = offsets[rows] if not last else np.maximum(offsets[rows], ends - last)
    lengths = ends - starts
    row = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    flat = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
    pairs = np.unique(row * np.int64(sequences.vocab_size) + np.asarray(sequences.items, dtype=np.int64)[flat])
    row, items = pairs // sequences.vocab_size, pairs % sequences.vocab_size
    keep = items != 0
    return row[keep], items[keep]


def bag_of_items(sequences, rows: np.ndarray) -> torch.Tensor:
    """(len(rows), vocab_size) sparse user x item matrix: 1 where the user has the item (repeats count
    once), each row scaled to unit length so that long histories do not dominate the factors."""
    user, items = user_items(sequences, rows)
    per_user = np.bincount(user, minlength=len(rows)).astype(np.float64)
    values = 1.0 / np.sqrt(per_user[user])
    return torch.sparse_coo_tensor(torch.as_tensor(np.stack([user, items])), torch.as_tensor(values),
                                   (len(rows), sequences.vocab_size), check_invariants=True).coalesce()


def svd_item_vectors(sequences, rows: np.ndarray, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (vocab_size, channels) float32, seen (vocab_size,) bool): item i's vector is row i of
    V * sqrt(S) of a rank-`channels` SVD of bag_of_items(rows), scaled so that the items' vectors have a
    mean length of 1, as the random start's N(0, 1/C) rows do. Items no user in `rows` has (and padding)
    are not seen: their rows are zero, for the caller to keep what it had."""
    bag = bag_of_items(sequences, rows)
    vocab = sequences.vocab_size
    vectors = np.zeros((vocab, channels), dtype=np.float64)
    seen = np.zeros(vocab, dtype=bool)
    seen[bag.indices()[1].numpy()] = True
    rank = min(channels, len(rows), int(seen.sum()))
    if rank == 0:
        return vectors.astype(np.float32), seen
    q = min(rank + SVD_OVERSAMPLING, len(rows), vocab)
    with torch.random.fork_rng(devices=[]):  # its random range finder, seeded, without touching the caller's RNG
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(bag, q=q, niter=SVD_ITERATIONS)
    factors = (v[:, :rank] * s[:rank].clamp_min(0).sqrt()).numpy()  # (vocab, rank)
    vectors[:, :rank] = factors
    vectors[~seen] = 0.0
    norms = np.linalg.norm(vectors[seen], axis=1)
    vectors /= max(float(norms.mean()), 1e-12)
    return vectors.astype(np.float32), seen


@torch.no_grad()
def init_item_embedding(backbone, how: str, sequences, rows: np.ndarray, seed: int = 0) -> None:
    """Start `backbone`'s item embedding as ITEM_INITS[how] says. 'svd' overwrites the rows of the items
    that `rows`' users have and freezes the whole embedding (requires_grad False: the optimizer leaves it
    alone); 'random' leaves the backbone as it is."""
    if how not in ITEM_INITS:
        raise ValueError(f"item init must be one of {', '.join(ITEM_INITS)} (got {how!r})")
    if how == "random":
        return
    weight = backbone.embedding.weight  # (vocab_size + 1, C): the last row is [MASK]
    vectors, seen = svd_item_vectors(sequences, rows, weight.shape[1], seed)
    seen_ids = torch.as_tensor(np.flatnonzero(seen), device=weight.device)
    weight[seen_ids] = torch.as_tensor(vectors[seen], device=weight.device, dtype=weight.dtype)
    weight.requires_grad_(False)
