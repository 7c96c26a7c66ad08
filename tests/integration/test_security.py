"""SASL_SSL with SCRAM-SHA-512 over TLS, end to end against a broker started by
`scripts/kafka-dev` with that listener. The certificates are made here, by a throw-away CA.
A wrong password and an untrusted certificate stop the detector with a message that says
what to fix (exit 2, so systemd does not restart it in a loop), and no secret is logged."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from kafka.admin import KafkaAdminClient, NewTopic

from tests.conftest import ROOT, free_port
from tests.integration.kafka_helpers import (
    committed_all,
    produce,
    read_all,
    start_detector,
    wait_for,
)
from tests.integration.test_detector import expected_anomalies, telemetry

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
SCRIPT = str(ROOT / "scripts" / "kafka-dev")
PASSWORD = "correct-horse-battery-staple-7"


@dataclass(frozen=True)
class SecureBroker:
    plaintext: str  # the loopback listener, for the test's own admin and reads
    sasl_ssl: str
    ca: Path
    password_file: Path


def _keystore(cert: trustme.LeafCert, path: Path) -> None:
    """Kafka's PEM keystore wants a PKCS#8 key followed by the certificate chain."""
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pkcs8 + b"".join(c.bytes() for c in cert.cert_chain_pems))


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    d = tmp_path_factory.mktemp("sasl")
    ca = trustme.CA()
    _keystore(ca.issue_cert("127.0.0.1", "localhost"), d / "broker.pem")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    (d / "password").write_text(PASSWORD)
    port, sasl_port = free_port(), free_port()
    args = ["--port", str(port), "--controller-port", str(free_port()), "--dir", str(d / "k")]
    secure = ["--sasl-ssl-port", str(sasl_port), "--tls-keystore", str(d / "broker.pem")]
    secure += ["--scram-user", f"vigil:{d / 'password'}"]
    proc = subprocess.run(
        [SCRIPT, "start", *args, *secure], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    try:
        yield SecureBroker(
            f"127.0.0.1:{port}", f"127.0.0.1:{sasl_port}", d / "ca.pem", d / "password"
        )
    finally:
        subprocess.run([SCRIPT, "stop", "--dir", args[-1]], capture_output=True, timeout=60)


def _secure(b: SecureBroker, password_file: Path, ca: Path) -> dict[str, str]:
    return {
        "kafka__security_protocol": "SASL_SSL",
        "kafka__sasl_mechanism": "SCRAM-SHA-512",
        "kafka__username": "vigil",
        "kafka__password_file": str(password_file),
        "kafka__ssl_cafile": str(ca),
    }


def test_sasl_ssl_scram_end_to_end(
    secure_broker: SecureBroker, bundle_dir: Path, tmp_path: Path
) -> None:
    b = secure_broker
    admin = KafkaAdminClient(bootstrap_servers=b.plaintext)
    admin.create_topics([NewTopic("secure", 2, 1)])
    admin.close()
    records, x, _ = telemetry(500, seed=3, fault_rate=0.05)
    positions = produce(b.plaintext, "secure", records)
    d = start_detector(
        tmp_path,
        b.sasl_ssl,
        bundle_dir,
        "secure",
        "g-secure",
        **_secure(b, b.password_file, b.ca),
    )
    try:
        d.wait_ready()
        wait_for(lambda: committed_all(b.plaintext, "g-secure", "secure"), 60, "offsets")
    finally:
        assert d.terminate() == 0
    events = [orjson.loads(r.value) for r in read_all(b.plaintext, "secure.anomalies")]
    got = {(e["source"]["partition"], e["source"]["offset"]) for e in events}
    want = {positions[i] for i, bad in enumerate(expected_anomalies(bundle_dir, x)) if bad}
    assert want and want <= got
    assert PASSWORD not in d.log.read_text()


@pytest.mark.parametrize("wrong", ["password", "certificate"])
def test_wrong_password_or_untrusted_certificate_fails_clearly(
    wrong: str, secure_broker: SecureBroker, bundle_dir: Path, tmp_path: Path
) -> None:
    b = secure_broker
    password_file, ca = b.password_file, b.ca
    if wrong == "password":
        password_file = tmp_path / "password"
        password_file.write_text("not-" + PASSWORD)
    else:
        ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(ca))
    d = start_detector(
        tmp_path, b.sasl_ssl, bundle_dir, "secure", "g-wrong", **_secure(b, password_file, ca)
    )
    assert d.proc.wait(timeout=90) == 2
    log = d.log.read_text()
    expected = {
        "password": "refused the credentials of user 'vigil' (SCRAM-SHA-512): check "
        "kafka.username and kafka.password",
        "certificate": "is not trusted (certificate verify failed",
    }[wrong]
    assert "vigil-detect: error: " in log and expected in log, log
    assert PASSWORD not in log and "Traceback" not in log
