"""Files to training data for `vigil-train fit`, through the detector's one input path.

Which columns are read is decided here (features, text columns taken as categorical,
entity, time and label columns); what they become is `detector.features.inputs.model_inputs`,
the function the offline scorer and the retrain gate call on a bundle's manifest: numeric
features, categorical codes (vocabularies chosen from the rows), behaviour features derived
over every row in time order. Labelled rows are left out afterwards, so that the behaviour
features of the others saw them, as the detector sees the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from detector.contract.behaviour import BehaviourSpec
from detector.features.inputs import Bounds, InputSpec, Vocabularies, model_inputs
from detector.features.tables import text_columns
from trainer import data
from trainer.config import TrainConfig
from trainer.data import Dataset

__all__ = ["Prepared", "categorical_columns", "fit_dataset", "vocabularies"]


def vocabularies(cfg: TrainConfig) -> Vocabularies:
    """How `cfg` chooses categorical codes."""
    return Vocabularies(cfg.min_count, cfg.vocabulary_max, cfg.hash_buckets)


@dataclass(frozen=True)
class Prepared:
    dataset: Dataset
    notes: list[str] = field(default_factory=list)  # what the user should know (stderr)


def categorical_columns(
    first_file: str,
    given: Sequence[str] | None,
    *,
    skip: Sequence[str | None] = (),
    features: Sequence[str] | None = None,
    sep: str | None = None,
) -> tuple[list[str], str | None]:
    """--categorical as given ('none': none), or the text columns of the first file that
    would otherwise be features; and a note naming the inferred ones."""
    if given is not None:
        return ([] if list(given) == ["none"] else list(given)), None
    text = [c for c in text_columns(first_file, sep) if c not in set(skip)]
    if features:
        text = [c for c in text if c in features]
    if not text:
        return [], None
    note = (
        f"categorical features (text columns): {', '.join(text)}; name them with "
        "--categorical, or --drop them"
    )
    return text, note


def fit_dataset(
    paths: Sequence[str],
    cfg: TrainConfig,
    *,
    features: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    behaviour: BehaviourSpec | None = None,
    time_column: str | None = None,
    label_column: str | None = None,
    bounds: Bounds | None = None,
    sep: str | None = None,
    transpose: bool = False,
    drop_bad_rows: bool = False,
    warmup_ms: int = 0,
) -> Prepared:
    """The training data of `fit`: `categorical` None takes the first file's text columns.
    `warmup_ms`: the rows of the first `warmup_ms` only build behaviour state and are left
    out of training, so that the model learns behaviour features with history behind them,
    as a running detector computes them."""
    if behaviour is not None and not time_column:
        raise ValueError("--behaviour needs --time-column (the event time of each row)")
    if warmup_ms and behaviour is None:
        raise ValueError("--warmup builds behaviour state: it needs --behaviour")
    aside = (
        [*behaviour.entity_fields(), time_column] if behaviour is not None and time_column else []
    )
    cats, note = categorical_columns(
        paths[0],
        categorical,
        skip=[*aside, *(drop or []), cfg.entity_column, label_column],
        features=features,
        sep=sep,
    )
    notes = [note] if note else []
    table, files = data.read(
        paths,
        features=[f for f in features if f not in cats] if features else None,
        drop=[d for d in drop or [] if d not in cats] or None,
        sep=sep,
        transpose=transpose,
        drop_bad_rows=drop_bad_rows,
        entity_column=cfg.entity_column,
        aside=[*aside, *cats, *([label_column] if label_column else [])],
    )
    if table.rows_dropped:
        notes.append(f"dropped {table.rows_dropped} rows with missing, NaN or infinite values")
    spec = InputSpec(
        payload=(*table.names, *cats),
        categorical=dict.fromkeys(cats),
        behaviour=behaviour,
        bounds=bounds,
        entity_column=cfg.entity_column,
        time_column=time_column if behaviour is not None else None,
    )
    inputs = model_inputs(table, spec, vocabularies=vocabularies(cfg))
    if warmup_ms:
        warm = inputs.warmed_up(warmup_ms)
        if not warm.any():
            raise ValueError(f"every row is within the --warmup of {warmup_ms / 86_400_000:g} days")
        notes.append(f"left out {int((~warm).sum())} rows of the warm-up (behaviour history only)")
        inputs = inputs.take(warm)
    ds = Dataset.of(inputs, files)
    if label_column:
        if cfg.window > 1:
            raise ValueError(
                "--label-column leaves rows out, which would join windows across the gaps: "
                "for windowed models, cut labelled stretches out of the files instead"
            )
        ds, left_out = data.without_labelled(ds, label_column)
        notes.append(f"left out {left_out} labelled rows ('{label_column}' not 0)")
    return Prepared(ds, notes)
