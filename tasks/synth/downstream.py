"""Synthetic downstream tasks whose labels depend on the same latent traits as the sequences.

classify: a random trait direction w; score = z @ w + noise, cut at quantiles into k balanced
classes, then a share of labels flipped at random (label noise 0..MAX_FLIP).
coldrec: a target catalogue of 100..500 items (100..150 in the paper regime). Each target j has a source
genre g_j and a source "twin" item c_j of that genre; a user's 1..3 targets are a Gumbel-top-k draw of
GENRE_WEIGHT log(share of g_j among the user's latest RECENT items + 0.05) + TWIN_WEIGHT [c_j among them]
+ a weak popularity. The traits act only through the items they made the user pick, as a cross-platform
recommendation does: what predicts the targets is in the sequence, and popularity alone does not.
Every task covers a random 40..100% of the users (all of them in the paper regime).
"""

from __future__ import annotations

import numpy as np

from tasks.dataset import NewTask

MAX_FLIP = 0.2
SCORE_NOISE = 0.5
COLDREC_EVERY = 4  # one task in four is a cold-start recommendation task
TARGETS = (100, 500)
PAPER_TARGETS = (100, 150)  # a small target table: PeterRec's trained parameters stay near 10% of FineAll's
TARGETS_PER_USER = 3
RECENT = 10
GENRE_WEIGHT = 2.0
TWIN_WEIGHT = 3.0
POPULARITY = 0.3
CHUNK = 2048


def make_task(index: int, world, sequences: tuple[np.ndarray, np.ndarray], user_ids: np.ndarray, seed: int,
              paper_regime: bool = False) -> NewTask:
    """Task number `index` of the synthetic world (depends only on seed, index, the world and its
    sequences (offsets, items)). paper_regime: every user is labelled in every task."""
    rng = np.random.default_rng([seed, 2, index])
    traits = world.traits
    share = 1.0 if paper_regime else rng.uniform(0.4, 1.0)
    users = np.sort(rng.choice(len(traits), size=max(1, round(share * len(traits))), replace=False))
    if index % COLDREC_EVERY == COLDREC_EVERY - 1:
        return _coldrec(f"t{index:03d}_coldrec", world, sequences, user_ids, users, rng,
                        PAPER_TARGETS if paper_regime else TARGETS)
    binary = index % COLDREC_EVERY == 0 or (index % COLDREC_EVERY == 2 and rng.random() < 0.5)
    classes = 2 if binary else int(rng.integers(3, 9))
    name = f"t{index:03d}_" + ("binary" if binary else f"class{classes}")
    return _classify(name, classes, traits, user_ids, users, rng)


def _classify(name, classes, traits, user_ids, users, rng) -> NewTask:
    direction = rng.standard_normal(traits.shape[1])
    direction /= np.linalg.norm(direction)
    score = traits[users] @ direction + SCORE_NOISE * rng.standard_normal(len(users))
    cuts = np.quantile(score, np.arange(1, classes) / classes)
    labels = np.searchsorted(cuts, score)
    flipped = rng.random(len(users)) < rng.uniform(0, MAX_FLIP)
    labels = np.where(flipped, (labels + rng.integers(1, classes, size=len(users))) % classes, labels)
    names = ["low", "high"] if classes == 2 else [f"q{k}" for k in range(classes)]
    return NewTask(name, "classify", user_ids[users], labels, num_classes=classes, label_names=names)


def _coldrec(name, world, sequences, user_ids, users, rng, targets: tuple[int, int]) -> NewTask:
    offsets, items = sequences
    genres = world.directions.shape[1]
    size = int(rng.integers(targets[0], targets[1] + 1))
    target_genre = rng.integers(genres, size=size)  # (T,)
    members = world.members
    twin = np.array([rng.choice(members[world.item_genre[members] == g]) for g in target_genre])  # (T,)
    bias = (POPULARITY * rng.standard_normal(size)).astype(np.float32)
    counts = rng.integers(1, TARGETS_PER_USER + 1, size=len(users))
    top = min(TARGETS_PER_USER, size)
    by_twin = np.argsort(twin, kind="stable")  # targets ordered by their twin item
    sorted_twin = twin[by_twin]
    picks = []
    for start in range(0, len(users), CHUNK):
        chunk = users[start:start + CHUNK]
        ends = offsets[chunk + 1]
        begins = np.maximum(offsets[chunk], ends - RECENT)
        lengths = ends - begins
        row = np.repeat(np.arange(len(chunk)), lengths)
        recent = items[_ranges(begins, lengths)]  # each user's latest RECENT items, flat
        share = np.zeros((len(chunk), genres), dtype=np.float32)
        np.add.at(share, (row, world.item_genre[recent]), 1.0)
        share /= np.maximum(lengths, 1)[:, None]
        lo, hi = np.searchsorted(sorted_twin, recent, "left"), np.searchsorted(sorted_twin, recent, "right")
        hit = np.zeros((len(chunk), size), dtype=np.float32)  # 1 where the target's twin was picked lately
        hit[np.repeat(row, hi - lo), by_twin[_ranges(lo, hi - lo)]] = 1.0
        uniform = np.maximum(rng.random((len(chunk), size), dtype=np.float32), np.float32(1e-30))
        scores = GENRE_WEIGHT * np.log(share[:, target_genre] + 0.05) + TWIN_WEIGHT * hit + bias \
            - np.log(-np.log(uniform))  # (B, T), Gumbel: a draw, not an argmax
        best = np.argpartition(scores, size - top, axis=1)[:, size - top:]  # (B, top), unordered
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1)
        picks.append(np.take_along_axis(best, order, axis=1))
    picks = np.concatenate(picks)  # (n, top), best first
    keep = np.arange(top)[None, :] < np.minimum(counts, top)[:, None]  # (n, top)
    rows = np.repeat(np.arange(len(users)), keep.sum(axis=1))
    return NewTask(
        name, "coldrec", user_ids[users][rows], picks[keep],
        target_raw_ids=[f"{name}:target{j}" for j in range(size)],
    )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated ranges starts[i] .. starts[i] + lengths[i] - 1."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if not lengths.sum():
        return np.zeros(0, dtype=np.int64)
    return np.repeat(np.asarray(starts, dtype=np.int64) - np.cumsum(np.r_[0, lengths[:-1]]), lengths) \
        + np.arange(lengths.sum())
