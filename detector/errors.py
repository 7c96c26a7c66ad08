"""Vigil's exceptions. Every message says what is wrong and what to do about it.

VigilError
├── ConfigError      bad settings or command-line options (exit code 2)
├── DataError        an input file cannot be used: names file, row and column
├── BundleError      a model bundle is missing, corrupt or inconsistent
└── PublishError     events or dead-letter records were not acknowledged
"""

from __future__ import annotations

__all__ = ["BundleError", "ConfigError", "DataError", "PublishError", "VigilError"]


class VigilError(Exception):
    """Base class: the message is meant for the user, without a stack trace."""


class ConfigError(VigilError):
    pass


class DataError(VigilError):
    pass


class BundleError(VigilError):
    pass


class PublishError(VigilError):
    pass
