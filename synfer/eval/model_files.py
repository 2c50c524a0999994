"""Where evaluate's models come from: local paths only, every weight file hashed into the report.

An evaluation is only comparable with another when both used the same weights, so each model evaluate
loads (feature backbone, judge, AU detector) is named by a local path and the SHA-256 of each of its
files is recorded. Hub ids are refused: a hub id names whatever the hub serves today, not a fixed set of
weights, and evaluate never downloads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import ModelLoadError

HASH_BLOCK = 8 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".onnx", ".bin")
CONFIG_NAMES = ("config.json", "preprocessor_config.json")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def local_model_path(path: str, what: str, expect: str = "a folder or file") -> Path:
    """``path`` as an existing local path; a one-line error for a hub id or a path that is not there."""
    from ..pipelines.loading import is_hub_id

    local = Path(path).expanduser()
    if local.exists():
        return local
    if is_hub_id(str(path)):
        raise ModelLoadError(
            f"{what} {path!r} looks like a model hub id; evaluate reads weights from local paths only "
            f"(download it once, e.g. with `hf download {path} --local-dir DIR`, and give DIR)"
        )
    raise ModelLoadError(f"{what} {str(path)!r} does not exist (give {expect} on this machine)")


def model_files(path: Path) -> dict[str, str]:
    """SHA-256 of each weight and config file of a model: the file itself, or a folder's top-level ones."""
    path = Path(path)
    if path.is_file():
        return {path.name: file_sha256(path)}
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_NAMES))
    return {p.name: file_sha256(p) for p in files}
