"""Windows of the last W samples of each entity, from a table in time order.

Shared by the trainer (training and calibration windows), the offline scorer and the
evaluation: the live daemon builds the same windows from its per-entity ring buffers
(`detector/state/windows.py`). Plain numpy, no loop per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detector.errors import DataError

__all__ = ["Windows", "entity_keys", "gather", "table_windows", "window_ends"]


@dataclass(frozen=True)
class Windows:
    """Windows by reference: rows with each entity's samples consecutive and in time order,
    and where in them each window ends. [M, W, F] is built a part at a time (`take`), and a
    model in stages prepares each row once (`Scorer.score_windows`)."""

    rows: np.ndarray  # [R, F] float32
    ends: np.ndarray  # [M] positions in `rows`, each window's newest sample
    window: int

    def __len__(self) -> int:
        return len(self.ends)

    def take(self, idx: np.ndarray | slice) -> np.ndarray:
        """The windows idx as [B, W, F]; with window 1 plain rows [B, F] (the dense contract)."""
        w = gather(self.rows, self.ends[idx], self.window)
        return w[:, 0, :] if self.window == 1 else w

    @classmethod
    def of(cls, x: np.ndarray) -> Windows:
        """Windows [M, W, F] given whole, by reference."""
        m, w, f = x.shape
        return cls(np.ascontiguousarray(x).reshape(m * w, f), np.arange(m) * w + w - 1, w)


def entity_keys(values: np.ndarray, column: str = "entity") -> np.ndarray:
    """Entity ids as a sortable array: numbers stay numbers, anything else becomes text (a
    file may mix 7 and "7"). A missing id is an error naming the first such row, because
    such a row belongs to no entity's window."""
    v = np.asarray(values)
    if v.dtype.kind in "iub":
        return v
    if v.dtype.kind == "f":
        missing = np.isnan(v)
    elif v.dtype.kind in "UST":
        missing = np.zeros(len(v), dtype=bool)
    else:
        missing = np.equal(v, None) | np.not_equal(v, v)  # None, or NaN (the one x != x)
    if missing.any():
        r = int(np.argmax(missing))
        raise DataError(
            f"row {r + 1}: the entity column '{column}' is empty ({int(missing.sum())} such "
            "rows); every row needs an entity id to be placed in its entity's windows"
        )
    return v if v.dtype.kind == "f" else v.astype(str)


def window_ends(entities: np.ndarray | None, n: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, ends): `order` sorts rows by entity keeping time order within each entity;
    `ends` are the positions in that order where a full window of `window` samples of one
    entity ends. Rows before an entity's W-th sample have no window (warm-up)."""
    if entities is None:
        order = np.arange(n)
        starts = np.zeros(n, dtype=np.int64)
    else:
        order = np.argsort(entities, kind="stable")
        keys = np.asarray(entities)[order]
        new_group = np.ones(n, dtype=bool)
        new_group[1:] = keys[1:] != keys[:-1]
        starts = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    pos = np.arange(n)
    ends = pos[pos - starts >= window - 1]
    return order, ends


def gather(x_sorted: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """[len(ends), W, F] windows ending at `ends` of rows already in entity order."""
    if window == 1:
        return x_sorted[ends][:, None, :]
    if len(ends) == 0:  # also when there are fewer rows than `window`: no view to take
        return np.empty((0, window, x_sorted.shape[1]), dtype=x_sorted.dtype)
    views = sliding_window_view(x_sorted, window, axis=0)  # [N-W+1, F, W], no copy
    return np.ascontiguousarray(views[ends - window + 1].transpose(0, 2, 1))


def table_windows(
    x: np.ndarray, entities: np.ndarray | None, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """All windows of a table: ([M, W, F], index of each window's newest row), the rows in
    their original order."""
    order, ends = window_ends(entities, len(x), window)
    xw = gather(x[order], ends, window)
    newest = order[ends]
    back = np.argsort(newest, kind="stable")
    return xw[back], newest[back]
