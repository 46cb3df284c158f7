"""The MovieLens file layouts (100K and 1M) and their user and movie tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.errors import DataError
from tasks.text import fields_of, int_table, line_error, numbered_lines, to_int

RATING_FIELDS = ("user_id", "item_id", "rating", "timestamp")
GENDERS = ("F", "M")
AGE_BRACKETS_100K = ((25, "<25"), (35, "25-34"), (45, "35-44"), (None, "45+"))  # (upper bound, name)
AGE_CODES_1M = {1: "<18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)


@dataclass(frozen=True)
class Layout:
    """Where one MovieLens release keeps what, and how its lines are split."""

    name: str  # "100K" | "1M"
    ratings: Path
    users: Path
    movies: Path
    separator: str
    user_fields: tuple[str, ...]
    movie_encoding: str = "latin-1"


@dataclass
class Profiles:
    """The user table as class indices, one entry per user, sorted by user id."""

    user_ids: np.ndarray  # int64 (n,)
    gender: np.ndarray  # int64 (n,) index into GENDERS
    age: np.ndarray  # int64 (n,) index into age_names
    occupation: np.ndarray  # int64 (n,) index into occupation_names
    age_names: list[str]
    occupation_names: list[str]


def detect_layout(src: str | Path) -> Layout:
    """The layout of a MovieLens folder, from the files present."""
    src = Path(src)
    if (src / "u.data").is_file():
        return Layout("100K", src / "u.data", src / "u.user", src / "u.item", "\t",
                      ("user_id", "age", "gender", "occupation", "zip"))
    if (src / "ratings.dat").is_file():
        return Layout("1M", src / "ratings.dat", src / "users.dat", src / "movies.dat", "::",
                      ("user_id", "gender", "age", "occupation", "zip"))
    raise DataError(src, "no MovieLens ratings: expected u.data + u.user (100K) or ratings.dat + users.dat (1M)")


def read_ratings(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(ratings int64 (n, 4): user, item, rating, timestamp; their 1-based line numbers)."""
    return int_table(layout.ratings, layout.separator, RATING_FIELDS)


def read_movie_ids(layout: Layout) -> np.ndarray | None:
    """Sorted movie ids of the catalogue file, or None when the release folder has none."""
    if not layout.movies.is_file():
        return None
    separator = "|" if layout.name == "100K" else "::"
    ids, lines = [], []
    for line, text in numbered_lines(layout.movies, layout.movie_encoding):
        token = text.split(separator, 1)[0]
        if line == 1 and not token.strip().isdigit():
            continue  # a header line, as some copies of u.item carry
        ids.append(to_int(layout.movies, line, "item_id", token, minimum=1))
        lines.append(line)
    ids = np.asarray(ids, dtype=np.int64)
    _check_unique(layout.movies, ids, lines, "item_id", "movie")
    return np.sort(ids)


def read_profiles(layout: Layout) -> Profiles:
    """Gender, age bracket and occupation of every user in the user table."""
    path = layout.users
    separator = "|" if layout.name == "100K" else "::"
    occupations = _occupation_names(layout)
    age_names = [name for _, name in AGE_BRACKETS_100K] if layout.name == "100K" else list(AGE_CODES_1M.values())
    rows, lines = [], []
    for line, text in numbered_lines(path, "latin-1"):
        fields = dict(zip(layout.user_fields, fields_of(path, line, text, separator, layout.user_fields)))
        user = to_int(path, line, "user_id", fields["user_id"], minimum=1)
        gender = fields["gender"].strip().upper()
        if gender not in GENDERS:
            raise line_error(path, line, "gender", f"{fields['gender']!r}, expected one of {', '.join(GENDERS)}")
        age = to_int(path, line, "age", fields["age"])
        rows.append((user, GENDERS.index(gender), _age_class(layout, path, line, age),
                     _occupation_class(layout, path, line, fields["occupation"], occupations)))
        lines.append(line)
    if not rows:
        raise DataError(path, "no users")
    table = np.asarray(rows, dtype=np.int64)
    _check_unique(path, table[:, 0], lines, "user_id", "user")
    table = table[np.argsort(table[:, 0], kind="stable")]
    return Profiles(table[:, 0], table[:, 1], table[:, 2], table[:, 3], age_names, occupations)


def _age_class(layout: Layout, path: Path, line: int, age: int) -> int:
    if layout.name == "100K":
        return next(k for k, (upper, _) in enumerate(AGE_BRACKETS_100K) if upper is None or age < upper)
    if age not in AGE_CODES_1M:
        raise line_error(path, line, "age", f"{age} is not an age code, expected one of {sorted(AGE_CODES_1M)}")
    return list(AGE_CODES_1M).index(age)


def _occupation_class(layout: Layout, path: Path, line: int, token: str, names: list[str]) -> int:
    if layout.name == "1M":
        code = to_int(path, line, "occupation", token)
        if code >= len(names):
            raise line_error(path, line, "occupation", f"{code} is outside 0..{len(names) - 1}")
        return code
    if token.strip() not in names:
        raise line_error(path, line, "occupation", f"{token!r} is not in u.occupation")
    return names.index(token.strip())


def _occupation_names(layout: Layout) -> list[str]:
    if layout.name == "1M":
        return list(OCCUPATIONS_1M)
    listed = layout.users.with_name("u.occupation")
    if listed.is_file():
        return [text.strip() for _, text in numbered_lines(listed, "latin-1")]
    # No list shipped: the classes are the occupations that occur, sorted.
    names = {text.split("|")[3].strip() for _, text in numbered_lines(layout.users, "latin-1") if text.count("|") == 4}
    return sorted(names)


def _check_unique(path: Path, ids: np.ndarray, lines: list[int], field: str, what: str) -> None:
    order = np.argsort(ids, kind="stable")
    repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(repeated):
        first, again = order[repeated[0]], order[repeated[0] + 1]
        raise line_error(path, lines[again], field, f"{what} {ids[again]} is listed twice (also line {lines[first]})")
