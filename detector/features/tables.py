"""Tabular files to float matrices, with errors that name file, row and column.

Formats by extension (or `sep`): CSV, TSV, Parquet, JSON Lines, and headerless
whitespace-separated matrices such as the Tennessee Eastman `.dat` files (optionally
transposed). Shared by the trainer and the offline scorer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detector.contract.categorical import Encoder, as_text
from detector.errors import DataError

__all__ = [
    "Table",
    "column_names_for",
    "detect_format",
    "read_table",
    "select_columns",
    "text_columns",
]

_NUMERIC = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)


@dataclass(frozen=True)
class Table:
    names: list[str]
    values: np.ndarray  # [N, F] float32, all finite
    source: str
    rows_dropped: int = 0
    extra: dict[str, np.ndarray] | None = None  # columns kept aside (e.g. labels)


def column_names_for(n: int) -> list[str]:
    """Names given to headerless matrix columns: c1..cN."""
    return [f"c{i}" for i in range(1, n + 1)]


def detect_format(path: Path, sep: str | None) -> str:
    if sep is not None:
        return "whitespace" if sep in (" ", "whitespace", "ws") else "csv"
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".dat", ".txt"):
        return "whitespace"
    if suffix in (".csv", ".tsv", ".tab"):
        return "csv"
    raise DataError(f"{path}: unknown file type '{suffix}'; use --sep for delimited text")


def _read_arrow(path: Path, fmt: str, sep: str | None) -> pa.Table:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt == "jsonl":
            return pajson.read_json(path)
        return pacsv.read_csv(
            path,
            parse_options=_csv_options(path, sep),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot be read as {fmt}: {e}") from e


def _csv_options(path: Path, sep: str | None) -> Any:
    import pyarrow.csv as pacsv

    delimiter = sep or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    return pacsv.ParseOptions(delimiter="\t" if delimiter in ("\\t", "tab") else delimiter)


def text_columns(path: str | os.PathLike[str], sep: str | None = None) -> list[str]:
    """The columns of a file that hold text, from its schema (CSV: as inferred from its first
    block): candidates for categorical features. Headerless matrices have none."""
    p = Path(path)
    fmt = detect_format(p, sep)
    if fmt == "whitespace":
        return []
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            sample = pq.ParquetFile(p).read_row_group(0)
        elif fmt == "csv":
            import pyarrow.csv as pacsv

            with pacsv.open_csv(p, parse_options=_csv_options(p, sep)) as reader:
                sample = pa.Table.from_batches([reader.read_next_batch()])
        else:
            sample = _read_arrow(p, fmt, sep)
    except StopIteration:  # a header and no rows: reading the file says so
        return []
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{p}: cannot be read as {fmt}: {e}") from e
    return [
        f.name
        for f in sample.schema
        if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
        and not _mostly_numbers(sample.column(f.name))
    ]


_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def _mostly_numbers(col: pa.ChunkedArray) -> bool:
    """Whether most values of a text column are numbers: a numeric column with a few bad
    values, whose error should name them, rather than a categorical one."""
    looks = pc.match_substring_regex(col.drop_null(), _NUMBER)
    return len(looks) > 0 and pc.mean(looks.cast(pa.int8())).as_py() >= 0.5


def _read_whitespace(path: Path, transpose: bool) -> tuple[list[str], np.ndarray]:
    text = path.read_bytes()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: the file is empty")
    width = len(lines[0].split())
    try:
        flat = np.array(text.split(), dtype=np.float64)
    except ValueError:
        flat = None
    if flat is None or flat.size != width * len(lines):
        for r, ln in enumerate(lines, start=1):
            tokens = ln.split()
            if len(tokens) != width:
                raise DataError(f"{path}: row {r} has {len(tokens)} values, row 1 has {width}")
            for c, tok in enumerate(tokens, start=1):
                try:
                    float(tok)
                except ValueError:
                    raise DataError(
                        f"{path}: row {r}, column {c}: {tok.decode(errors='replace')!r} is not a number"
                    ) from None
    assert flat is not None
    m = flat.reshape(len(lines), width)
    if transpose:
        m = m.T
    return column_names_for(m.shape[1]), m


def _to_float(path: Path, col: pa.ChunkedArray, name: str, header_rows: int) -> np.ndarray:
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    if any(is_type(col.type) for is_type in _NUMERIC):
        return col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if pa.types.is_boolean(col.type):
        raise DataError(f"{path}: column '{name}' holds true/false values, not numbers")
    try:
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = col.to_pylist()
    out = np.empty(len(values))
    for r, v in enumerate(values):
        try:
            out[r] = np.nan if v is None else float(v)
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: row {r + 1} (line {r + 1 + header_rows}), column '{name}': "
                f"{str(v)[:40]!r} is not a number"
            ) from None
    return out


def select_columns(
    available: Sequence[str],
    features: Sequence[str] | None,
    drop: Sequence[str] | None,
    source: str,
) -> list[str]:
    """The feature names in order: an explicit list, or every column but the dropped ones."""
    if features:
        unknown = [f for f in features if f not in available]
        if unknown:
            raise DataError(
                f"{source}: unknown column(s) {unknown}; the file has {list(available)[:60]}"
            )
        if len(set(features)) != len(features):
            raise DataError(f"{source}: feature list names a column twice")
        return list(features)
    drop = list(drop or [])
    unknown = [d for d in drop if d not in available]
    if unknown:
        raise DataError(f"{source}: cannot drop unknown column(s) {unknown}")
    kept = [c for c in available if c not in drop]
    if not kept:
        raise DataError(f"{source}: no columns left after dropping {drop}")
    return kept


def read_table(
    path: str | os.PathLike[str],
    *,
    features: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    keep: Sequence[str] = (),
    sep: str | None = None,
    transpose: bool = False,
    drop_bad_rows: bool = False,
    categorical: Sequence[Encoder] = (),
) -> Table:
    """Read one file into a finite float32 matrix of the chosen feature columns.

    `keep` names extra columns (labels, entity ids) returned raw in `Table.extra`. The
    features that `categorical` encoders name are read as text and coded by them.
    Rows with missing, NaN or infinite values are an error naming the first one, or are
    dropped and counted with `drop_bad_rows`.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty")
    fmt = detect_format(p, sep)
    extra: dict[str, np.ndarray] = {}
    encoders = {e.name: e for e in categorical}
    if fmt == "whitespace":
        if encoders:
            raise DataError(f"{p}: a headerless number matrix has no categorical columns")
        names, m = _read_whitespace(p, transpose)
        chosen = select_columns(names, features, drop, str(p))
        idx = [names.index(c) for c in chosen]
        for k in keep:
            if k not in names:
                raise DataError(f"{p}: unknown column '{k}'")
            extra[k] = m[:, names.index(k)].copy()
        values = m[:, idx]
        header_rows = 0
    else:
        t = _read_arrow(p, fmt, sep)
        if t.num_rows == 0:
            raise DataError(f"{p}: the file has a header but no rows")
        if transpose:
            raise DataError(f"{p}: --transpose applies to headerless whitespace matrices only")
        chosen = select_columns(t.column_names, features, drop, str(p))
        for k in keep:
            if k not in t.column_names:
                raise DataError(f"{p}: unknown column '{k}'; the file has {t.column_names[:60]}")
            extra[k] = t.column(k).to_numpy(zero_copy_only=False)
        header_rows = 1 if fmt == "csv" else 0
        values = np.empty((t.num_rows, len(chosen)), dtype=np.float64)
        for j, name in enumerate(chosen):
            if name in encoders:
                values[:, j] = encoders[name].encode(as_text(t.column(name).to_pylist()))
            else:
                values[:, j] = _to_float(p, t.column(name), name, header_rows)
        del t
    finite = np.isfinite(values)
    dropped = 0
    if not finite.all():
        bad_rows = ~finite.all(axis=1)
        if drop_bad_rows:
            dropped = int(bad_rows.sum())
            values = values[~bad_rows]
            extra = {k: v[~bad_rows] for k, v in extra.items()}
            if len(values) == 0:
                raise DataError(f"{p}: every row has a missing, NaN or infinite value")
        else:
            r = int(np.argmax(bad_rows))
            c = int(np.argmax(~finite[r]))
            raise DataError(
                f"{p}: row {r + 1} (line {r + 1 + header_rows}), column '{chosen[c]}': "
                f"value {values[r, c]} is missing, NaN or infinite "
                f"({int(bad_rows.sum())} such rows; --drop-bad-rows drops them)"
            )
    return Table(
        names=chosen,
        values=values.astype(np.float32),
        source=str(p),
        rows_dropped=dropped,
        extra=extra or None,
    )
