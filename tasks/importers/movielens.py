"""Import MovieLens (100K or 1M layout): source sequences, profile tasks and a cold-start task.

The movie catalogue is split by a seeded hash of the movie id: about `target_share` of the movies
form the target platform, with its own dense vocabulary. A user's source sequence is their
source-part movies in time order (ties by movie id); their last `coldrec_max` target-part
movies become rows of the `coldrec` task. Users left with no source movies are dropped from all
tables. Profile tasks: gender, age (brackets), occupation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.dataset import NewTask, write_dataset
from tasks.importers.movielens_files import (
    GENDERS, Layout, Profiles, detect_layout, read_movie_ids, read_profiles, read_ratings,
)
from tasks.paths import check_apart, require_dir
from tasks.sequences import Sequences
from tasks.splits import unit_hash
from tasks.text import line_error

USER, ITEM, RATING, TIME = range(4)


def import_movielens(
    src: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    force: bool = False,
    target_share: float = 0.3,
    coldrec_max: int = 3,
    command: str | None = None,
) -> tuple[Path, list[str]]:
    """Import a MovieLens folder into `out`; return (spec path, notes for the summary)."""
    if not 0 < target_share < 1 or coldrec_max < 1:
        raise ValueError("target_share must lie in (0, 1) and coldrec_max be >= 1")
    require_dir(src, "SRC: a MovieLens release folder")
    check_apart(out, "--out", {"SRC": src})
    layout = detect_layout(src)
    ratings, lines = read_ratings(layout)
    profiles = read_profiles(layout)
    movies = read_movie_ids(layout)
    _check_known(layout, ratings, lines, profiles, movies)
    catalogue = movies if movies is not None else np.unique(ratings[:, ITEM])
    target_movies = catalogue[unit_hash(catalogue.astype(str).astype(object), seed) < target_share]

    ratings = ratings[np.lexsort((ratings[:, ITEM], ratings[:, TIME], ratings[:, USER]))]
    in_target = np.isin(ratings[:, ITEM], target_movies)
    source = ratings[~in_target]
    users, counts = np.unique(source[:, USER], return_counts=True)  # users with a source sequence, sorted
    item_raw, dense = np.unique(source[:, ITEM], return_inverse=True)
    user_ids = users.astype(str).astype(object)
    sequences = Sequences(user_ids, np.concatenate([[0], np.cumsum(counts)]), dense + 1, len(item_raw) + 1)

    targets = ratings[in_target & np.isin(ratings[:, USER], users)]
    tasks = _profile_tasks(profiles, users) + [_coldrec_task(targets, coldrec_max)]
    rated = np.unique(ratings[:, USER])
    notes = [
        f"MovieLens {layout.name}: {len(ratings):,} ratings, {len(catalogue):,} movies, "
        f"{len(target_movies):,} held out as the coldrec target platform (target share {target_share})",
        f"dropped {len(rated) - len(users)} users with no source-part movies, "
        f"{len(profiles.user_ids) - len(rated)} users without ratings",
    ]
    made_by = (f"Made by: python cli.py import movielens {src} --out {out} --seed {seed} "
               f"--target-share {target_share} --coldrec-max {coldrec_max}")
    spec = write_dataset(out, sequences, [str(r) for r in item_raw], tasks, seed=seed, notes=[made_by],
                         force=force, command=command)
    return spec, notes


def _check_known(layout: Layout, ratings: np.ndarray, lines: np.ndarray, profiles: Profiles, movies) -> None:
    unknown_user = ~np.isin(ratings[:, USER], profiles.user_ids)
    if unknown_user.any():
        i = int(np.argmax(unknown_user))
        raise line_error(layout.ratings, int(lines[i]), "user_id",
                         f"user {ratings[i, USER]} is not in {layout.users.name}")
    if movies is not None:
        unknown_movie = ~np.isin(ratings[:, ITEM], movies)
        if unknown_movie.any():
            i = int(np.argmax(unknown_movie))
            raise line_error(layout.ratings, int(lines[i]), "item_id",
                             f"movie {ratings[i, ITEM]} is not in {layout.movies.name}")


def _profile_tasks(profiles: Profiles, users: np.ndarray) -> list[NewTask]:
    rows = np.searchsorted(profiles.user_ids, users)  # every rated user has a profile (_check_known)
    user_ids = users.astype(str).astype(object)
    columns = (
        ("gender", profiles.gender, list(GENDERS)),
        ("age", profiles.age, profiles.age_names),
        ("occupation", profiles.occupation, profiles.occupation_names),
    )
    return [
        NewTask(name, "classify", user_ids, values[rows], num_classes=len(names), label_names=names)
        for name, values, names in columns
    ]


def _coldrec_task(targets: np.ndarray, cap: int) -> NewTask:
    """Each user's last `cap` target-part movies (targets sorted by user, then time)."""
    users = targets[:, USER]
    position = np.arange(len(users))
    group_end = np.searchsorted(users, users, side="right")
    kept = targets[position >= group_end - cap]
    raw, labels = np.unique(kept[:, ITEM], return_inverse=True)
    return NewTask("coldrec", "coldrec", kept[:, USER].astype(str).astype(object), labels,
                   target_raw_ids=[str(r) for r in raw])
