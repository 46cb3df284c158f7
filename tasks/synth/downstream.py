"""Synthetic downstream tasks whose labels depend on the same latent traits as the sequences.

classify: a random trait direction w; score = z @ w + noise, cut at quantiles into k balanced
classes, then a share of labels flipped at random (label noise 0..MAX_FLIP).
coldrec: a target catalogue of 100..500 items, each with a trait vector t_j and a popularity
bias; each user gets 1..3 distinct targets drawn with probability ~ exp(scale * z @ t_j + bias)
(Gumbel-top-k, in chunks of users).
Every task covers a random 40..100% of the users.
"""

from __future__ import annotations

import numpy as np

from tasks.dataset import NewTask

MAX_FLIP = 0.2
SCORE_NOISE = 0.5
COLDREC_EVERY = 4  # one task in four is a cold-start recommendation task
TARGETS = (100, 500)
TARGETS_PER_USER = 3
AFFINITY = 2.0
CHUNK = 2048


def make_task(index: int, traits: np.ndarray, user_ids: np.ndarray, seed: int) -> NewTask:
    """Task number `index` of the synthetic world (depends only on seed, index and the traits)."""
    rng = np.random.default_rng([seed, 2, index])
    users = np.sort(rng.choice(len(traits), size=max(1, round(rng.uniform(0.4, 1.0) * len(traits))), replace=False))
    if index % COLDREC_EVERY == COLDREC_EVERY - 1:
        return _coldrec(f"t{index:03d}_coldrec", traits, user_ids, users, rng)
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


def _coldrec(name, traits, user_ids, users, rng) -> NewTask:
    size = int(rng.integers(TARGETS[0], TARGETS[1] + 1))
    vectors = rng.standard_normal((size, traits.shape[1])) / np.sqrt(traits.shape[1])  # (T, D)
    bias = 0.5 * rng.standard_normal(size)  # (T,) some targets are simply popular
    counts = rng.integers(1, TARGETS_PER_USER + 1, size=len(users))
    top = min(TARGETS_PER_USER, size)
    # float32 throughout: the (B, T) score blocks dominate the run time of the whole synth.
    affinity = (AFFINITY * vectors.T).astype(np.float32)  # (D, T)
    bias = bias.astype(np.float32)
    picks = []
    for start in range(0, len(users), CHUNK):
        chunk = users[start : start + CHUNK]
        uniform = np.maximum(rng.random((len(chunk), size), dtype=np.float32), np.float32(1e-30))
        gumbel = -np.log(-np.log(uniform))  # (B, T)
        scores = traits[chunk].astype(np.float32) @ affinity + bias + gumbel  # (B, T)
        best = np.argpartition(scores, size - top, axis=1)[:, size - top :]  # (B, top), unordered
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1)
        picks.append(np.take_along_axis(best, order, axis=1))
    picks = np.concatenate(picks)  # (n, top), best first
    keep = np.arange(top)[None, :] < np.minimum(counts, top)[:, None]  # (n, top)
    rows = np.repeat(np.arange(len(users)), keep.sum(axis=1))
    return NewTask(
        name, "coldrec", user_ids[users][rows], picks[keep],
        target_raw_ids=[f"{name}:target{j}" for j in range(size)],
    )
