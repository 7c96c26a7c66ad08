import json
import subprocess
import sys
from pathlib import Path

import pytest

from detector.errors import ConfigError
from detector.ops.settings import load_settings, masked


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("VIGIL_"):
            monkeypatch.delenv(k)


def test_sources_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        f'[model]\npath = "{tmp_path}"\n[kafka]\nbootstrap_servers = "file:1"\ngroup_id = "from-file"\n'
        "[batch]\nmax_size = 10\n"
    )
    monkeypatch.setenv("VIGIL_KAFKA__BOOTSTRAP_SERVERS", "env:2")
    monkeypatch.setenv("VIGIL_TOPICS__INPUT", "a, b")
    s = load_settings(cfg, batch={"max_size": 99})
    assert s.kafka.bootstrap_servers == "env:2"  # env beats file
    assert s.kafka.group_id == "from-file"  # file beats default
    assert s.batch.max_size == 99  # overrides beat everything
    assert s.topics.input == ["a", "b"]


def test_yaml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text(f"model:\n  path: {tmp_path}\npayload:\n  features_at: array\n")
    assert load_settings(cfg).payload.features_at == "array"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(
            None,
            model={"path": str(tmp_path / "missing")},
            batch={"max_size": 0},
            payload={"features_at": "field", "key_from": "field"},
            kafka={"security_protocol": "SASL_SSL"},
            topics={"input": ["vigil.dlq"]},
        )
    text = str(e.value)
    for needle in (
        "batch.max_size",
        "features_field",
        "key_field",
        "sasl_mechanism",
        "username",
        "password",
        "output topic is also an input",
        "does not exist",
    ):
        assert needle in text, needle


def test_unknown_keys_in_a_file_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(f'[model]\npath = "{tmp_path}"\n[kafak]\nx = 1\n')
    with pytest.raises(ConfigError, match="kafak"):
        load_settings(cfg)


def test_secrets_are_masked(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    s = load_settings(
        None,
        model={"path": str(tmp_path)},
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "username": "u",
            "password": "hunter2",
        },
    )
    assert "hunter2" not in json.dumps(masked(s))
    assert s.kafka.secret() == "hunter2"
    s2 = load_settings(None, model={"path": str(tmp_path)}, kafka={"password_file": str(pw)})
    assert s2.kafka.secret() == "s3cret"


def test_cli_bad_config_exits_2_with_the_list(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "detector",
            "config",
            "--model",
            str(tmp_path / "none"),
            "--set",
            "batch.max_wait_ms=-5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "batch.max_wait_ms" in out.stderr and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_config_prints_effective_settings_masked(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "detector",
            "config",
            "--model",
            str(tmp_path),
            "--set",
            "kafka.password=hunter2",
            "--set",
            "batch.max_size=7",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["batch"]["max_size"] == 7
    assert cfg["kafka"]["password"] == "**********"
