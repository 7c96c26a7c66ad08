"""The systemd units: systemd's own tools accept them, the env file is a configuration the
detector takes, and the detector speaks the notify protocol the units rely on."""

from __future__ import annotations

import calendar
import ctypes
import itertools
import os
import re
import shlex
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
from pathlib import Path, PurePosixPath

import pytest

from tests.conftest import free_port
from tests.deploy.conftest import DEPLOY, detector_config

SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "vigil-detector.service"
TEMPLATE = SYSTEMD / "vigil-detector@.service"
GPU_DROPIN = SYSTEMD / "vigil-detector.service.d" / "gpu.conf"
ENV_EXAMPLE = SYSTEMD / "detector.env.example"
RETRAIN = SYSTEMD / "vigil-retrain.service"
RETRAIN_TIMER = SYSTEMD / "vigil-retrain.timer"
RETRAIN_SYSUSERS = SYSTEMD / "vigil-retrain.sysusers"
EXEC_START = "/opt/vigil/venv/bin/vigil-detect"
TRAIN_EXEC = "/opt/vigil/venv/bin/vigil-train"
REGISTRY = "/var/lib/vigil/models"
# What the retraining unit may set differently from the detector's, and only that: it is a
# oneshot that writes the registry, not a notify service that reads it. Every other
# directive of vigil-detector.service (the sandbox, settings, credential) must be there too.
RETRAIN_KEYS = {
    "Description",
    "StartLimitIntervalSec",
    "StartLimitBurst",
    "Type",
    "NotifyAccess",
    "ExecStartPre",
    "ExecStart",
    "ExecReload",
    "WatchdogSec",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "KillMode",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
    "UMask",
    "ReadOnlyPaths",
    "SyslogIdentifier",
    "WantedBy",
}
# Where the template may differ from the single unit, and only there.
INSTANCE_KEYS = {"Description", "EnvironmentFile", "LoadCredential", "SyslogIdentifier"}
Directives = list[tuple[str, str, str]]


def vigil_detect(name: str = "vigil-detect") -> Path:
    exe = Path(sys.executable).with_name(name)
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: install the project (make setup)")
    return exe


def render(dest: Path, gpu: bool = False) -> Path:
    """The units as installed, but with ExecStart at this checkout's vigil-detect and
    vigil-train: `systemd-analyze verify` insists that the programs exist."""
    dest.mkdir(parents=True, exist_ok=True)
    for unit in (UNIT, TEMPLATE):
        text = unit.read_text()
        assert f"ExecStart={EXEC_START} run\n" in text, unit.name
        (dest / unit.name).write_text(text.replace(EXEC_START, str(vigil_detect())))
    text = RETRAIN.read_text()
    assert f"ExecStart={TRAIN_EXEC} collect " in text
    (dest / RETRAIN.name).write_text(text.replace(TRAIN_EXEC, str(vigil_detect("vigil-train"))))
    shutil.copy(RETRAIN_TIMER, dest / RETRAIN_TIMER.name)
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
        if str(unit.parent) in line or "vigil-detector" in line or "vigil-retrain" in line
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
    m = re.fullmatch(r"(\d+)(s|min|h)?", value)
    assert m, f"unexpected time span {value!r}"
    return int(m.group(1)) * {"min": 60, "h": 3600}.get(m.group(2) or "s", 1)


@pytest.mark.parametrize(
    ("unit", "gpu"),
    [
        ("vigil-detector.service", False),
        ("vigil-detector.service", True),
        ("vigil-detector@plant-a.service", False),
        ("vigil-retrain.service", False),
        ("vigil-retrain.timer", False),
    ],
    ids=["unit", "unit+gpu-dropin", "template-instance", "retrain", "retrain-timer"],
)
def test_systemd_analyze_verify_accepts(
    systemd_analyze: str, tmp_path: Path, unit: str, gpu: bool
) -> None:
    assert verify(systemd_analyze, render(tmp_path, gpu) / unit) == ""


@pytest.mark.parametrize(
    ("unit", "directive"),
    [
        (UNIT.name, "WatchdogSec="),
        (RETRAIN.name, "StateDirectory="),
        (RETRAIN_TIMER.name, "Persistent="),
    ],
    ids=["unit", "retrain", "retrain-timer"],
)
def test_verify_reports_a_misspelt_directive(
    systemd_analyze: str, tmp_path: Path, unit: str, directive: str
) -> None:
    path = render(tmp_path) / unit
    path.write_text(path.read_text().replace(directive, directive.replace("=", "s=")))
    assert "Unknown key" in verify(systemd_analyze, path)


@pytest.mark.parametrize(
    ("unit", "gpu"),
    [
        ("vigil-detector.service", False),
        ("vigil-detector.service", True),
        ("vigil-retrain.service", False),
    ],
    ids=["unit", "unit+gpu-dropin", "retrain"],
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


def test_retrain_is_a_oneshot_with_the_detectors_sandbox_and_settings() -> None:
    ds = directives(RETRAIN)
    expected = {
        "Type": "oneshot",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "StateDirectory": "vigil-retrain",
        # The detectors, other users, must read what it publishes.
        "UMask": "0022",
        "ReadWritePaths": REGISTRY,
    }
    assert {k: values(ds, k) for k in expected} == {k: [v] for k, v in expected.items()}
    # A oneshot that failed is retried by the next timer tick, not at once; exit 2 and 3
    # (bad configuration, candidate refused) would fail again anyway.
    assert values(ds, "Restart") in ([], ["no"])
    assert values(ds, "ReadOnlyPaths") == []
    assert seconds(values(ds, "TimeoutStartSec")[0]) > 0
    # Every directive of the detector's unit that is not about being a long-running notify
    # service reading the registry is here, with the same value: sandbox, settings and the
    # Kafka password credential.
    detector = {(k, v) for _, k, v in directives(UNIT) if k not in RETRAIN_KEYS}
    assert detector - {(k, v) for _, k, v in ds} == set()
    # The detector only reads the registry; this unit writes it.
    assert f"-{REGISTRY}" in values(directives(UNIT), "ReadOnlyPaths")


def retrain_commands() -> list[list[str]]:
    """The two ExecStart= command lines of the retraining unit, as argv lists."""
    state = "/var/lib/vigil-retrain"  # %S/vigil-retrain for a system unit
    out = []
    for line in values(directives(RETRAIN), "ExecStart"):
        argv = shlex.split(line.replace("%S/vigil-retrain", state))
        assert argv[0] == TRAIN_EXEC, line
        assert all("%" not in a for a in argv), f"unexpected specifier in {line!r}"
        out.append(argv)
    return out


def test_retrain_collects_then_retrains_on_what_it_collected() -> None:
    """The command lines are what `vigil-train`'s own argument parser accepts, and the
    retrain reads the file the collect wrote, both in the unit's state directory."""
    from trainer.cli import _parser

    collect, retrain = retrain_commands()
    c = _parser().parse_args(collect[1:])
    r = _parser().parse_args(retrain[1:])
    assert (c.command, r.command) == ("collect", "retrain")
    assert c.out == r.data
    state = Path("/var/lib") / values(directives(RETRAIN), "StateDirectory")[0]
    assert c.out.is_relative_to(state) and r.report.is_relative_to(state)
    assert not r.dry_run, "a dry run never publishes"
    # Both read the detector's settings from the environment (EnvironmentFile=), not a file.
    assert c.config is None and r.config is None


def calendar_elapses(systemd_analyze: str, spec: str, n: int) -> list[float]:
    """The next `n` times `spec` elapses, in seconds (UTC, so that no DST shift counts)."""
    out = subprocess.run(
        [systemd_analyze, "calendar", f"--iterations={n}", spec],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"TZ": "UTC"},
    )
    assert out.returncode == 0, out.stderr
    stamps = re.findall(r"(?:Next elapse|Iter\. #\d+): \w{3} (\S+ \S+) UTC", out.stdout)
    assert len(stamps) == n, out.stdout
    return [calendar.timegm(time.strptime(s, "%Y-%m-%d %H:%M:%S")) for s in stamps]


def test_retrain_timer_runs_the_unit_over_the_data_it_collects(systemd_analyze: str) -> None:
    ts = directives(RETRAIN_TIMER)
    assert values(ts, "Unit") in ([], [RETRAIN.name])
    assert values(ts, "Persistent") == ["true"], "a host that was off catches up"
    delay = values(ts, "RandomizedDelaySec")
    assert delay and seconds(delay[0]) > 0
    assert values(ts, "WantedBy") == ["timers.target"]
    # Each run collects at least the time since the last one: --since covers the period.
    (spec,) = values(ts, "OnCalendar")
    first, second = calendar_elapses(systemd_analyze, spec, 2)
    collect = retrain_commands()[0]
    since = collect[collect.index("--since") + 1]
    m = re.fullmatch(r"(\d+)([hdw])", since)
    assert m, since
    since_s = int(m.group(1)) * {"h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    assert since_s >= second - first


def test_retrain_user_is_created_by_the_sysusers_file(tmp_path: Path) -> None:
    """systemd-sysusers, run against a scratch root, makes the static user the unit names
    (DynamicUser= then uses it): a stable owner for the registry, without a login."""
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.fail("systemd-sysusers is missing: run scripts/install-tools (package systemd)")
    (tmp_path / "etc").mkdir()
    out = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(RETRAIN_SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    users = {
        f[0]: f
        for f in (line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines())
    }
    groups = {line.split(":")[0] for line in (tmp_path / "etc/group").read_text().splitlines()}
    ds = directives(RETRAIN)
    (user,) = values(ds, "User")
    (group,) = values(ds, "Group")
    assert user in users and group in groups
    assert 0 < int(users[user][2]) < 1000, "a system user"
    assert users[user][6].endswith("nologin")


@pytest.mark.parametrize(
    ("model_path", "status"),
    [("registry", 0), ("missing", 2), ("", 2)],
    ids=["writable", "missing", "unset"],
)
def test_retrain_refuses_early_without_a_writable_registry(
    tmp_path: Path, model_path: str, status: int
) -> None:
    """ExecStartPre=, run by a shell as systemd would (with $$ unescaped): exit 2 before
    any training when the model directory cannot be written."""
    (line,) = values(directives(RETRAIN), "ExecStartPre")
    argv = shlex.split(line.replace("$$", "$"))
    (tmp_path / "registry").mkdir()
    env = {"PATH": os.environ["PATH"]}
    if model_path:
        env["VIGIL_MODEL__PATH"] = str(tmp_path / model_path)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == status, out.stderr
    assert ("is not writable" in out.stderr) == (status != 0)


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
    # The retraining unit writes the model directory the detectors read.
    assert PurePosixPath(env_file(ENV_EXAMPLE)["VIGIL_MODEL__PATH"]).is_relative_to(REGISTRY)


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
