"""Semantic guidance's step size for a world model, chosen without the judge that measures it.

``benchmarks/world.py``'s "+ semantic guidance" row needs a step size. Choosing it by that row's
figure would tune the method to the instrument that measures it, so this sweep chooses on other data
with another classifier:

- the faces are generated with seed 1 (the rows use seed 0), so no face of a row helped choose;
- the relabel member (resnet-small, world 0, seed 2) judges them; the judge (world 1) is never loaded;
- FD is taken in the member's feature space against world 0's val split (the rows are measured
  against its test split).

The choice is the step size with the highest member accuracy whose FD stays inside the unguided
sweep point's 95% interval: guidance that moves faces off the real distribution is not bought. The
guide and the member are world.py's own (same work folder, reused when world.py trained them).
Prints one JSON line per point and a last ``{"chosen": ...}`` line.

    python benchmarks/world_guidance.py --work runs/world --model world    # 10 to 20 minutes once world.py ran
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import world  # noqa: E402  (the sibling benchmark: its worlds, classifiers and row helpers)

STEP_SIZES = (0.1, 0.5, 1.0, 2.0, 4.0)
SEED = 1  # world.py's rows use generation seed 0


def sweep(bench, model: Path, gen: Path, member: Path, detector: Path | None, key: str, points, name, folder: str) -> list[dict]:
    """Generate and measure each ``(value, generate options)`` point on seed-1 faces against world 0's val split.

    The member judges and ``detector`` (when given) reads the AUs; ``name(value)`` names each point's folder
    under ``folder`` (its evaluation under ``folder-eval``). Each point's figures come back, and are printed,
    with its value under ``key``.
    """
    found = []
    for value, options in points:
        label = name(value)
        dataset = world.generate_row(bench, label, model, seed=SEED, folder=folder, **options)
        result = world.evaluate_row(bench, label, dataset, gen, member, detector, split="val", folder=f"{folder}-eval")
        figures = {"member_accuracy": result["figures"].get("judge/accuracy"), "fd": result["figures"].get("fd/classifier"),
                   "fd_interval": result["intervals"].get("fd/classifier"),
                   "images_per_second": bench.figures.get("images_per_second", {}).get(label)}
        if detector is not None:
            figures["au_f1"] = result["figures"].get("au/macro_f1")
        found.append({key: value, "point": label, **figures})
        world.emit(found[-1])
    return found


def choose(points: list[dict], reference: dict, key: str) -> tuple[dict | None, tuple]:
    """The point with the highest ``key`` whose FD lies inside ``reference``'s 95% interval, and that interval."""
    low, high = reference["fd_interval"] or (None, None)
    allowed = [p for p in points if low is not None and low <= p["fd"] <= high]
    return max(allowed, key=lambda p: p[key], default=None), (low, high)


def prepare(args) -> tuple[world.Bench, dict[str, Path], Path]:
    """The bench in ``--work`` at ``--fast``'s sizes, ``world.py``'s worlds (``"gen"``: world 0) and the ``--model`` folder."""
    import torch

    from synfer.assets import resolve_model

    torch.set_num_threads(args.threads)
    bench = world.Bench(Path(args.work), world.FAST if args.fast else world.Sizes(), args.threads)
    bench.work.mkdir(parents=True, exist_ok=True)
    worlds = world.make_worlds(bench)
    world.write_prompts(bench, worlds["gen-identity"])
    return bench, worlds, Path(resolve_model(args.model))


def main(argv=None) -> int:
    from synfer import GenerateConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="runs/world")
    parser.add_argument("--model", default="world", help="model folder or shipped name")
    parser.add_argument("--step-sizes", default=",".join(str(s) for s in STEP_SIZES))
    parser.add_argument("--window", default=GenerateConfig.sg_window, help="the guided part of the schedule (--sg-window)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fast", action="store_true", help="world.py's toy sizes: checks the script in minutes; the figures mean nothing")
    args = parser.parse_args(argv)

    import torch

    bench, worlds, model = prepare(args)
    gen = worlds["gen"]
    guide = world.train_guide(bench, gen)
    member = world.train_member(bench, gen)

    points = [(0.0, {})] + [(float(size), {"guidance_model": str(guide), "sg_step_size": float(size), "sg_window": args.window})
                            for size in args.step_sizes.split(",")]
    found = sweep(bench, model, gen, member, None, "step_size", points,
                  lambda size: f"step-{size:g}" + ("-window-" + args.window.replace(":", "-") if size else ""), folder="guidance-sweep")
    chosen, (low, high) = choose(found[1:], found[0], "member_accuracy")
    world.emit({"chosen": chosen and chosen["step_size"], "window": args.window, "unguided_fd_interval": [low, high],
                "seed": SEED, "judged_by": "member", "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
