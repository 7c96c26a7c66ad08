"""The systemd units: systemd's own tools accept them, the env file is a configuration the
detector takes, and the detector speaks the notify protocol the units rely on."""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.deploy.conftest import DEPLOY, detector_config

SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "vigil-detector.service"
TEMPLATE = SYSTEMD / "vigil-detector@.service"
GPU_DROPIN = SYSTEMD / "vigil-detector.service.d" / "gpu.conf"
ENV_EXAMPLE = SYSTEMD / "detector.env.example"
EXEC_START = "/opt/vigil/venv/bin/vigil-detect"
# Where the template may differ from the single unit, and only there.
INSTANCE_KEYS = {"Description", "EnvironmentFile", "LoadCredential", "SyslogIdentifier"}
Directives = list[tuple[str, str, str]]


def vigil_detect() -> Path:
    exe = Path(sys.executable).with_name("vigil-detect")
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: install the project (make setup)")
    return exe


def render(dest: Path, gpu: bool = False) -> Path:
    """The units as installed, but with ExecStart at this checkout's vigil-detect:
    `systemd-analyze verify` insists that the program exists."""
    dest.mkdir(parents=True, exist_ok=True)
    for unit in (UNIT, TEMPLATE):
        text = unit.read_text()
        assert f"ExecStart={EXEC_START} run\n" in text, unit.name
        (dest / unit.name).write_text(text.replace(EXEC_START, str(vigil_detect())))
    if gpu:
        shutil.copytree(GPU_DROPIN.parent, dest / GPU_DROPIN.parent.name)
    return dest


def verify(systemd_analyze: str, unit: Path) -> str:
    """What `systemd-analyze verify` says about `unit`; it exits 0 on unknown or unparsable
    directives, so anything it prints about our files counts as a failure."""
    out = subprocess.run(
        [systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    said = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if str(unit.parent) in line or "vigil-detector" in line
    ]
    if out.returncode != 0:
        said.append(f"exit status {out.returncode}: {out.stderr.strip()}")
    return "\n".join(said)


def directives(path: Path) -> Directives:
    """(section, key, value) in file order: systemd's unit syntax (no continuation lines
    are used in these files)."""
    section, out = "", []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(ds: Directives, key: str) -> list[str]:
    return [v for _, k, v in ds if k == key]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, f"unexpected time span {value!r}"
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


@pytest.mark.parametrize(
    ("unit", "gpu"),
    [
        ("vigil-detector.service", False),
        ("vigil-detector.service", True),
        ("vigil-detector@plant-a.service", False),
    ],
    ids=["unit", "unit+gpu-dropin", "template-instance"],
)
def test_systemd_analyze_verify_accepts(
    systemd_analyze: str, tmp_path: Path, unit: str, gpu: bool
) -> None:
    assert verify(systemd_analyze, render(tmp_path, gpu) / unit) == ""


def test_verify_reports_a_misspelt_directive(systemd_analyze: str, tmp_path: Path) -> None:
    unit = render(tmp_path) / UNIT.name
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    assert "Unknown key" in verify(systemd_analyze, unit)


@pytest.mark.parametrize(
    ("unit", "gpu"),
    [("vigil-detector.service", False), ("vigil-detector.service", True)],
    ids=["unit", "unit+gpu-dropin"],
)
def test_exposure_level_is_low(systemd_analyze: str, tmp_path: Path, unit: str, gpu: bool) -> None:
    """systemd's own audit of the sandbox (0 = locked down, 10 = fully exposed)."""
    out = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", str(render(tmp_path, gpu) / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 2.0, out.stdout


def test_unit_is_a_notify_service_with_watchdog_credentials_and_sandbox() -> None:
    ds = directives(UNIT)
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "EnvironmentFile": "/etc/vigil/detector.env",
    }
    assert {k: values(ds, k) for k in expected} == {k: [v] for k, v in expected.items()}
    assert values(ds, "ExecStart") == [f"{EXEC_START} run"]
    assert values(ds, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    (credential,) = values(ds, "LoadCredential")
    name = credential.split(":", 1)[0]
    assert f"VIGIL_KAFKA__PASSWORD_FILE=%d/{name}" in values(ds, "Environment")
    assert "-/var/lib/vigil/models" in values(ds, "ReadOnlyPaths")
    assert seconds(values(ds, "WatchdogSec")[0]) > 0


def test_template_differs_from_the_unit_only_per_instance() -> None:
    def common(ds: Directives) -> Directives:
        return [d for d in ds if d[1] not in INSTANCE_KEYS]

    unit, template = directives(UNIT), directives(TEMPLATE)
    assert common(template) == common(unit)
    for key in INSTANCE_KEYS:
        assert all("%i" in v for v in values(template, key) if not v.startswith("-")), key


def test_exit_status_2_means_bad_configuration(tmp_path: Path) -> None:
    """RestartPreventExitStatus=2 relies on the detector exiting 2 on a bad configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env["VIGIL_MODEL__PATH"] = str(tmp_path / "no-such-bundle")
    out = subprocess.run(
        [str(vigil_detect()), "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out.stderr
    assert "no-such-bundle does not exist" in out.stderr


def env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads these: KEY=VALUE lines, # comments."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and key.strip() == key and key.isidentifier(), f"bad line {line!r}"
            env[key] = value
    return env


def test_env_example_is_a_valid_configuration(bundle_dir: Path, tmp_path: Path) -> None:
    env = env_file(ENV_EXAMPLE)
    assert all(k.startswith("VIGIL_") for k in env)
    assert "VIGIL_KAFKA__PASSWORD" not in env, "the password is a credential, not a setting"
    # What the unit adds, and files where the example expects them.
    env["VIGIL_KAFKA__PASSWORD_FILE"] = str(tmp_path / "kafka-password")
    env["VIGIL_KAFKA__SSL_CAFILE"] = str(tmp_path / "ca.pem")
    for f in ("kafka-password", "ca.pem"):
        (tmp_path / f).write_text("x")
    env["VIGIL_MODEL__PATH"] = str(bundle_dir)
    config = detector_config(env)
    assert config["kafka"]["security_protocol"] == "SASL_SSL"
    assert config["http"]["port"] == int(env["VIGIL_HTTP__PORT"])
    # A producer flush blocks the loop for up to the delivery timeout: the watchdog and the
    # stop timeout must outlast it.
    ds = directives(UNIT)
    delivery_s = config["kafka"]["delivery_timeout_ms"] / 1000
    assert seconds(values(ds, "WatchdogSec")[0]) > delivery_s
    assert seconds(values(ds, "TimeoutStopSec")[0]) > delivery_s


# -- the notify protocol, spoken by a real detector against a real broker ------------------
class NotifySocket:
    """The service manager's end of NOTIFY_SOCKET: an AF_UNIX datagram socket."""

    def __init__(self) -> None:
        # Socket paths are limited to 107 bytes: keep it short, whatever the tmp_path.
        self.dir = Path(tempfile.mkdtemp(prefix="vigil-notify-", dir="/tmp"))
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))

    def messages(self, seconds: float) -> Iterator[tuple[float, set[str]]]:
        """(arrival time, fields) for every datagram within `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            yield time.monotonic(), set(data.decode().split("\n"))

    def first_message(self, proc: subprocess.Popen[bytes], seconds: float) -> set[str]:
        """The first notification, failing at once if the process exits before it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _, fields in self.messages(1.0):
                return fields
            assert proc.poll() is None, f"the detector exited ({proc.returncode}) before READY"
        raise AssertionError(f"no notification within {seconds}s")

    def wait_for(self, field: str, seconds: float) -> set[str]:
        for _, fields in self.messages(seconds):
            if field in fields:
                return fields
        raise AssertionError(f"no {field} within {seconds}s")

    def watchdog_pings(self, seconds: float) -> list[float]:
        return [t for t, fields in self.messages(seconds) if "WATCHDOG=1" in fields]

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while self.sock.recv(4096):
                pass
        except BlockingIOError:
            pass
        self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def until(cond: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        time.sleep(0.2)


class ThreadFreezer:
    """Stops one thread of a process and leaves the others running. The detector's loop is
    its main thread (thread id = process id): frozen, it stops turning while the HTTP
    thread still serves, which tells a ping from the loop apart from a ping from any
    thread. ptrace does this (PTRACE_SEIZE + PTRACE_INTERRUPT act on a single thread);
    SIGSTOP would stop them all."""

    SEIZE, INTERRUPT, DETACH = 0x4206, 0x4207, 17

    def __init__(self, tid: int):
        self.tid = tid
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        self.libc.ptrace.restype = ctypes.c_long

    def _ptrace(self, request: int) -> None:
        if self.libc.ptrace(request, self.tid, None, None) != 0:
            err = ctypes.get_errno()
            pytest.fail(
                f"ptrace({request:#x}, {self.tid}): {os.strerror(err)} (needs CAP_SYS_PTRACE)"
            )

    def freeze(self) -> None:
        self._ptrace(self.SEIZE)
        self._ptrace(self.INTERRUPT)
        _, status = os.waitpid(self.tid, os.WUNTRACED | 0x40000000)  # __WALL
        assert os.WIFSTOPPED(status), hex(status)

    def thaw(self) -> None:
        self._ptrace(self.DETACH)


def process_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]  # R, S, T (stopped), ...


@pytest.mark.kafka
def test_notify_ready_watchdog_only_while_looping_reload_and_stopping(
    bundle_dir: Path, kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    # WatchdogSec=2s: a ping every second, and systemd would act after two without one.
    watchdog_usec = 2_000_000
    deadline_s = watchdog_usec / 1e6
    topic = make_topic("notify")
    port = free_port()
    notify = NotifySocket()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VIGIL_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_PID")
    } | {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": str(watchdog_usec),
        "VIGIL_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "VIGIL_KAFKA__GROUP_ID": f"notify-{uuid.uuid4().hex[:8]}",
        "VIGIL_TOPICS__INPUT": topic,
        "VIGIL_TOPICS__ANOMALIES": f"{topic}.anomalies",
        "VIGIL_TOPICS__DLQ": f"{topic}.dlq",
        "VIGIL_MODEL__PATH": str(bundle_dir),
        "VIGIL_MODEL__PROVIDER": "cpu",
        "VIGIL_HTTP__HOST": "127.0.0.1",
        "VIGIL_HTTP__PORT": str(port),
        "VIGIL_LOG_FORMAT": "json",
    }
    log = tmp_path / "detector.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(vigil_detect()), "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # READY=1 first (no ping before it), from the main process itself.
        first = notify.first_message(proc, 180)
        assert "READY=1" in first, f"the first notification was {first}"
        assert f"MAINPID={proc.pid}" in first
        until(lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, 60, "/readyz")

        # A healthy loop pings at half the watchdog interval, never missing a beat.
        pings = notify.watchdog_pings(3 * deadline_s)
        assert len(pings) >= 4, pings
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < deadline_s, gaps

        # The loop frozen, the process alive and serving HTTP: no pings, so systemd would
        # kill it after WatchdogSec. (Frozen while holding the GIL, the loop would block the
        # HTTP thread too; then thaw and catch it in a system call on another try.)
        healthz = f"http://127.0.0.1:{port}/healthz"
        loop = ThreadFreezer(proc.pid)
        for _ in range(5):
            loop.freeze()
            if http_status(healthz) == 200:
                break
            loop.thaw()
        else:
            pytest.fail("the HTTP thread never answered with the main thread frozen")
        notify.drain()
        try:
            assert notify.watchdog_pings(1.5 * deadline_s) == []
            assert http_status(healthz) == 200, "/healthz allows 60 s without a loop turn"
        finally:
            loop.thaw()
        assert len(notify.watchdog_pings(deadline_s)) >= 1

        # The whole process stopped: nothing either.
        os.kill(proc.pid, signal.SIGSTOP)
        until(lambda: process_state(proc.pid) == "T", 5, "the detector to stop")
        notify.drain()
        assert notify.watchdog_pings(1.5 * deadline_s) == []

        # Thawed, it pings again at once.
        os.kill(proc.pid, signal.SIGCONT)
        assert len(notify.watchdog_pings(deadline_s)) >= 1

        # systemctl reload (ExecReload= sends SIGHUP): the model watcher looks now; the
        # detector neither exits nor misses a beat.
        proc.send_signal(signal.SIGHUP)
        pings = notify.watchdog_pings(2 * deadline_s)
        assert proc.poll() is None, "SIGHUP must not stop the detector"
        assert len(pings) >= 2, pings

        # SIGTERM: STOPPING=1, then a clean exit.
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", 60)
        assert proc.wait(timeout=60) == 0, log.read_text()
    except AssertionError:
        print(f"--- detector log ---\n{log.read_text()[-8000:]}")  # shown with the failure
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
