"""Categorical columns for training: each one's codes chosen from the training rows with the
detector's own rule (`detector.features.inputs.fit_vocabulary`), so that `fit` and `retrain
--refit-vocabularies` choose them alike, and coded with the detector's encoder
(`detector.contract.categorical`), as the detector will code the stream. The columns are
coded on the one input path, `detector.features.inputs.model_inputs` (`trainer.prepare`).
"""

from __future__ import annotations

from collections.abc import Sequence

from detector.contract.categorical import Categorical
from detector.features.inputs import fit_vocabulary
from trainer.config import TrainConfig

__all__ = ["fit_categorical"]


def fit_categorical(name: str, text: Sequence[str], cfg: TrainConfig) -> Categorical:
    """A vocabulary of the values seen at least `cfg.min_count` times, most frequent first;
    feature hashing past `cfg.vocabulary_max` distinct values."""
    from trainer.prepare import vocabularies

    return fit_vocabulary(name, text, vocabularies(cfg))
