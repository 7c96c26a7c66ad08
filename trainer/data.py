"""Training data: several files in time order, one feature list, a time-ordered split, and
windows of each entity's last W samples assembled lazily per mini-batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import detector.features.windows
from detector.contract.behaviour import BehaviourSpec
from detector.contract.bundle import DataFile, sha256_file
from detector.contract.categorical import Categorical
from detector.errors import DataError
from detector.features.inputs import Bounds, ModelInputs
from detector.features.tables import Table, read_table
from detector.features.windows import entity_keys, window_ends

__all__ = [
    "Dataset",
    "Windows",
    "group_codes",
    "load",
    "read",
    "time_split",
    "without_labelled",
]


@dataclass(frozen=True)
class Dataset:
    names: list[str]
    values: np.ndarray  # [N, F] float32, finite, in time order
    files: list[DataFile]
    rows_dropped: int
    entities: np.ndarray | None = None  # [N] entity id of each row; None: one entity
    extra: dict[str, np.ndarray] | None = None  # columns read aside (`keep`), never features
    # The categorical features among `names` (their values are codes), and how they are coded.
    categorical: dict[str, Categorical] | None = None
    # The behaviour features among `names` are derived by this spec; the bundle records it.
    behaviour: BehaviourSpec | None = None
    bounds: Bounds | None = None  # declared valid ranges of payload features

    @classmethod
    def of(cls, inputs: ModelInputs, files: list[DataFile]) -> Dataset:
        """A model's inputs (`detector.features.inputs.model_inputs`) as training data."""
        return cls(
            inputs.names,
            inputs.values,
            files,
            inputs.rows_dropped,
            inputs.entities,
            inputs.extra,
            inputs.categorical,
            inputs.behaviour,
            inputs.bounds,
        )


def read(
    paths: Sequence[str],
    *,
    features: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    sep: str | None = None,
    transpose: bool = False,
    drop_bad_rows: bool = False,
    entity_column: str | None = None,
    aside: Sequence[str] = (),
) -> tuple[Table, list[DataFile]]:
    """The data files as one table of numeric features, in the order given (time order),
    and what was read. `aside` names columns read raw into `Table.extra`, never features:
    categorical text, the entity and time columns of behaviour features, labels; the
    entity column is read aside too."""
    if not paths:
        raise DataError("no data files given (--data PATH)")
    aside = list(aside)
    if clash := set(aside) & set(features or ()):
        raise DataError(f"columns {sorted(clash)} are read aside; they cannot also be features")
    if aside and not features:  # never features, whether or not --drop names them
        drop = [*(drop or []), *(c for c in aside if c not in (drop or []))]
    keep: list[str] = []
    if entity_column:
        if features and entity_column in features:
            raise DataError(
                f"the entity column '{entity_column}' names entities; it cannot also be a feature"
            )
        keep = [entity_column]
        if not features:  # never a feature, whether or not --drop names it
            drop = [*(drop or []), *([] if entity_column in (drop or []) else [entity_column])]
    keep += [c for c in aside if c not in keep]
    tables = []
    for p in paths:
        t = read_table(
            p,
            features=features,
            drop=drop,
            keep=keep,
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
    files = [
        DataFile(path=t.source, sha256=sha256_file(Path(t.source)), rows=len(t.values))
        for t in tables
    ]
    if len(tables) == 1:
        return tables[0], files
    extra = {c: np.concatenate([t.extra[c] for t in tables if t.extra is not None]) for c in keep}
    table = Table(
        names=tables[0].names,
        values=np.concatenate([t.values for t in tables]),
        source=", ".join(t.source for t in tables),
        rows_dropped=sum(t.rows_dropped for t in tables),
        extra=extra or None,
    )
    return table, files


def load(
    paths: Sequence[str],
    *,
    features: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    sep: str | None = None,
    transpose: bool = False,
    drop_bad_rows: bool = False,
    entity_column: str | None = None,
    aside: Sequence[str] = (),
) -> Dataset:
    """Read numeric data files into one Dataset (`read`); `aside` columns go to
    `Dataset.extra`, raw. Files with categorical or behaviour features:
    `trainer.prepare.fit_dataset`."""
    table, files = read(
        paths,
        features=features,
        drop=drop,
        sep=sep,
        transpose=transpose,
        drop_bad_rows=drop_bad_rows,
        entity_column=entity_column,
        aside=aside,
    )
    raw = table.extra or {}
    entities = entity_keys(raw[entity_column], entity_column) if entity_column else None
    extra = {c: raw[c] for c in aside}
    return Dataset(table.names, table.values, files, table.rows_dropped, entities, extra or None)


def without_labelled(ds: Dataset, column: str) -> tuple[Dataset, int]:
    """`ds` less the rows whose label (a column read aside: 1 for known fraud or faults) is
    not 0, and how many were left out. Derived features must be computed before, over every
    row, as the detector sees the stream."""
    raw = (ds.extra or {}).get(column)
    if raw is None:
        raise DataError(f"the label column '{column}' was not read")
    try:
        labelled = np.asarray(raw, dtype=np.float64) != 0
    except (TypeError, ValueError):
        raise DataError(f"label column '{column}' must hold numbers (0: normal)") from None
    keep = ~labelled
    if not keep.any():
        raise DataError(f"every row is labelled in '{column}': nothing normal to train on")
    entities = ds.entities[keep] if ds.entities is not None else None
    extra = {k: v[keep] for k, v in (ds.extra or {}).items()}
    kept = replace(ds, values=ds.values[keep], entities=entities, extra=extra or None)
    return kept, int(labelled.sum())


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


def group_codes(entities: np.ndarray | None, n: int) -> np.ndarray:
    """Integer code of each row's entity (all 0 without entities), for combining with
    segment numbers: windows never straddle an entity or a segment boundary."""
    if entities is None:
        return np.zeros(n, dtype=np.int64)
    return np.unique(entities, return_inverse=True)[1].astype(np.int64).reshape(-1)


@dataclass(frozen=True)
class Windows(detector.features.windows.Windows):
    """The windows of `window` samples over some rows, per group, in time order.

    Holds the rows once (sorted by group, time order kept) and where each full window ends;
    `take` assembles a mini-batch with `detector.features.windows.gather`, so [M, W, F] is never
    materialised. A window-1 batch is plain rows [B, F] (the dense contract).
    """

    newest: np.ndarray  # [M] each window's newest row, in the caller's row numbering

    @classmethod
    def build(
        cls,
        x: np.ndarray,
        window: int,
        groups: np.ndarray | None = None,
        rows: slice | np.ndarray = slice(None),
    ) -> Windows:
        """Windows over x[rows]; `groups` (one key per row of x) keeps windows apart."""
        index = np.arange(len(x))[rows]
        order, ends = window_ends(None if groups is None else groups[index], len(index), window)
        return cls(rows=x[index[order]], ends=ends, window=window, newest=index[order[ends]])

    @property
    def n_features(self) -> int:
        return self.rows.shape[1]

    def batches(self, size: int) -> Iterator[np.ndarray]:
        per = max(1, size // self.window)  # bounded memory for long windows
        for i in range(0, len(self), per):
            yield self.take(slice(i, i + per))

    def map_rows(self, fn: Callable[[np.ndarray], np.ndarray]) -> Windows:
        """The same windows over transformed rows (e.g. scaled)."""
        return replace(self, rows=fn(self.rows))
