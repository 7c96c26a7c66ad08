from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detector.errors import DataError
from detector.features.tables import read_table


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_with_selection_and_drop(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "time,x,y,label\n2026-01-01,1,2,0\n2026-01-02,3,4.5,1\n")
    t = read_table(p, drop=["time", "label"])
    assert t.names == ["x", "y"]
    np.testing.assert_array_equal(t.values, [[1, 2], [3, 4.5]])
    t2 = read_table(p, features=["y", "x"], keep=["label"])
    assert t2.names == ["y", "x"] and t2.extra is not None
    np.testing.assert_array_equal(t2.extra["label"], [0, 1])


def test_tsv_and_custom_separator(tmp_path: Path) -> None:
    assert read_table(write(tmp_path, "a.tsv", "x\ty\n1\t2\n")).values.tolist() == [[1, 2]]
    assert read_table(write(tmp_path, "a.txt", "x;y\n1;2\n"), sep=";").values.tolist() == [[1, 2]]


def test_parquet_and_jsonl(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1.0, 2.0], "s": ["a", "b"]}), tmp_path / "a.parquet")
    assert read_table(tmp_path / "a.parquet", drop=["s"]).values.tolist() == [[1], [2]]
    p = write(tmp_path, "a.jsonl", '{"x": 1, "y": 2}\n{"x": 3, "y": 4}\n')
    assert read_table(p).values.tolist() == [[1, 2], [3, 4]]


def test_whitespace_matrix_and_transpose(tmp_path: Path) -> None:
    p = write(tmp_path, "m.dat", "  1.0  2.0 3.0\n 4.0 5.0   6.0\n")
    assert read_table(p).names == ["c1", "c2", "c3"]
    t = read_table(p, transpose=True)
    assert t.values.shape == (3, 2) and t.values[2].tolist() == [3, 6]


@pytest.mark.parametrize(
    ("name", "text", "kwargs", "message"),
    [
        ("a.csv", "x,y\n1,2\n3,abc\n", {}, r"row 2 \(line 3\), column 'y': 'abc' is not a number"),
        ("a.csv", "x,y\n1,2\n3,\n", {}, r"row 2 \(line 3\), column 'y'.*missing, NaN or infinite"),
        ("a.csv", "x,y\n1,inf\n", {}, r"row 1 \(line 2\), column 'y'"),
        ("a.csv", "x,y\n1,nan\n", {}, r"row 1.*column 'y'"),
        ("a.csv", "x,y\n", {}, "no rows"),
        ("a.csv", "", {}, "empty"),
        ("a.csv", "x,y\n1,2\n", {"features": ["x", "z"]}, r"unknown column\(s\) \['z'\]"),
        ("a.csv", "x,y\n1,2\n", {"drop": ["q"]}, "cannot drop unknown"),
        ("a.csv", "x,y\ntrue,2\n", {}, "true/false"),
        ("m.dat", "1 2\n3 x\n", {}, r"row 2, column 2: 'x' is not a number"),
        ("m.dat", "1 2\n3\n", {}, "row 2 has 1 values"),
        ("a.xyz", "1", {}, "unknown file type"),
    ],
)
def test_bad_files_say_file_row_and_column(
    tmp_path: Path, name: str, text: str, kwargs: dict, message: str
) -> None:
    p = write(tmp_path, name, text)
    with pytest.raises(DataError, match=message) as e:
        read_table(p, **kwargs)
    assert str(p) in str(e.value)


def test_drop_bad_rows_reports_the_count(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "x,y\n1,2\n3,\n5,nan\n7,8\n")
    t = read_table(p, drop_bad_rows=True)
    assert t.rows_dropped == 2 and t.values.tolist() == [[1, 2], [7, 8]]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "nope.csv")
