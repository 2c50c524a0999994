"""Checkpoints of training runs; like classifier folders, they are written aside and renamed into place
(:func:`synfer.data.run_folder.replace_dir`).

A checkpoint is ``checkpoints/step-N/``: accelerate's state (model as safetensors; optimizer,
scheduler and RNG states read back with ``torch.load(weights_only=True)``), the EMA weights as
safetensors and the trainer's own state as JSON. Only folders with their final name count.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..data.format import write_json
from ..data.run_folder import replace_dir

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"


def latest_checkpoint(run: Path) -> Path | None:
    folder = Path(run) / CHECKPOINTS_DIR
    done = [p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_NAME).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def write_checkpoint(accelerator, final: Path, state: dict, ema=None, *, main: bool) -> None:
    """Every process's part of checkpoint ``final``, written aside and renamed into place by the main one.

    accelerate's state (all processes), then on ``main`` the EMA weights and the trainer's ``state`` as
    JSON; ``final`` appears only complete. Pruning old checkpoints is the caller's (names differ by loop).
    """
    tmp = final.with_name(final.name + ".tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if main:
        if ema is not None:
            save_ema(ema, tmp)
        write_json(tmp / STATE_NAME, state)
        replace_dir(tmp, final)


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
