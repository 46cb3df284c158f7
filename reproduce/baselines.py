"""The baselines of a reproduction, on the same folds, rows and candidates as the methods: majority class and
bag-of-items logistic regression (scikit-learn, C chosen on validation) for profile tasks; popularity and
an item-based co-occurrence (kNN) recommender for cold start. Each returns the task metric per test row."""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp

from peterrec.item_init import user_items
from peterrec.metrics import row_values, sample_negatives

LR_C = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # inverse weight decay, chosen on validation
KNN_GRID = {"alpha": (0.3, 0.5), "beta": (0.0, 0.5), "last": (20, None)}  # around the findings' dev choice

BASELINES = {
    "majority": "majority class of the training users",
    "popularity": "target popularity among the training rows",
    "bag_lr": "bag-of-items logistic regression (scikit-learn, C on validation)",
    "item_knn": "item co-occurrence kNN (source item -> target item; alpha, beta, last on validation)",
}


def bag_of_items(sequences, rows: np.ndarray, last: int | None = None) -> sp.csr_matrix:
    """(len(rows), vocab) binary user x source-item matrix over each history (or its latest `last` items)."""
    user, items = user_items(sequences, rows, last)
    return sp.csr_matrix((np.ones(len(user)), (user, items)), shape=(len(rows), sequences.vocab_size))


def bag_lr(sequences, data, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Logistic regression on the bag of items: C by validation accuracy (ties: the stronger weight
    decay), refit on train; (accuracy per test row, {"C": ...})."""
    from sklearn.linear_model import LogisticRegression

    parts = {p: data.part(p) for p in ("train", "valid", "test")}
    x = {p: bag_of_items(sequences, rows) for p, (rows, _) in parts.items()}
    fit = lambda c: LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x["train"], parts["train"][1])  # noqa: E731
    scores = {c: float(np.mean(fit(c).predict(x["valid"]) == parts["valid"][1])) for c in LR_C}
    best = max(LR_C, key=lambda c: (scores[c], -c))
    predicted = fit(best).predict(x["test"])
    return (predicted == parts["test"][1]).astype(np.float64), {"C": best, "valid": scores[best]}


def majority(data) -> np.ndarray:
    _, train = data.part("train")
    _, test = data.part("test")
    return (test == np.bincount(train, minlength=data.spec.num_outputs).argmax()).astype(np.float64)


def _candidates(data, part: str, seed: int, negatives: int):
    """The candidates finetune's evaluator draws for this part and fine-tuning seed (valid seed, test seed+1)."""
    import torch

    _, labels = data.part(part)
    drawn = sample_negatives(labels, data.spec.num_outputs, negatives, seed + (part == "test")) if negatives else None
    return torch.as_tensor(labels), None if drawn is None else torch.as_tensor(drawn)


def _rank_values(metric, scores: np.ndarray, labels, negatives) -> np.ndarray:
    import torch

    return row_values(metric, torch.as_tensor(np.ascontiguousarray(scores)), labels, negatives)


def popularity(data, seed: int, negatives: int) -> np.ndarray:
    """Training-row popularity of each target (random order among equal counts), per test row."""
    _, train = data.part("train")
    counts = np.bincount(train, minlength=data.spec.num_outputs).astype(np.float64)
    counts += np.random.default_rng(seed).uniform(0, 0.5, len(counts))
    labels, drawn = _candidates(data, "test", seed, negatives)
    return _rank_values(data.spec.metric, np.broadcast_to(counts, (len(labels), len(counts))), labels, drawn)


class ItemKNN:
    """sim(i, j) = c_ij / (n_i^alpha n_j^(1-alpha)) between source item i and target j over the training
    users; a user's score for j sums sim over their (latest `last`) source items, + beta log(1 + n_j)."""

    def __init__(self, alpha: float, beta: float, last: int | None):
        self.alpha, self.beta, self.last = alpha, beta, last

    def fit(self, sequences, rows: np.ndarray, labels: np.ndarray, targets: int) -> "ItemKNN":
        users, inverse = np.unique(rows, return_inverse=True)
        x = bag_of_items(sequences, users, self.last)
        y = sp.csr_matrix((np.ones(len(labels)), (inverse, labels)), shape=(len(users), targets))
        y.data[:] = 1.0
        n_i = np.asarray(x.sum(axis=0)).ravel()[:, None]
        n_j = np.asarray(y.sum(axis=0)).ravel()[None, :]
        self.sim = (x.T @ y).toarray() / (np.maximum(n_i, 1) ** self.alpha * np.maximum(n_j, 1) ** (1 - self.alpha))
        self.log_pop = np.log1p(n_j.ravel())
        return self

    def scores(self, sequences, rows: np.ndarray) -> np.ndarray:
        return np.asarray(bag_of_items(sequences, rows, self.last) @ self.sim) + self.beta * self.log_pop


def item_knn(sequences, data, seed: int, negatives: int) -> tuple[np.ndarray, dict]:
    """ItemKNN with (alpha, beta, last) chosen by the validation metric; per test row, and the choice."""
    train_rows, train_labels = data.part("train")
    best, best_value = None, -1.0
    valid_rows, _ = data.part("valid")
    labels, drawn = _candidates(data, "valid", seed, negatives)
    for alpha, beta, last in itertools.product(*KNN_GRID.values()):
        model = ItemKNN(alpha, beta, last).fit(sequences, train_rows, train_labels, data.spec.num_outputs)
        value = float(np.mean(_rank_values(data.spec.metric, model.scores(sequences, valid_rows), labels, drawn))) \
            if len(valid_rows) else 0.0
        if value > best_value:
            best, best_value = model, value
    test_rows, _ = data.part("test")
    labels, drawn = _candidates(data, "test", seed, negatives)
    values = _rank_values(data.spec.metric, best.scores(sequences, test_rows), labels, drawn)
    return values, {"alpha": best.alpha, "beta": best.beta, "last": best.last, "valid": best_value}


def baseline_values(sequences, data, seeds: int, negatives: int) -> dict[str, tuple[np.ndarray, dict]]:
    """{baseline: (test values per row, averaged over the fine-tuning seeds' candidates, its choices)} for one
    task of one fold: majority + bag_lr (classify), popularity + item_knn (coldrec)."""
    if data.spec.kind == "classify":
        return {"majority": (majority(data), {}), "bag_lr": bag_lr(sequences, data)}
    pop = np.mean([popularity(data, s, negatives) for s in range(seeds)], axis=0)
    knn = [item_knn(sequences, data, s, negatives) for s in range(seeds)]
    return {"popularity": (pop, {}), "item_knn": (np.mean([v for v, _ in knn], axis=0), knn[0][1])}
