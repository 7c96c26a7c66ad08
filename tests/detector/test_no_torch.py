import subprocess
import sys


def test_detector_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import detector, detector.cli, detector.service, detector.offline, detector.scorer\n"
        "import detector.kafka, detector.http, detector.metrics, detector.settings, detector.tables\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
