"""Categorical columns for training: each one's codes chosen from the training rows, and the
column coded with the detector's own encoder (`detector.contract.categorical`), as the detector will
code the stream.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from detector.contract.categorical import Categorical, Encoder, as_text
from detector.errors import DataError
from trainer.config import TrainConfig
from trainer.data import Dataset

__all__ = ["fit_categorical", "with_categorical"]

log = logging.getLogger(__name__)


def fit_categorical(name: str, text: Sequence[str], cfg: TrainConfig) -> Categorical:
    """A vocabulary of the values seen at least `cfg.min_count` times, most frequent first;
    feature hashing past `cfg.vocabulary_max` distinct values."""
    counts = Counter(text)
    counts.pop("", None)  # the empty string always has the reserved code
    if len(counts) > cfg.vocabulary_max:
        log.info(
            "categorical '%s': %d distinct values > %d: hashed into %d buckets",
            name,
            len(counts),
            cfg.vocabulary_max,
            cfg.hash_buckets,
        )
        return Categorical(buckets=cfg.hash_buckets)
    kept = tuple(v for v, c in counts.most_common() if c >= cfg.min_count)
    if not kept:
        raise DataError(
            f"categorical '{name}': no value occurs {cfg.min_count} times in the training "
            "rows; lower --min-count, or leave the column out"
        )
    log.info(
        "categorical '%s': %d values (%d rarer than %d share the reserved code)",
        name,
        len(kept),
        len(counts) - len(kept),
        cfg.min_count,
    )
    return Categorical(values=kept)


def with_categorical(ds: Dataset, names: Sequence[str], cfg: TrainConfig) -> Dataset:
    """`ds` with the categorical columns `names` (read aside, raw) appended as codes."""
    if not names:
        return ds
    extra = ds.extra or {}
    if missing := [n for n in names if n not in extra]:
        raise DataError(f"categorical columns {missing} were not read")
    specs: dict[str, Categorical] = {}
    codes = []
    for name in names:
        text = as_text(extra[name])
        specs[name] = fit_categorical(name, text, cfg)
        codes.append(Encoder(name, specs[name]).encode(text))
    values = np.concatenate([ds.values, np.stack(codes, axis=1)], axis=1)
    return replace(ds, names=[*ds.names, *names], values=values, categorical=specs)
