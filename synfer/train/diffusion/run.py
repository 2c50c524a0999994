"""Training run folders of the diffusion stages (docs/formats.md, "Diffusion training runs").

```
RUN/
  training_config.json    the record: stage, options, what went in (hashes, data fingerprint), resolved settings
  metrics.jsonl           one JSON object per logged step and per validation
  validation/step-N.png   validation grids
  checkpoints/checkpoint-N/  accelerate state with the trainable weights only, EMA, trainer_state.json
  logs/                   trackers (--report-to tensorboard)
  ...                     the stage's outputs (LoRA weights, unet/, au_adapter/, vae/, model/, pipeline/)
  result.json             written last: a run with it is finished
```

``--resume`` compares the stored record with the new one field by field (:class:`~synfer.data.run_folder.ResumeRules`):
every option counts except those that decide nothing about the weights (where to log, how often to
checkpoint or validate, the cache), and so do the inputs' hashes and the resolved settings (mixed
precision, resolution, process count). A refusal names the differing fields.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ... import __version__
from ...data.format import write_json
from ...data.run_folder import ResumeRules, RunFolder, RunStatus
from ...errors import ConfigError
from .config import TrainOptions

RECORD_NAME = "training_config.json"
RESULT_NAME = "result.json"
RUN_FORMAT = "synfer-training-run"
RUN_VERSION = 1


def run_rules() -> ResumeRules:
    return ResumeRules(
        compare=("stage", "config", "inputs", "resolved"),
        ignore=frozenset(f"config.{name}" for name in TrainOptions.RESUMABLE),
    )


def run_folder(out: str | Path) -> RunFolder:
    return RunFolder(out, RECORD_NAME, "training run")


def check_out(options: TrainOptions) -> RunFolder:
    """Cheap checks before anything loads: an existing run needs --resume; a foreign non-empty folder is refused.

    Under ``accelerate launch`` only the main process looks (the others would race with its writes) and
    the others wait for it.
    """
    from accelerate import PartialState

    state = PartialState(cpu=options.cpu)
    folder = run_folder(options.out)
    if state.is_main_process:
        _check_out(options, folder)
    state.wait_for_everyone()
    return folder


def speaks(options: TrainOptions) -> bool:
    """Whether this process shows progress (the first on each machine, under accelerate launch)."""
    from accelerate import PartialState

    return PartialState(cpu=options.cpu).is_local_main_process


def _check_out(options: TrainOptions, folder: RunFolder) -> None:
    if folder.has_record():
        if not options.resume:
            raise ConfigError(f"{options.out} already holds a training run; pass --resume to continue it, or choose another --out")
        return
    if not folder.is_empty():
        raise ConfigError(f"--out {options.out} exists, is not empty and is not a synfer training run; choose a new folder")
    folder.check_writable()
    return folder


def make_record(stage: str, options: TrainOptions, inputs: dict, resolved: dict) -> dict:
    return {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "stage": stage,
        "synfer_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": options.to_dict(),
        "inputs": inputs,
        "resolved": resolved,
    }


def open_run(options: TrainOptions, record: dict, *, main: bool) -> RunStatus:
    """Start the run folder or check that ``--resume`` continues the same run (refused with the differing fields named).

    Only the main process reads and writes the record; the others take it as given (they wait for the main one).
    """
    if not main:
        return RunStatus("new", record)
    folder = run_folder(options.out)
    if folder.has_record():
        stored = folder.read_record()
        if stored.get("stage") != record["stage"]:
            raise ConfigError(f"{options.out} holds a {stored.get('stage')} run, not a {record['stage']} run; choose another --out")
    hint = "an exact --resume needs the same options and inputs; start a new --out for other ones"
    return folder.open(record, run_rules(), resume=bool(options.resume), hint=hint)


def finished_result(options: TrainOptions, stage: str) -> dict | None:
    """On ``--resume``, the result of a run that already finished, when its options are these (else a refusal naming them)."""
    if not options.resume:
        return None
    result = read_result(options.out)
    if result is None:
        return None
    folder = run_folder(options.out)
    stored = folder.read_record()
    new = {"stage": stage, "config": options.to_dict()}
    changes = ResumeRules(compare=("stage", "config"), ignore=run_rules().ignore).changes({k: stored.get(k) for k in new}, new)
    if changes:
        raise folder.refusal(changes, "it is finished; start a new --out for other options")
    return result


def read_result(out: str | Path) -> dict | None:
    path = Path(out) / RESULT_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def write_result(out: str | Path, result: dict) -> None:
    write_json(Path(out) / RESULT_NAME, result)
