"""Sampling schedulers by name (``synfer generate --scheduler``), each built from the model's own config.

``model`` keeps the scheduler the model folder ships (SD1.5: PNDM); ``ddim`` is DDIM; ``dpm-solver++``
is the second-order multistep DPM-Solver++ (Lu et al. 2022), which reaches DDIM-50's quality in far
fewer steps. Layout initialisation inverts with either one's own inverse scheduler. All share the
model's noise schedule (betas, timestep spacing, prediction type), so semantic guidance's x0 estimate
stays valid.
"""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry

MODEL_SCHEDULER = "model"


def _ddim(config):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config)


def _dpm_solver_pp(config):
    from diffusers import DPMSolverMultistepScheduler

    # from_config drops the values the source scheduler left at its own defaults, and DPM-Solver's
    # default spacing differs from DDIM's: keep the model's timesteps, which layout inversion retraces.
    spacing = {key: config[key] for key in ("timestep_spacing", "steps_offset") if key in config}
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2, **spacing)


# --scheduler NAME -> a factory from the model scheduler's config (None: keep the model's own).
SCHEDULERS: Registry[Callable | None] = Registry("scheduler")
SCHEDULERS.register(MODEL_SCHEDULER, None)
SCHEDULERS.register("ddim", _ddim)
SCHEDULERS.register("dpm-solver++", _dpm_solver_pp)


def use_scheduler(pipe, name: str) -> str:
    """Make ``pipe`` sample with the scheduler ``name``; returns the class name it now samples with."""
    factory = SCHEDULERS[name]
    if factory is not None:
        pipe.scheduler = factory(pipe.scheduler.config)
    return type(pipe.scheduler).__name__
