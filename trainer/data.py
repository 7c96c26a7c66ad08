"""Training data: several files in time order, one feature list, a time-ordered split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.bundle import DataFile, sha256_file
from detector.errors import DataError
from detector.tables import read_table

__all__ = ["Dataset", "load", "time_split"]


@dataclass(frozen=True)
class Dataset:
    names: list[str]
    values: np.ndarray  # [N, F] float32, finite, in time order
    files: list[DataFile]
    rows_dropped: int


def load(
    paths: Sequence[str],
    *,
    features: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    sep: str | None = None,
    transpose: bool = False,
    drop_bad_rows: bool = False,
) -> Dataset:
    if not paths:
        raise DataError("no data files given (--data PATH)")
    tables = []
    for p in paths:
        t = read_table(
            p,
            features=features,
            drop=drop,
            sep=sep,
            transpose=transpose,
            drop_bad_rows=drop_bad_rows,
        )
        if tables and t.names != tables[0].names:
            raise DataError(
                f"{p}: columns {t.names[:10]}… differ from {tables[0].source}'s {tables[0].names[:10]}…; "
                "choose the same features with --features"
            )
        tables.append(t)
    from pathlib import Path

    files = [
        DataFile(path=t.source, sha256=sha256_file(Path(t.source)), rows=len(t.values))
        for t in tables
    ]
    values = tables[0].values if len(tables) == 1 else np.concatenate([t.values for t in tables])
    return Dataset(tables[0].names, values, files, sum(t.rows_dropped for t in tables))


def time_split(n: int, validation: float, calibration: float) -> tuple[slice, slice, slice]:
    """train | validation | calibration, in time order: no shuffling across the split, so
    held-out scores are what a model sees on the future."""
    if not (0 <= validation < 1 and 0 <= calibration < 1 and validation + calibration < 1):
        raise DataError("validation and calibration fractions must be in [0, 1) and sum below 1")
    n_cal = round(n * calibration)
    n_val = round(n * validation)
    n_train = n - n_val - n_cal
    if n_train < 2:
        raise DataError(
            f"only {n} rows: too few to train (need at least 2 after the held-out parts)"
        )
    return slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)
