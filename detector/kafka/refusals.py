"""What to fix when Kafka refuses a client's settings: one message for both adapters,
whichever client noticed. Imports no client."""

from __future__ import annotations

from detector.errors import ConfigError
from detector.ops.settings import KafkaSettings

__all__ = ["certificate_untrusted", "configuration_refused", "credentials_refused"]


def credentials_refused(k: KafkaSettings, detail: str) -> ConfigError:
    """What to fix when the broker refuses the SASL credentials (either client)."""
    return ConfigError(
        f"Kafka at {k.bootstrap_servers} refused the credentials of user {k.username!r} "
        f"({k.sasl_mechanism}): check kafka.username and kafka.password or "
        f"kafka.password_file ({detail})"
    )


def certificate_untrusted(k: KafkaSettings, detail: str) -> ConfigError:
    """What to fix when this client does not trust the broker's certificate (either client)."""
    return ConfigError(
        f"the TLS certificate of Kafka at {k.bootstrap_servers} is not trusted ({detail}): "
        "set kafka.ssl_cafile to the CA that signed it, or check kafka.ssl_check_hostname"
    )


def configuration_refused(detail: str) -> ConfigError:
    """The client itself refused its configuration (either client): retrying cannot fix it."""
    return ConfigError(f"Kafka client configuration: {detail}")
