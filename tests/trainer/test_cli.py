"""The commands as a user runs them: real processes, real files."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FEATURES_SYNTH


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def test_fit_check_score_evaluate_on_synthetic(synth_data: dict[str, Path], tmp_path: Path) -> None:
    b = tmp_path / "bundle"
    fit = run(
        "trainer",
        "fit",
        "--data",
        str(synth_data["normal"]),
        "--out",
        str(b),
        "--drop",
        "timestamp_ms,entity,fault,label",
        "--epochs",
        "40",
        "--no-progress",
    )
    summary = json.loads(fit.stdout)
    assert summary["features"] == 8 and summary["threshold"]["method"] == "pot"  # the default
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["features"] == FEATURES_SYNTH
    assert manifest["training"]["files"][0]["sha256"]

    check = json.loads(run("detector", "check", "--model", str(b)).stdout)
    assert check["ok"] and check["provider"] == "CPUExecutionProvider"

    out = tmp_path / "scores.csv"
    res = json.loads(
        run(
            "detector",
            "score",
            "--model",
            str(b),
            "--data",
            str(synth_data["faulty"]),
            "--out",
            str(out),
            "--emit-latent",
        ).stdout
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == res["rows"] == 480 * 4
    assert {"score", "threshold", "anomaly", "top_features", "latent_0"} <= set(rows[0])
    assert sum(int(r["anomaly"]) for r in rows) == res["anomalies"] > 0

    ev = json.loads(
        run(
            "trainer",
            "evaluate",
            "--model",
            str(b),
            "--data",
            str(synth_data["faulty"]),
            "--label-column",
            "label",
            "--plot",
            str(tmp_path / "t.png"),
        ).stdout
    )
    assert ev["recall"] > 0.5 and ev["false_alarm_rate"] < 0.05 and ev["roc_auc"] > 0.8
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_fit_on_a_tep_slice_with_transpose(tep_dir: Path, tmp_path: Path) -> None:
    b = tmp_path / "tep"
    run(
        "trainer",
        "fit",
        "--data",
        str(tep_dir / "d00.dat"),
        "--transpose",
        "--out",
        str(b),
        "--epochs",
        "30",
        "--no-progress",
    )
    m = json.loads((b / "manifest.json").read_text())
    t = m["training"]
    assert len(m["features"]) == 52 and t["rows_train"] + t["rows_validation"] == 500
    # 500 normal rows: the defaults cross-fit (5 folds), whiten, and calibrate with POT
    assert t["config"]["folds"] == 5 and t["rows_calibration"] == 500
    assert t["config"]["scaling"] == "whiten" and m["threshold"]["method"] == "pot"
    out = tmp_path / "s.csv"
    res = json.loads(
        run(
            "detector",
            "score",
            "--model",
            str(b),
            "--data",
            str(tep_dir / "d01_te.dat"),
            "--out",
            str(out),
        ).stdout
    )
    assert res["rows"] == 960
    flags = [int(r["anomaly"]) for r in csv.DictReader(out.open())]
    assert sum(flags[160:]) / 800 > 0.9  # fault 1 is easy for any model


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("a,b\n1,2\n1,x\n", [], "row 2 (line 3), column 'b'"),
        ("a,b\n", [], "no rows"),
        ("a,b\n1,2\n", ["--features", "a,zz"], "unknown column(s) ['zz']"),
    ],
)
def test_bad_data_is_a_clear_error_not_a_traceback(
    tmp_path: Path, content: str, extra: list[str], message: str
) -> None:
    p = tmp_path / "d.csv"
    p.write_text(content)
    out = run("trainer", "fit", "--data", str(p), "--out", str(tmp_path / "b"), *extra, ok=False)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_synth_command_writes_labelled_telemetry(tmp_path: Path) -> None:
    p = tmp_path / "s.parquet"
    run(
        "trainer",
        "synth",
        "--out",
        str(p),
        "--steps",
        "100",
        "--entities",
        "2",
        "--fault-rate",
        "0.2",
    )
    import pyarrow.parquet as pq

    t = pq.read_table(p)
    assert t.num_rows == 200 and {"entity", "label", "fault", *FEATURES_SYNTH} <= set(
        t.column_names
    )


def test_payments_fit_with_behaviour_then_score_and_evaluate_with_fraud_metrics(
    tmp_path: Path,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer.transactions import card_key, simulate, terminal_key

    t = simulate(n_customers=150, n_terminals=300, days=30, seed=2)
    cols = {
        "ts": t.tx_time_ms,
        "card_id": [card_key(c) for c in t.customer_id],
        "terminal_id": [terminal_key(x) for x in t.terminal_id],
        "amount": t.tx_amount,
        "fraud": t.tx_fraud,
    }
    table = pa.table(cols)
    early = table.filter(pa.array(t.tx_time_days < 20))
    pq.write_table(early, tmp_path / "early.parquet")
    pq.write_table(table, tmp_path / "all.parquet")
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"entities": [{"entity": "card_id", "mean_of": "amount", "log_counts": True}]})
    )
    b = tmp_path / "payments"
    fit = run(
        "trainer", "fit", "--data", str(tmp_path / "early.parquet"), "--features", "amount",
        "--behaviour", str(spec), "--time-column", "ts", "--bounds", "amount=0:",
        "--label-column", "fraud", "--out", str(b), "--epochs", "3", "--no-progress",
    )  # fmt: skip
    # Known frauds are left out of training, after the behaviour features saw every row.
    n_fraud = int(t.tx_fraud[t.tx_time_days < 20].sum())
    assert n_fraud > 0 and f"left out {n_fraud} labelled rows" in fit.stderr
    assert json.loads(fit.stdout)["rows"] == int((t.tx_time_days < 20).sum()) - n_fraud
    m = json.loads((b / "manifest.json").read_text())
    assert m["features"][:2] == ["amount", "card_id.log_count_1d"]
    assert m["bounds"] == {"amount": [0.0, None]}

    missing = run(
        "detector", "score", "--model", str(b), "--data", str(tmp_path / "all.parquet"),
        "--out", str(tmp_path / "s.csv"), ok=False,
    )  # fmt: skip
    assert missing.returncode != 0 and "--time-column" in missing.stderr

    ev = json.loads(
        run(
            "trainer", "evaluate", "--model", str(b), "--data", str(tmp_path / "all.parquet"),
            "--label-column", "fraud", "--time-column", "ts", "--card-column", "card_id",
            "--plot", str(tmp_path / "t.png"),
        ).stdout
    )  # fmt: skip
    fraud = ev["fraud"]
    assert fraud["n"] == len(t.tx_fraud) and fraud["n_fraud"] == int(t.tx_fraud.sum())
    assert fraud["average_precision"] > t.tx_fraud.mean()  # better than a random ranking
    assert 0 <= fraud["card_precision_at_k"] <= 1 and fraud["k"] == 100
