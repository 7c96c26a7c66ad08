"""A model registry on a file system: `<registry>/<name>/<version>/` bundles and a
`CURRENT` pointer per model name, replaced atomically (write a temporary file, rename).

    registry/
      pumps/
        CURRENT                      "20261125T114546Z-98f37090\n"
        history.jsonl                one line per publish or rollback
        20261124T090000Z-1a2b3c4d/   a bundle
        20261125T114546Z-98f37090/   a bundle

Bundles are copied in atomically too (into a hidden temporary directory, then renamed),
so a detector following CURRENT never sees a half-written bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from detector.contract.bundle import MANIFEST_FILE, Bundle, load_bundle
from detector.errors import BundleError

__all__ = [
    "CURRENT_FILE",
    "Entry",
    "current_path",
    "is_model_dir",
    "list_versions",
    "publish",
    "read_current",
    "resolve",
    "rollback",
    "set_current",
]

CURRENT_FILE = "CURRENT"
HISTORY_FILE = "history.jsonl"


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    path: Path
    live: bool
    created_at: str
    threshold: float
    validation: dict[str, float]


def is_model_dir(path: Path) -> bool:
    return (path / CURRENT_FILE).is_file()


def read_current(model_dir: Path) -> str:
    try:
        version = (model_dir / CURRENT_FILE).read_text().strip()
    except OSError as e:
        raise BundleError(f"{model_dir}: cannot read {CURRENT_FILE}: {e}") from e
    if not version or "/" in version or version.startswith("."):
        raise BundleError(f"{model_dir}/{CURRENT_FILE}: {version!r} is not a version name")
    return version


def current_path(model_dir: Path) -> Path:
    return model_dir / read_current(model_dir)


def resolve(path: str | os.PathLike[str]) -> Path:
    """A bundle directory as given, or the current bundle of a registry model directory."""
    p = Path(path)
    if (p / MANIFEST_FILE).is_file():
        return p
    if is_model_dir(p):
        return current_path(p)
    raise BundleError(f"{p}: neither a bundle nor a registry model directory (with {CURRENT_FILE})")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    # mkstemp makes 0600 files: detectors often run as another user than the publisher.
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    Path(tmp).replace(path)


def _log(model_dir: Path, action: str, version: str) -> None:
    with (model_dir / HISTORY_FILE).open("a") as f:
        f.write(
            json.dumps(
                {
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "action": action,
                    "version": version,
                }
            )
            + "\n"
        )


def set_current(model_dir: Path, version: str, action: str = "publish") -> None:
    if not (model_dir / version / MANIFEST_FILE).is_file():
        raise BundleError(f"{model_dir}: version {version} is not in the registry")
    _write_atomic(model_dir / CURRENT_FILE, version + "\n")
    _log(model_dir, action, version)


def publish(
    bundle_dir: str | os.PathLike[str], registry: str | os.PathLike[str], make_current: bool = True
) -> Bundle:
    """Copy a verified bundle into the registry and (by default) make it current."""
    bundle = load_bundle(bundle_dir)
    from detector.model.scorer import Scorer

    Scorer(bundle, provider="cpu")  # refuse what a detector would refuse, before it is live
    m = bundle.manifest
    model_dir = Path(registry) / m.name
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / m.version
    if target.exists():
        existing = load_bundle(target)
        if existing.manifest.model_sha256 != m.model_sha256:
            raise BundleError(f"{target} exists with a different model; versions are immutable")
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{m.version}.", dir=model_dir))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide it from the detectors
        for f in Path(bundle_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        tmp.rename(target)
    if make_current:
        set_current(model_dir, m.version)
    return load_bundle(target)


def list_versions(registry: str | os.PathLike[str]) -> list[Entry]:
    out = []
    for model_dir in sorted(
        p for p in Path(registry).iterdir() if p.is_dir() and not p.name.startswith(".")
    ):
        live = read_current(model_dir) if is_model_dir(model_dir) else None
        for v in sorted(
            p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            try:
                m = load_bundle(v).manifest
            except BundleError:
                continue  # listed by `models --all` in a later version; never served
            out.append(
                Entry(
                    m.name,
                    m.version,
                    v,
                    m.version == live,
                    m.created_at.isoformat(),
                    m.threshold.value,
                    dict(m.validation),
                )
            )
    return out


def rollback(model_dir: str | os.PathLike[str], to: str | None = None) -> str:
    """Make `to` current, or else the newest version older than the live one (versions
    start with their UTC creation time, so they sort by age)."""
    d = Path(model_dir)
    live = read_current(d)
    if to is None:
        older = sorted(
            p.name
            for p in d.iterdir()
            if p.is_dir()
            and not p.name.startswith(".")
            and p.name < live
            and (p / MANIFEST_FILE).is_file()
        )
        if not older:
            raise BundleError(f"{d}: no version older than {live} to roll back to")
        to = older[-1]
    load_bundle(d / to)
    set_current(d, to, action="rollback")
    return to
