"""Checkpoints of training runs; like classifier folders, they are written aside and renamed into place
(:func:`synfer.data.run_folder.replace_dir`).

A checkpoint is ``checkpoints/step-N/``: accelerate's state (model as safetensors; optimizer,
scheduler and RNG states read back with ``torch.load(weights_only=True)``), the EMA weights as
safetensors and the trainer's own state as JSON. Only folders with their final name count.
"""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"


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
