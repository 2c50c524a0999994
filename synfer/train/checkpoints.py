"""Crash-safe run folders: checkpoints and classifier folders are written aside and renamed into place.

A checkpoint is ``checkpoints/step-N/``: accelerate's state (model as safetensors; optimizer,
scheduler and RNG states read back with ``torch.load(weights_only=True)``), the EMA weights as
safetensors and the trainer's own state as JSON. Only folders with their final name count.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"


def restore_swapped(run: Path) -> None:
    """Finish a directory swap a crash interrupted (see :func:`replace_dir`)."""
    for old in list(run.glob("*.old")) + list((run / CHECKPOINTS_DIR).glob("*.old")):
        final = old.with_suffix("")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)
    for tmp in list(run.glob("*.tmp")) + list((run / CHECKPOINTS_DIR).glob("*.tmp")):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder ``tmp`` at ``final`` by renames only; the old one goes last."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run: Path) -> Path | None:
    folder = Path(run) / CHECKPOINTS_DIR
    done = [p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_NAME).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_ema(ema, folder: Path) -> None:
    from safetensors.torch import save_file

    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    save_file({str(i): p.detach().to("cpu").contiguous() for i, p in enumerate(shadow)}, str(folder / "ema.safetensors"))
    (folder / "ema.json").write_text(json.dumps(state, sort_keys=True))


def load_ema(ema, folder: Path, device) -> None:
    from safetensors.torch import load_file

    state = json.loads((folder / "ema.json").read_text())
    tensors = load_file(str(folder / "ema.safetensors"))
    state["shadow_params"] = [tensors[str(i)] for i in range(len(tensors))]
    ema.load_state_dict(state)
    ema.to(device)
