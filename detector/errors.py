"""Vigil's exceptions. Every message says what is wrong and what to do about it.

VigilError
├── ConfigError          bad settings or command-line options (exit code 2)
├── DataError            an input file cannot be used: names file, row and column
├── BundleError          a model bundle is missing, corrupt or inconsistent
└── KafkaError           the broker could not be reached or refused a request; raised by
    │                    `detector.kafka`'s adapters in place of either client's own errors
    ├── CommitFailed     offsets were not committed (the group moved on: the new owner replays)
    └── PublishError     events or dead-letter records were not acknowledged

A client refusing its configuration or credentials is a ConfigError: retrying cannot fix it.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "CommitFailed",
    "ConfigError",
    "DataError",
    "KafkaError",
    "PublishError",
    "VigilError",
]


class VigilError(Exception):
    """Base class: the message is meant for the user, without a stack trace."""


class ConfigError(VigilError):
    pass


class DataError(VigilError):
    pass


class BundleError(VigilError):
    pass


class KafkaError(VigilError):
    """A Kafka request failed in a way a retry may fix (broker down, a timeout)."""


class CommitFailed(KafkaError):
    pass


class PublishError(KafkaError):
    pass
