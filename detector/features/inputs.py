"""One data path from a table to a model's inputs: for fitting a model and for scoring one.

A model reads payload features from each row, numeric ones as they are and categorical ones
as text coded by a vocabulary or hashing, and may derive behaviour features per entity from
the rows in time order; a windowed model sees each entity's last W rows. `InputSpec` says
which of these a model needs; `model_inputs` turns a table (`read_inputs`, or
`detector.features.tables.read_table` with the columns `InputSpec.columns` names) into the
float32 matrix in the model's feature order:

- `InputSpec.of(manifest)`: exactly the inputs a bundle expects (the offline scorer,
  `vigil-train evaluate`, the retrain gate);
- `InputSpec(payload, categorical={name: None, ...}, behaviour=...)`: a model about to be
  fitted; its vocabularies are chosen from the rows (`Vocabularies`), the rest is the same
  code (`vigil-train fit`, `vigil-train retrain`).

The daemon reads messages instead of tables (`detector.features.decode`), with the same
encoders and the same behaviour implementation, so the numbers agree with these bit for bit.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from detector.contract.behaviour import BehaviourSpec
from detector.contract.bundle import Manifest
from detector.contract.categorical import Categorical, Encoder, as_text
from detector.errors import DataError
from detector.features.behaviour import with_derived
from detector.features.decode import epoch_ms
from detector.features.tables import Table, read_table
from detector.features.windows import Windows, entity_keys, window_ends

__all__ = [
    "Bounds",
    "InputSpec",
    "ModelInputs",
    "Vocabularies",
    "categorical_text",
    "fit_vocabulary",
    "model_inputs",
    "read_inputs",
]

log = logging.getLogger(__name__)

Bounds = dict[str, tuple[float | None, float | None]]


@dataclass(frozen=True)
class Vocabularies:
    """How a categorical's codes are chosen from training rows: a vocabulary of the values
    seen at least `min_count` times, most frequent first; feature hashing into
    `hash_buckets` buckets past `vocabulary_max` distinct values."""

    min_count: int = 5
    vocabulary_max: int = 1000
    hash_buckets: int = 1024


def fit_vocabulary(name: str, text: Sequence[str], rule: Vocabularies) -> Categorical:
    """The coding of one categorical feature, from its values (as text) on training rows."""
    counts = Counter(text)
    counts.pop("", None)  # the empty string always has the reserved code
    if len(counts) > rule.vocabulary_max:
        log.info(
            "categorical '%s': %d distinct values > %d: hashed into %d buckets",
            name,
            len(counts),
            rule.vocabulary_max,
            rule.hash_buckets,
        )
        return Categorical(buckets=rule.hash_buckets)
    kept = tuple(v for v, c in counts.most_common() if c >= rule.min_count)
    if not kept:
        raise DataError(
            f"categorical '{name}': no value occurs {rule.min_count} times in the training "
            "rows; lower --min-count, or leave the column out"
        )
    log.info(
        "categorical '%s': %d values (%d rarer than %d share the reserved code)",
        name,
        len(kept),
        len(counts) - len(kept),
        rule.min_count,
    )
    return Categorical(values=kept)


def categorical_text(values: Sequence[object] | np.ndarray) -> list[str]:
    """A column's raw values as the text their codes are of, as a message's would be: None
    and NaN are the empty string (code 0); an integer column with gaps, which a table
    reader hands over as floats with NaN, gives its integers' text ("7", not "7.0")."""
    v = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if v.dtype.kind != "f":
        return as_text(values)
    missing = np.isnan(v)
    present = v[~missing]
    if missing.any() and np.array_equal(present, np.round(present)):
        return ["" if m else str(int(x)) for x, m in zip(v.tolist(), missing.tolist(), strict=True)]
    return ["" if m else str(x) for x, m in zip(v.tolist(), missing.tolist(), strict=True)]


@dataclass(frozen=True)
class InputSpec:
    """What a model reads from a table and derives from it.

    payload: the features read from each row, in the model's order (numeric and categorical).
    categorical: which payload features are categorical, and their coding; None: codes to be
        chosen from the rows (a model about to be fitted).
    behaviour: per-entity features derived over the rows in time order (needs `time_column`).
    bounds: declared valid ranges of payload features, carried to the inputs.
    features: the model's feature order, payload and derived; None: payload, then derived.
    entity_column: the column naming each row's entity, for windows (None: one entity).
    time_column: each row's event time: behaviour features, and windows in time order.
    """

    payload: tuple[str, ...]
    categorical: Mapping[str, Categorical | None] = field(default_factory=dict)
    behaviour: BehaviourSpec | None = None
    bounds: Bounds | None = None
    features: tuple[str, ...] | None = None
    entity_column: str | None = None
    time_column: str | None = None

    @classmethod
    def of(
        cls,
        manifest: Manifest,
        *,
        entity_column: str | None = None,
        time_column: str | None = None,
        refit_vocabularies: bool = False,
    ) -> InputSpec:
        """The inputs a bundle expects; `refit_vocabularies`: the same, with its categorical
        codes to be chosen again from the rows (a retrained model)."""
        cats = manifest.categorical or {}
        return cls(
            payload=tuple(manifest.payload_features),
            categorical={n: None if refit_vocabularies else c for n, c in cats.items()},
            behaviour=manifest.behaviour,
            bounds=manifest.bounds,
            features=tuple(manifest.features),
            entity_column=entity_column,
            time_column=time_column,
        )

    @property
    def numeric(self) -> list[str]:
        """The payload features read as numbers."""
        return [f for f in self.payload if f not in self.categorical]

    def names(self) -> list[str]:
        """The model's features in order."""
        if self.features is not None:
            return list(self.features)
        return [*self.payload, *(self.behaviour.names() if self.behaviour else [])]

    def aside(self) -> list[str]:
        """The columns read raw beside the numeric features: categorical text, entity fields
        of behaviour features, the time column, the entity column."""
        cols = list(self.categorical)
        if self.behaviour is not None:
            cols += self.behaviour.entity_fields()
        cols += [c for c in (self.time_column, self.entity_column) if c]
        return list(dict.fromkeys(cols))

    def check(self) -> None:
        if unknown := [c for c in self.categorical if c not in self.payload]:
            raise DataError(f"categorical features {unknown} are not payload features")
        if self.behaviour is not None and not self.time_column:
            raise DataError(
                "this model derives behaviour features per entity: name the time column "
                "(--time-column)"
            )
        if self.features is not None:
            derived = self.behaviour.names() if self.behaviour else []
            if sorted(self.features) != sorted([*self.payload, *derived]):
                raise DataError(
                    f"the features {list(self.features)[:8]}… are not the payload features "
                    "and the derived ones"
                )


@dataclass(frozen=True)
class ModelInputs:
    """A table as a model's inputs, one row per table row, in the table's row order."""

    names: list[str]  # the model's features, in order
    values: np.ndarray  # [N, F] float32, finite
    categorical: dict[str, Categorical] | None  # the codes used (chosen here when fitting)
    behaviour: BehaviourSpec | None
    bounds: Bounds | None
    entities: np.ndarray | None = None  # [N] entity key of each row (windows); None: one
    times_ms: np.ndarray | None = None  # [N] float64 event times, with a time column
    extra: dict[str, np.ndarray] | None = None  # the columns read aside, raw, by name
    source: str = ""
    rows_dropped: int = 0

    def __len__(self) -> int:
        return len(self.values)

    def take(self, rows: np.ndarray | slice) -> ModelInputs:
        """These rows only (indices, a mask or a slice), in that order."""
        return replace(
            self,
            values=self.values[rows],
            entities=None if self.entities is None else self.entities[rows],
            times_ms=None if self.times_ms is None else self.times_ms[rows],
            extra=None if self.extra is None else {k: v[rows] for k, v in self.extra.items()},
        )

    def time_order(self) -> np.ndarray:
        """Row indices in time order (stable: rows of one time keep their order); the row
        order itself without a time column."""
        if self.times_ms is None:
            return np.arange(len(self))
        return np.argsort(self.times_ms, kind="stable")

    def warmed_up(self, warmup_ms: float) -> np.ndarray:
        """[N] bool: the rows at least `warmup_ms` after the first row's time, whose
        behaviour features had that much history behind them (all rows without times)."""
        if self.times_ms is None or not len(self) or warmup_ms <= 0:
            return np.ones(len(self), dtype=bool)
        return self.times_ms >= self.times_ms.min() + warmup_ms

    def windows(self, window: int, rows: np.ndarray | None = None) -> tuple[Windows, np.ndarray]:
        """Each entity's windows of `window` rows in time order, whose newest row is among
        `rows` (a bool mask or indices; default every row), and the index of each window's
        newest row. Rows before their entity's W-th have none (warm-up); earlier rows that
        are not among `rows` still fill the windows of later ones, as a running detector's
        history would."""
        n = len(self)
        by_time = self.time_order()
        entities = None if self.entities is None else self.entities[by_time]
        order, ends = window_ends(entities, n, window)
        order = by_time[order]
        newest = order[ends]
        if rows is not None:
            mask = np.zeros(n, dtype=bool)
            mask[rows] = True
            keep = mask[newest]
            ends, newest = ends[keep], newest[keep]
        return Windows(self.values[order], ends, window), newest

    def outside_bounds(self) -> dict[str, int]:
        """How many rows have each bounded feature outside its bounds."""
        out = {}
        for name, (low, high) in (self.bounds or {}).items():
            col = self.values[:, self.names.index(name)]
            n = int((col < low).sum()) if low is not None else 0
            n += int((col > high).sum()) if high is not None else 0
            if n:
                out[name] = n
        return out

    def table(self) -> Table:
        """The inputs as a `Table` of the model's features (what `vigil-detect score`
        reports on)."""
        return Table(self.names, self.values, self.source, self.rows_dropped, self.extra)


def read_inputs(
    path: str | os.PathLike[str],
    spec: InputSpec,
    *,
    keep: Sequence[str] = (),
    sep: str | None = None,
    transpose: bool = False,
    drop_bad_rows: bool = False,
) -> Table:
    """The columns of a file that `spec` needs: its numeric payload features as numbers,
    the rest raw (`keep` too, e.g. labels)."""
    spec.check()
    if not spec.numeric:
        raise DataError("a model needs at least one numeric payload feature to read a file")
    aside = list(dict.fromkeys([*spec.aside(), *keep]))
    try:
        return read_table(
            path,
            features=spec.numeric,
            keep=aside,
            sep=sep,
            transpose=transpose,
            drop_bad_rows=drop_bad_rows,
        )
    except DataError as e:
        if "unknown column" not in str(e):
            raise
        raise DataError(
            f"{e}\nThe model reads the columns {[*spec.payload, *spec.aside()]}"
        ) from None


def model_inputs(
    table: Table,
    spec: InputSpec,
    *,
    vocabularies: Vocabularies | None = None,
    fit_rows: np.ndarray | slice | None = None,
) -> ModelInputs:
    """The model's inputs for every row of `table`, in its row order.

    `table` holds the numeric payload features (among `table.names`) and, in `table.extra`,
    the columns `spec.aside()` names, raw. Categorical features are coded by their
    vocabulary, or by one chosen with `vocabularies` from the rows `fit_rows` (default
    all) where `spec` leaves it open. Behaviour features are derived over all rows in time
    order, each row seeing the rows before it. The matrix's columns follow `spec.names()`."""
    spec.check()
    extra = table.extra or {}
    if missing := [c for c in spec.aside() if c not in extra]:
        raise DataError(f"{table.source}: the column(s) {missing} were not read")
    if missing := [c for c in spec.numeric if c not in table.names]:
        raise DataError(f"{table.source}: the feature column(s) {missing} were not read")
    n = len(table.values)
    numeric = spec.numeric
    if list(table.names) == numeric:
        num = table.values
    else:
        num = table.values[:, [table.names.index(c) for c in numeric]]
    columns: dict[str, np.ndarray] = {c: num[:, j] for j, c in enumerate(numeric)}
    codes: dict[str, Categorical] = {}
    for name, coding in spec.categorical.items():
        text = categorical_text(extra[name])
        if coding is None:
            if vocabularies is None:
                raise DataError(f"categorical '{name}' has no vocabulary and none is to be fitted")
            chosen = text if fit_rows is None else np.asarray(text, dtype=object)[fit_rows]
            coding = fit_vocabulary(name, list(chosen), vocabularies)
        codes[name] = coding
        columns[name] = Encoder(name, coding).encode(text)
    payload = spec.payload
    x = np.empty((n, len(payload)), dtype=np.float32)
    for j, c in enumerate(payload):
        x[:, j] = columns[c]
    names = list(payload)
    times = None
    if spec.time_column:
        try:
            times = epoch_ms(extra[spec.time_column])
        except ValueError as e:
            raise DataError(f"{table.source}: time column '{spec.time_column}': {e}") from None
        if not np.isfinite(times).all():
            r = int(np.argmax(~np.isfinite(times)))
            raise DataError(
                f"{table.source}: row {r + 1}: the time column '{spec.time_column}' is empty"
            )
    if spec.behaviour is not None:
        assert spec.time_column
        try:
            names, x = with_derived(spec.behaviour, names, x, extra, spec.time_column)
        except ValueError as e:
            raise DataError(f"{table.source}: {e}") from None
    wanted = spec.names()
    if names != wanted:
        x = x[:, [names.index(f) for f in wanted]]
    entities = None
    if spec.entity_column:
        entities = entity_keys(extra[spec.entity_column], spec.entity_column)
    return ModelInputs(
        names=wanted,
        values=np.ascontiguousarray(x, dtype=np.float32),
        categorical=codes or None,
        behaviour=spec.behaviour,
        bounds=spec.bounds,
        entities=entities,
        times_ms=times,
        extra=dict(extra) or None,
        source=table.source,
        rows_dropped=table.rows_dropped,
    )
