"""Hot-swap: follow a registry's CURRENT pointer (and SIGHUP), verify candidates off the
hot path, hand verified ones to the loop, which swaps between two batches.

A candidate is verified as a detector would serve it: manifest schema, sha256, ONNX
signature and golden sample (`Scorer`), then compatibility with the input mapping and
with recent live traffic. A refused version is remembered and never retried in a loop;
the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detector.contract.bundle import Bundle, load_bundle
from detector.errors import BundleError, ConfigError
from detector.features.decode import Mapping, decode_batch
from detector.model.registry import is_model_dir, read_current
from detector.model.scorer import Provider, Scorer
from detector.ops.settings import Settings

__all__ = ["ModelWatcher", "check_compatible", "mapping_for", "mapping_with", "model_fields"]

log = logging.getLogger(__name__)


def model_fields(bundle: Bundle) -> dict[str, Any]:
    """What a payload mapping takes from the model: its payload features, entity fields,
    bounds and categorical encoders."""
    b = bundle.manifest.behaviour
    return {
        "features": tuple(bundle.manifest.payload_features),
        "entities": tuple(b.entity_fields()) if b is not None else (),
        "bounds": bundle.manifest.payload_bounds(),
        "categorical": bundle.encoders,
    }


def mapping_with(mapping: Mapping, bundle: Bundle) -> Mapping:
    """The same payload mapping, for another model's features."""
    from dataclasses import replace

    return replace(mapping, **model_fields(bundle))


def mapping_for(settings: Settings, bundle: Bundle) -> Mapping:
    """Where `bundle`'s features, key and time are in a message, per the payload settings."""
    p = settings.payload
    return Mapping(
        **model_fields(bundle),
        features_at=p.features_at,
        features_field=p.features_field,
        key_field=p.key_field if p.key_from == "field" else None,
        time_field=p.time_field if p.time_from == "field" else None,
        max_bytes=p.max_bytes,
    )


def check_compatible(live: Mapping, candidate: Bundle, recent: list[bytes | None]) -> None:
    """Raise BundleError unless the candidate can read what the live model reads."""
    if live.features_at == "array" and tuple(candidate.features) != live.features:
        raise BundleError(
            f"features {candidate.features[:5]}… differ from the live model's; with "
            "payload.features_at='array' the positions would be misread"
        )
    if not recent:
        if set(candidate.features) != set(live.features):
            raise BundleError(
                "features differ from the live model's and there is no recent traffic to check them on"
            )
        return
    mine = decode_batch(recent, live)
    theirs = decode_batch(recent, mapping_with(live, candidate))
    lost = len(theirs.rejects) - len(mine.rejects)
    if lost > 0:
        reasons = sorted({r.reason for r in theirs.rejects})
        raise BundleError(
            f"{lost} of {len(recent)} recent messages that the live model scores would be "
            f"rejected ({', '.join(reasons)}): its features do not match the stream"
        )


class ModelWatcher:
    """Watches `model.path`: a registry model directory is polled every `interval_s` for
    a new CURRENT version; a plain bundle directory is looked at again on SIGHUP only.
    `take()` hands a verified Scorer to the loop, once."""

    def __init__(
        self,
        model_path: Path,
        live: Scorer,
        mapping: Mapping,
        provider: Provider,
        threads: int | None,
        interval_s: float,
        on_result: Callable[[str, str, str], None],  # (result, version, reason)
        spinning: bool = False,
    ):
        self.model_path, self.mapping = model_path, mapping
        self.registry = is_model_dir(model_path)
        self.provider, self.threads, self.interval_s = provider, threads, interval_s
        self.spinning = spinning
        self.on_result = on_result
        self.live_version = live.bundle.manifest.version
        self.refused: set[str] = set()
        self.recent: list[bytes | None] = []
        self._ready: Scorer | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vigil-model-watcher", daemon=True)

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def request_reload(self) -> None:
        """SIGHUP: look now, and give a refused version another chance (it may be fixed)."""
        self.refused.clear()
        self._wake.set()

    def observe(self, values: list[bytes | None]) -> None:
        """Keep a small sample of live traffic for compatibility checks."""
        self.recent = values[-200:]

    def take(self) -> Scorer | None:
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            self.live_version = ready.bundle.manifest.version
            self.mapping = mapping_with(self.mapping, ready.bundle)
        return ready

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("model watcher: unexpected error")
            self._wake.wait(self.interval_s if self.registry else None)
            self._wake.clear()

    def _candidate(self) -> tuple[str, Path] | None:
        if self.registry:
            try:
                version = read_current(self.model_path)
            except BundleError as e:
                log.warning("registry pointer unreadable: %s", e)
                return None
            return version, self.model_path / version
        try:
            return load_bundle(self.model_path).manifest.version, self.model_path
        except BundleError as e:
            return f"unreadable:{e}", self.model_path

    def poll_once(self) -> None:
        found = self._candidate()
        if found is None:
            return
        version, path = found
        with self._lock:
            pending = self._ready.bundle.manifest.version if self._ready else None
        if version in (self.live_version, pending) or version in self.refused:
            return
        try:
            bundle = load_bundle(path)
            check_compatible(self.mapping, bundle, list(self.recent))
            scorer = Scorer(bundle, self.provider, self.threads, self.spinning)
        except (BundleError, ConfigError) as e:
            self.refused.add(version)
            log.error("model %s refused; %s keeps serving: %s", version, self.live_version, e)
            self.on_result("failed", version, str(e))
            return
        with self._lock:
            self._ready = scorer
        log.info("model %s verified; swapping in at the next batch boundary", version)
        self.on_result("ok", version, "")
