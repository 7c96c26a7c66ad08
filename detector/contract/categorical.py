"""Categorical features: raw field values to integer codes, the same way in the trainer, the
offline scorer and the daemon's decoder.

A categorical feature travels in the model's float32 input as its code. Code 0 is the
reserved bucket: a value never seen in training or too rare there to learn, and the empty
string. With a vocabulary, codes 1..K are its values in order; with feature hashing (for
vocabularies too large to list), a value's code is 1 + crc32(value) mod B, stable across
processes and machines. The network embeds the code and reconstructs a distribution over
the codes (`trainer/model.py`); the feature's error is the cross-entropy of the code seen.

Values are compared as text: the JSON integer 5411 and the string "5411" are one value.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MAX_CODES", "OTHER", "Categorical", "Encoder", "as_text"]

MAX_CODES = 1 << 20  # codes stay exact in float32 (integers up to 2^24)
OTHER = "(other)"  # how code 0 is named in events


class Categorical(BaseModel):
    """How one categorical feature is coded; part of the manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    values: tuple[str, ...] = Field(default=(), max_length=MAX_CODES - 1)
    buckets: int = Field(default=0, ge=0, lt=MAX_CODES)

    @model_validator(mode="after")
    def _one_way(self) -> Categorical:
        if bool(self.values) == bool(self.buckets):
            raise ValueError("a categorical has either a vocabulary (values) or hash buckets")
        if len(set(self.values)) != len(self.values):
            raise ValueError("vocabulary values must be unique")
        if "" in self.values:
            raise ValueError("the empty string is never in a vocabulary: it has code 0")
        return self

    @property
    def size(self) -> int:
        """Number of codes, the reserved bucket included."""
        return 1 + (self.buckets or len(self.values))

    def label(self, code: int) -> str:
        """What a code stands for, for people: the value, a hash bucket, or OTHER."""
        if code <= 0 or code >= self.size:
            return OTHER
        return self.values[code - 1] if self.values else f"#bucket-{code}"


def as_text(values: Sequence[object] | np.ndarray) -> list[str]:
    """Raw column values (strings, integers, None from a file) as the text the codes are of;
    None is the empty string."""
    return ["" if v is None else str(v) for v in values]


class Encoder:
    """Codes of one categorical feature. Hashable by identity, so decoding mappings that hold
    one stay cheap to look up however large the vocabulary."""

    __slots__ = ("_index", "name", "spec")

    def __init__(self, name: str, spec: Categorical):
        self.name = name
        self.spec = spec
        self._index = {v: i for i, v in enumerate(spec.values, 1)}

    def encode(self, values: Sequence[str]) -> np.ndarray:
        """[N] float32 codes of N strings (C-speed maps: no Python per value)."""
        n = len(values)
        if self._index:
            return np.fromiter(
                map(self._index.get, values, itertools.repeat(0)), dtype=np.float32, count=n
            )
        digest = np.fromiter(map(zlib.crc32, map(str.encode, values)), dtype=np.int64, count=n)
        codes = (digest % self.spec.buckets + 1).astype(np.float32)
        codes[np.fromiter(map(len, values), dtype=np.int64, count=n) == 0] = 0.0
        return codes

    def __repr__(self) -> str:
        kind = (
            f"{len(self.spec.values)} values"
            if self.spec.values
            else f"{self.spec.buckets} buckets"
        )
        return f"Encoder({self.name!r}, {kind})"
