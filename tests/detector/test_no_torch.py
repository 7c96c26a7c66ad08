import subprocess
import sys


def test_detector_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import detector, detector.app.cli, detector.app.loop, detector.model.offline, detector.model.scorer\n"
        "import detector.kafka.kafka_python, detector.ops.http, detector.ops.metrics, detector.ops.settings, detector.features.tables\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
