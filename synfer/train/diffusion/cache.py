"""``--cache-latents``: VAE moments and text embeddings computed once, kept as safetensors shards.

```
CACHE/latents-<encoder key>/<shard>.safetensors    key -> [2C, h, w]: the VAE posterior's mean and log-variance
CACHE/text-<encoder key>/<shard>.safetensors       key -> [tokens, width]: the frozen text encoder's output
```

The encoder key is a hash of what makes an entry: the VAE's (text encoder's and tokenizer's) weight
hash, the resolution and the preprocessing version. An image's key is a hash of the dataset's content
fingerprint, its id, the resolution and whether it is mirrored (with ``--random-flip`` both versions
are cached, so a flipped example reads the moments of the flipped image, not a flipped latent); a
caption's key is the hash of its text. Another run, another stage or another process on the same
data and encoders finds the shards and encodes nothing. The moments rather than one sample are
kept, so each step still draws a fresh latent from the posterior, with the step's own generator,
exactly as without the cache. A shard is written under a temporary name and renamed; its name is a
hash of its keys, so processes that encode different images never collide.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ...data.format import atomic_path

CACHE_FORMAT = "synfer-diffusion-cache"
CACHE_VERSION = 1
PREPROCESSING = "shorter-side-bicubic-centre-crop-v1"
SHARD_ENTRIES = 1024
CACHE_ENV = "SYNFER_CACHE"


def default_cache_dir() -> Path:
    """``$SYNFER_CACHE/diffusion``, else ``~/.cache/synfer/diffusion`` (beside the evaluation's feature cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "diffusion"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "synfer" / "diffusion"


def encoder_key(**parts) -> str:
    return hashlib.sha256(json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True).encode()).hexdigest()


class TensorCache:
    """One encoder's entries: a folder of safetensors shards mapping keys to tensors.

    Reading is lazy (each shard is memory-mapped on first use), and handles are not carried into
    DataLoader worker processes: each opens its own.
    """

    def __init__(self, root: str | os.PathLike, kind: str, key: str):
        self.kind = kind
        self.key = key
        self.folder = Path(root) / f"{kind}-{key[:16]}"
        self._index: dict[str, Path] | None = None
        self._handles: dict[Path, object] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def index(self) -> dict[str, Path]:
        """Every cached key and its shard (read from the shards' headers)."""
        if self._index is None:
            from safetensors import safe_open

            index: dict[str, Path] = {}
            for shard in sorted(self.folder.glob("*.safetensors")):
                with safe_open(str(shard), framework="pt") as handle:
                    metadata = handle.metadata() or {}
                    if metadata.get("format") != CACHE_FORMAT or metadata.get("encoder") != self.key:
                        continue  # another encoder's shard (a 16-hex-digit prefix collision) or a foreign file
                    for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                        index[name] = shard
            self._index = index
        return self._index

    def refresh(self) -> None:
        self._index = None
        self._handles = {}

    def missing(self, keys: Iterable[str]) -> list[str]:
        known = self.index()
        return sorted({k for k in keys if k not in known})

    def __len__(self) -> int:
        return len(self.index())

    def write(self, entries: dict[str, torch.Tensor]) -> Path:
        """One new shard holding ``entries``."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:20]
        path = self.folder / f"{name}.safetensors"
        tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in entries.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": CACHE_FORMAT, "version": str(CACHE_VERSION), "encoder": self.key,
                                                   "kind": self.kind})
        if self._index is not None:
            self._index.update(dict.fromkeys(entries, path))
        return path

    def get(self, key: str) -> torch.Tensor:
        shard = self.index().get(key)
        if shard is None:
            raise KeyError(f"{key} is not in the {self.kind} cache {self.folder}")
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open

            handle = self._handles[shard] = safe_open(str(shard), framework="pt")
        return handle.get_tensor(key)


def fill(cache: TensorCache, keys: list[str], encode: Callable[[list[str]], torch.Tensor], batch_size: int,
         advance: Callable[[int], None] | None = None) -> int:
    """Encode the ``keys`` the cache lacks (``encode(keys) -> [B, ...]``), in shards; returns how many were encoded."""
    todo = cache.missing(keys)
    pending: dict[str, torch.Tensor] = {}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        with torch.no_grad():
            values = encode(chunk)
        pending.update(zip(chunk, values))
        if advance is not None:
            advance(len(chunk))
        if len(pending) >= SHARD_ENTRIES:
            cache.write(pending)
            pending = {}
    if pending:
        cache.write(pending)
    return len(todo)
