"""The synthetic source domain: users with latent traits, and item sequences those traits drive.

Each user has D latent traits z ~ N(0, I). Items fall into G genres, each with a trait direction;
a user's genre preference is softmax(temperature * z @ directions). A sequence is a sticky Markov
chain over genres (stay with probability STAY, else redraw from the preference); within a genre
an item is drawn by Zipf-like popularity, and some items have a fixed follow-up item taken with
probability FOLLOW, so that order matters for next-item prediction. The tasks in downstream.py
read the same traits, which is why pretraining on these sequences helps them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAITS = 8
MAX_GENRES = 24
TEMPERATURE = 2.0
STAY = 0.5
FOLLOW = 0.3
FOLLOW_SHARE = 0.15  # share of items that have a follow-up item
ZIPF = 1.0
MIN_LENGTH = 20
CHUNK = 4096  # users generated at a time (fixed, so results do not depend on it)


@dataclass
class World:
    """Everything the generator draws once: traits, genres, popularity, follow-ups."""

    traits: np.ndarray  # (U, D) float64
    directions: np.ndarray  # (D, G) genre trait directions
    members: np.ndarray  # (I,) item ids grouped by genre, most popular first within a genre
    member_cdf: np.ndarray  # (I,) genre index + cumulative popularity within the genre, in (g, g+1]
    successor: np.ndarray  # (I+1,) follow-up item of each item id, 0 = none
    item_genre: np.ndarray  # (I+1,) genre of each item id (entry 0 unused)


def make_world(users: int, items: int, seed: int) -> World:
    """Draw traits for `users` users and the genre structure of `items` items (ids 1..items)."""
    rng = np.random.default_rng([seed, 0])
    genres = max(1, min(MAX_GENRES, round(np.sqrt(items)), items))
    traits = rng.standard_normal((users, TRAITS))
    directions = rng.standard_normal((TRAITS, genres))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    groups = np.array_split(rng.permutation(np.arange(1, items + 1)), genres)
    item_genre = np.zeros(items + 1, dtype=np.int64)
    cdfs = []
    for genre, group in enumerate(groups):
        item_genre[group] = genre
        weights = 1.0 / np.arange(1, len(group) + 1) ** ZIPF
        cdf = np.cumsum(weights) / weights.sum()
        cdf[-1] = 1.0  # exact, so genre g's block ends exactly at g + 1
        cdfs.append(genre + cdf)
    successor = np.zeros(items + 1, dtype=np.int64)
    leaders = rng.choice(np.arange(1, items + 1), size=int(items * FOLLOW_SHARE), replace=False)
    successor[leaders] = rng.integers(1, items + 1, size=len(leaders))
    return World(traits, directions, np.concatenate(groups), np.concatenate(cdfs), successor, item_genre)


def make_sequences(world: World, max_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 (U+1,), items int32 (flat)): one time-ordered sequence per user."""
    users = len(world.traits)
    lengths, chunks = [], []
    for chunk, start in enumerate(range(0, users, CHUNK)):
        rng = np.random.default_rng([seed, 1, chunk])
        traits = world.traits[start : start + CHUNK]
        length = rng.integers(min(MIN_LENGTH, max_len), max_len + 1, size=len(traits))
        grid = _walk(world, traits, max_len, rng)  # (B, max_len)
        chunks.append(grid[np.arange(max_len)[None, :] < length[:, None]])
        lengths.append(length)
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate(chunks).astype(np.int32) if chunks else np.zeros(0, np.int32)
    return offsets, items


def genre_preference(world: World, traits: np.ndarray) -> np.ndarray:
    """Softmax genre preference of each user, (B, G)."""
    logits = TEMPERATURE * traits @ world.directions  # (B, G)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def _walk(world: World, traits: np.ndarray, max_len: int, rng: np.random.Generator) -> np.ndarray:
    cumulative = np.cumsum(genre_preference(world, traits), axis=1)  # (B, G)
    genres = cumulative.shape[1]
    batch = len(traits)

    def draw_genre() -> np.ndarray:
        return np.minimum((cumulative < rng.random(batch)[:, None]).sum(axis=1), genres - 1)  # (B,)

    grid = np.zeros((batch, max_len), dtype=np.int64)
    genre = draw_genre()
    for t in range(max_len):
        if t:
            genre = np.where(rng.random(batch) < STAY, genre, draw_genre())
        slot = np.searchsorted(world.member_cdf, genre + rng.random(batch), side="right")
        item = world.members[np.minimum(slot, len(world.members) - 1)]
        if t:
            follow_up = world.successor[grid[:, t - 1]]
            item = np.where((follow_up > 0) & (rng.random(batch) < FOLLOW), follow_up, item)
            genre = np.where(item == follow_up, world.item_genre[item], genre)
        grid[:, t] = item
    return grid
