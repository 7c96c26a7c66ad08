"""The detector's one settings model.

Sources, highest priority first: command-line overrides, environment variables
(`VIGIL_` prefix, `__` between nested names: `VIGIL_KAFKA__BOOTSTRAP_SERVERS`), a config
file (TOML or YAML, `--config`), then the defaults below. `load_settings` reports every
problem at once as a `ConfigError`.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from detector.errors import ConfigError

__all__ = [
    "AlertSettings",
    "BatchSettings",
    "HttpSettings",
    "KafkaSettings",
    "ModelSettings",
    "PayloadSettings",
    "Settings",
    "StateSettings",
    "TopicSettings",
    "load_settings",
    "masked",
]

_file_data: ContextVar[dict[str, Any] | None] = ContextVar("vigil_config_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _raise_all(section: Any, problems: list[str]) -> Any:
    if problems:
        raise ValueError("; ".join(problems))
    return section


def _split(v: Any) -> Any:
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


class KafkaSettings(_Section):
    # The client of the consumer and the producer. librdkafka fetches and parses in C threads
    # beside the loop; kafka-python is pure Python (bench/results/throughput.md compares them).
    client: Literal["librdkafka", "kafka-python"] = "librdkafka"
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "vigil-detector"
    group_id: str = "vigil-detector"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None  # read at start-up; keeps the secret out of the environment
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: int = Field(default=10_000, ge=1_000, le=300_000)
    max_poll_interval_ms: int = Field(default=60_000, ge=10_000)  # also the rebalance timeout
    rejoin_timeout_s: float = Field(default=10.0, ge=5.0)  # a rebalance longer than this: rejoin
    request_timeout_ms: int = Field(default=30_000, ge=1_000)
    delivery_timeout_ms: int = Field(default=60_000, ge=1_000)
    # kafka-python keeps one fetch per broker in flight, for the partitions with nothing
    # buffered; records of the others wait until it returns: this bounds that wait.
    fetch_max_wait_ms: int = Field(default=20, ge=1, le=500)
    # At most one offset commit per interval, carrying the newest offsets: each commit is a
    # write to the broker's offsets log, and one per small batch cost the broker more CPU
    # than the stream itself. A crash replays at most this much more; 0: after every batch.
    commit_interval_ms: int = Field(default=1_000, ge=0, le=60_000)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        problems = []
        if self.security_protocol.startswith("SASL"):
            if not self.sasl_mechanism:
                problems.append("sasl_mechanism is required with a SASL security protocol")
            if not self.username:
                problems.append("username is required with a SASL security protocol")
            if self.password is None and self.password_file is None:
                problems.append("password or password_file is required with SASL")
        if self.delivery_timeout_ms <= self.request_timeout_ms + 100:
            problems.append("delivery_timeout_ms must exceed request_timeout_ms (+100 ms linger)")
        for name in ("password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            f = getattr(self, name)
            if f is not None and not Path(f).is_file():
                problems.append(f"{name} {f} does not exist")
        return _raise_all(self, problems)

    def secret(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None


class TopicSettings(_Section):
    input: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["telemetry"])
    input_pattern: str | None = None  # a regex; replaces `input` when set
    anomalies: str = "vigil.anomalies"
    dlq: str = "vigil.dlq"
    scores: str | None = None  # every decision, for audit and replay (costs throughput)

    _split_input = field_validator("input", mode="before")(_split)

    @model_validator(mode="after")
    def _consistent(self) -> TopicSettings:
        problems = []
        if not self.input and not self.input_pattern:
            problems.append("name at least one input topic (or input_pattern)")
        if {self.anomalies, self.dlq, self.scores} & set(self.input):
            problems.append(
                "an output topic is also an input topic: the detector would score its own output"
            )
        if len({self.anomalies, self.dlq, self.scores or self.anomalies}) < (
            3 if self.scores else 2
        ):
            problems.append("anomalies, dlq and scores must be different topics")
        return _raise_all(self, problems)


class PayloadSettings(_Section):
    """Where things are in each message (JSON)."""

    features_at: Literal["top", "field", "array"] = "top"
    features_field: str | None = None  # for 'field', and optionally for 'array'
    key_from: Literal["kafka_key", "field"] = "kafka_key"
    key_field: str | None = None
    time_from: Literal["kafka_timestamp", "field"] = "kafka_timestamp"
    time_field: str | None = None  # epoch seconds or milliseconds, or an ISO 8601 string
    # What vigil_decision_latency_seconds counts from: the event time (above), or the Kafka
    # record timestamp, when the message was produced: for replays of past events, whose
    # event times would count the replay's age as latency.
    latency_from: Literal["event_time", "kafka_timestamp"] = "event_time"
    max_bytes: int = Field(default=1_048_576, ge=16)

    @model_validator(mode="after")
    def _consistent(self) -> PayloadSettings:
        problems = []
        if self.features_at == "field" and not self.features_field:
            problems.append("features_field is required when features_at is 'field'")
        if self.key_from == "field" and not self.key_field:
            problems.append("key_field is required when key_from is 'field'")
        if self.time_from == "field" and not self.time_field:
            problems.append("time_field is required when time_from is 'field'")
        return _raise_all(self, problems)


class ModelSettings(_Section):
    path: Path = Path("model")  # a bundle, or a registry model directory (<registry>/<name>)
    poll_interval_s: float = Field(default=2.0, gt=0, le=3600)  # registry CURRENT pointer
    shadow_path: Path | None = None  # a bundle scored beside the live one, publishing nothing
    provider: Literal["auto", "cuda", "cpu"] = "auto"
    # ONNX Runtime's intra-op threads; unset: the CPUs this process may use (its affinity
    # and its cgroup's CPU quota, e.g. a Kubernetes CPU limit), which ONNX Runtime alone
    # does not see. One process per core: 1.
    threads: int | None = Field(default=None, ge=1, le=256)
    # Let ONNX Runtime's threads busy-wait between runs: off, it saves most of a core at
    # moderate load (bench/results/throughput.md); on, a back-to-back batch starts ~0.1 ms
    # sooner. Worth it only on a machine the detector has to itself at full speed.
    spinning: bool = False
    threshold: float | None = Field(default=None, gt=0)  # overrides the bundle's threshold
    top_features: int = Field(default=3, ge=0, le=100)


class AlertSettings(_Section):
    """Alarm persistence: an episode opens when k of an entity's last n decisions alarm,
    and closes after `close_after` normal decisions in a row."""

    k: int = Field(default=1, ge=1)
    n: int = Field(default=1, ge=1, le=10_000)
    close_after: int = Field(default=3, ge=1)
    continue_every: int = Field(
        default=1, ge=0
    )  # publish every Nth alarm of an open episode; 0: none

    @model_validator(mode="after")
    def _k_le_n(self) -> AlertSettings:
        return _raise_all(self, ["k must not exceed n"] if self.k > self.n else [])


class StateSettings(_Section):
    """Per-entity windows of windowed models, and the behaviour state of models that derive
    behaviour features (its bounds are in the model's spec)."""

    max_entities: int = Field(default=100_000, ge=1)
    idle_ttl_s: float = Field(default=3600.0, gt=0)
    # Behaviour state survives restarts through this snapshot: loaded at start, written
    # every `snapshot_every_s` and at shutdown. None: a restart starts every card afresh.
    snapshot_path: Path | None = None
    snapshot_every_s: float = Field(default=60.0, ge=1.0)


class BatchSettings(_Section):
    max_size: int = Field(default=2_000, ge=1, le=1_000_000)
    # Batches also form on their own while the one before is scored and acknowledged; a
    # longer wait for a fuller batch saves CPU but adds to latency (bench/throughput.py:
    # at 5,000 msg/s, 2 ms gave p50 <= 25 ms, 20 ms gave p50 <= 100 ms).
    max_wait_ms: int = Field(default=2, ge=0, le=60_000)


class HttpSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=9108, ge=0, le=65_535)


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _file_data.get() or {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    payload: PayloadSettings = PayloadSettings()
    model: ModelSettings = Field(default_factory=ModelSettings, validate_default=True)
    batch: BatchSettings = BatchSettings()
    state: StateSettings = StateSettings()
    alerts: AlertSettings = AlertSettings()
    http: HttpSettings = HttpSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("model")
    @classmethod
    def _model_exists(cls, v: ModelSettings) -> ModelSettings:
        if not Path(v.path).exists():
            raise ValueError(
                f"path {v.path} does not exist (a bundle directory from vigil-train fit)"
            )
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls), file_secret_settings


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text()) or {}
        else:
            raise ConfigError(f"config file {path}: use .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path} cannot be parsed: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a table/mapping")
    return data


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build settings from every source; raise one ConfigError listing every problem."""
    token = _file_data.set(_read_file(Path(config_file)) if config_file else {})
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  - {where}: {msg}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    finally:
        _file_data.reset(token)
    return settings


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration, JSON-ready, with secrets shown as '**********'."""
    return settings.model_dump(mode="json")
