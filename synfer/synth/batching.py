"""``--batch-size auto``: the batch size of the sampling loop, found while making real samples.

On CUDA the search runs on the dataset's own batches: it starts at 1 and doubles while a batch fits,
and when one runs out of memory it frees the memory, bisects between the largest batch that fitted
and the smallest that did not, and makes the same samples again at the smaller size. No sample is
made for nothing but the few that ran out of memory, and none is skipped. An out-of-memory error
later on (fragmentation, a larger peak) shrinks the size again the same way.

Elsewhere (CPU, MPS) running out of memory kills the process instead of raising, so no trial is
made: the batch is the largest up to :data:`CPU_AUTO_LIMIT` whose estimated peak memory fits in half
the memory available (:func:`cpu_batch_size`).

The size never changes a sample: every sample has its own generator and plan. Batched matrix
products may round differently at different batch sizes, as with any fixed ``--batch-size``.
This module is light (no torch at import), so the command line can check ``--batch-size``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from ..errors import ConfigError, DatasetError

AUTO = "auto"
AUTO_LIMIT = 64  # beyond this a GPU's throughput per image no longer grows
# On a CPU a batch gains little per image beyond a few images (SD1.5 shapes at 256 px, one CFG step:
# 1.20x at 2 images, 1.33x at 4; decoding flat; docs/performance.md), while memory grows with it.
CPU_AUTO_LIMIT = 8
# Estimated peak bytes per output pixel of one image (float32): the VAE decoder's widest activations
# (128 channels at full resolution, about four alive at once); backpropagating through the decoder
# (semantic guidance with --sg-decoder vae) keeps about eight times as many.
_BYTES_PER_PIXEL = 128 * 4 * 4
_GUIDED_FACTOR = 8


def parse_batch_size(value: int | str) -> int | str:
    """``8`` / ``"8"`` -> 8, ``"auto"`` -> ``"auto"``; anything else is an error."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if not text.isdigit():
            raise ConfigError(f"--batch-size must be a whole number >= 1 or auto, got {value!r}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--batch-size must be a whole number >= 1 or auto, got {value!r}")
    return value


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages, else None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def cpu_batch_size(height: int, width: int, guided_decoder: bool, limit: int, available: int | None = None) -> int:
    """The CPU rule: the largest batch up to ``limit`` whose estimated peak fits in half of ``available`` bytes."""
    available = available_memory_bytes() if available is None else available
    limit = max(1, min(limit, CPU_AUTO_LIMIT))
    if available is None:
        return min(limit, 4)
    per_image = height * width * _BYTES_PER_PIXEL * (_GUIDED_FACTOR if guided_decoder else 1)
    return max(1, min(limit, available // 2 // per_image))


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


def free_device_memory() -> None:
    """Return the memory an out-of-memory batch left behind (call it after leaving the ``except`` block)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class BatchSizer:
    """The batch size for the next batch: fixed, or (``adaptive``) searched for as the loop runs.

    The caller asks :attr:`size`, runs a batch of at most that many samples, and reports :meth:`fitted`
    or :meth:`out_of_memory` with the number it ran.
    """

    def __init__(self, size: int, limit: int, adaptive: bool = False, log: Callable[[str], None] | None = None):
        self.limit = max(1, int(limit))
        self.adaptive = adaptive
        self.size = max(1, min(int(size), self.limit)) if adaptive else max(1, int(size))
        self.fits = 0  # the largest batch known to fit
        self.fails: int | None = None  # the smallest batch known not to
        self._log = log
        self._announced = False

    @classmethod
    def for_run(cls, batch_size: int | str, device, limit: int, height: int, width: int, guided_decoder: bool,
                log: Callable[[str], None] | None = None) -> BatchSizer:
        """A fixed sizer for a number; for ``auto``, the CUDA search or the CPU rule (see the module docstring)."""
        if batch_size != AUTO:
            return cls(int(batch_size), limit)
        if getattr(device, "type", str(device)) == "cuda":
            return cls(1, min(limit, AUTO_LIMIT), adaptive=True, log=log)
        size = cpu_batch_size(height, width, guided_decoder, limit)
        if log is not None:
            log(f"--batch-size auto: {size} on {getattr(device, 'type', device)} (estimated from the image size and free memory)")
        return cls(size, limit)

    @property
    def settled(self) -> bool:
        if not self.adaptive:
            return True
        upper = self.limit if self.fails is None else self.fails - 1
        return self.fits >= 1 and self.size == self.fits and upper - self.fits <= max(0, self.fits // 4)

    def fitted(self, n: int) -> None:
        """A batch of ``n`` samples ran."""
        if not self.adaptive:
            return
        self.fits = max(self.fits, n)
        if n < self.size:  # a shard's short last batch says nothing about larger ones
            return
        upper = self.limit if self.fails is None else self.fails - 1
        if upper - self.fits <= max(0, self.fits // 4):
            self.size = self.fits
        elif self.fails is None:
            self.size = min(2 * self.fits, self.limit)
        else:
            self.size = (self.fits + self.fails) // 2
        if self.settled and not self._announced and self._log is not None:
            self._log(f"--batch-size auto: {self.size} (the largest batch found to fit, up to {self.limit})")
            self._announced = True

    def out_of_memory(self, n: int) -> None:
        """A batch of ``n`` samples ran out of memory; it is to be run again at :attr:`size`."""
        if not self.adaptive:
            raise AssertionError("a fixed batch size does not recover from running out of memory")
        if n <= 1:
            raise DatasetError("out of device memory with a batch of one image; use a smaller --height/--width or another device")
        self.fails = n if self.fails is None else min(self.fails, n)
        if self.fits >= n:  # it fitted before and not now: search below again
            self.fits = 0
        self.size = max(1, (self.fits + self.fails) // 2) if self.fits else max(1, n // 2)
        self._announced = False
