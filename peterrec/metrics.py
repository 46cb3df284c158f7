"""Evaluation metrics: accuracy, and MRR/HR/NDCG@k from the rank of the true item.

Ranks are 1-based and pessimistic on ties (an item scored equal to the true one counts as ahead of
it), so a model that scores everything alike gets no credit.
"""

from __future__ import annotations

import numpy as np
import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def ranks_against(pos_scores: torch.Tensor, other_scores: torch.Tensor) -> torch.Tensor:
    """pos (N,), others (N, M) -> rank of the positive among 1 + M candidates (N,), 1 = best."""
    return 1 + (other_scores >= pos_scores[:, None]).sum(dim=1)


def full_ranks(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """scores (N, T) over the whole target vocabulary -> rank of each true label (N,)."""
    pos = scores.gather(1, labels[:, None])  # (N, 1)
    ahead = (scores >= pos).sum(dim=1)  # includes the positive itself
    return ahead


def ranking_metrics(ranks: torch.Tensor, k: int) -> dict[str, float]:
    ranks = ranks.double()
    hit = ranks <= k
    return {
        f"mrr@{k}": torch.where(hit, 1.0 / ranks, 0.0).mean().item(),
        f"hr@{k}": hit.double().mean().item(),
        f"ndcg@{k}": torch.where(hit, 1.0 / torch.log2(ranks + 1), 0.0).mean().item(),
    }


def sample_negatives(labels: np.ndarray, vocab: int, count: int = 99, seed: int = 0) -> np.ndarray:
    """For each label, `count` distinct other items of 0..vocab-1 (the paper's 99-negative protocol).

    With fewer than `count` other items every other item is used, which is full ranking. The same
    seed gives the same candidates, so runs and modes are compared on equal terms."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    others = vocab - 1
    count = min(count, others)
    out = np.empty((len(labels), count), dtype=np.int64)
    chunk = max(1, 2_000_000 // max(others, 1))
    for start in range(0, len(labels), chunk):
        stop = min(start + chunk, len(labels))
        if others <= 20_000:  # distinct draws: the first `count` of a random order
            keys = rng.random((stop - start, others))
            picks = np.argpartition(keys, count - 1, axis=1)[:, :count] if count < others else \
                np.argsort(keys, axis=1)
        else:  # big catalogues: collisions are negligible
            picks = rng.integers(0, others, (stop - start, count))
        # Skip over the label: values >= label shift up by one.
        out[start:stop] = picks + (picks >= labels[start:stop, None])
    return out


def rank_metrics_for(task_scores: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor | None,
                     k: int) -> dict[str, float]:
    """Sampled metrics when `negatives` (N, M) is given, else full ranking over task_scores (N, T)."""
    if negatives is None:
        return ranking_metrics(full_ranks(task_scores, labels), k)
    pos = task_scores.gather(1, labels[:, None])[:, 0]
    return ranking_metrics(ranks_against(pos, task_scores.gather(1, negatives)), k)


def row_values(metric: str, scores: torch.Tensor, labels: torch.Tensor,
               negatives: torch.Tensor | None = None) -> np.ndarray:
    """The task metric per row (its mean is the metric): 0/1 correct for accuracy; for mrr/hr/ndcg@k
    the row's reciprocal rank, hit or gain at k, against `negatives` (N, M) when given, else full ranking.
    What a confidence interval over users resamples."""
    base, k = parse_metric(metric)
    if base == "accuracy":
        return (scores.argmax(dim=-1) == labels).double().numpy()
    if negatives is None:
        ranks = full_ranks(scores, labels)
    else:
        ranks = ranks_against(scores.gather(1, labels[:, None])[:, 0], scores.gather(1, negatives))
    ranks = ranks.double()
    hit = ranks <= k
    value = {"mrr": 1.0 / ranks, "hr": torch.ones_like(ranks), "ndcg": 1.0 / torch.log2(ranks + 1)}[base]
    return torch.where(hit, value, 0.0).numpy()


def parse_metric(name: str) -> tuple[str, int | None]:
    """'accuracy' -> ('accuracy', None); 'mrr@5' -> ('mrr', 5)."""
    if name == "accuracy":
        return name, None
    base, _, k = name.partition("@")
    if base not in ("mrr", "hr", "ndcg") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"unknown metric {name!r} (expected accuracy, mrr@K, hr@K or ndcg@K)")
    return base, int(k)
