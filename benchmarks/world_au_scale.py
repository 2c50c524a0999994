"""The AU attention's weight (``--au-scale``) for a world model, chosen without the judge that measures it.

The AU adapter adds ``au_scale * AU attention`` to each cross-attention layer; it trains at 1, and a
larger weight at sampling strengthens the AUs' pull, for no extra compute. Like
``world_guidance.py``, this sweep chooses on data no row of ``world.py`` is measured on: faces of
generation seed 1, judged by the relabel member (the judge is not loaded before the choice), AUs read
by the annotator detector (the one that annotated the adapter's training faces: a self-consistency
figure, fit for choosing, never reported as faithfulness), FD in the member's feature space against
world 0's val split. The rule, fixed before it ran: the weight with the highest annotator AU F1
whose FD stays inside the weight-1 point's 95% interval. No semantic guidance, so the two levers are
read apart.

With ``--measure``, once the choice is printed, each swept weight is measured the way ``world.py``
measures its "+ AU adapter" row: faces of generation seed 0, the judge, the evaluating AU detector,
world 0's test split, and a synthetic-only classifier per downstream seed. Only then is the judge loaded.

    python benchmarks/world_au_scale.py --work runs/world --model world             # about 15 minutes once world.py ran
    python benchmarks/world_au_scale.py --work runs/world --model world --measure   # about 12 minutes more
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import world  # noqa: E402  (the sibling benchmark: its worlds, classifiers and row helpers)
from world_guidance import SEED, choose, prepare, sweep  # noqa: E402

AU_SCALES = (1.0, 1.5, 2.0, 3.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="runs/world")
    parser.add_argument("--model", default="world", help="model folder or shipped name")
    parser.add_argument("--au-scales", default=",".join(str(s) for s in AU_SCALES), help="must include 1 (the reference point)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure", action="store_true",
                        help="after the choice, measure every swept weight as world.py's adapter row (seed 0, judge, test split)")
    parser.add_argument("--fast", action="store_true", help="world.py's toy sizes: checks the script in minutes; the figures mean nothing")
    args = parser.parse_args(argv)
    scales = [float(s) for s in args.au_scales.split(",")]
    if 1.0 not in scales:
        parser.error("--au-scales must include 1, the weight the adapter trained at")

    import torch

    bench, worlds, model = prepare(args)
    gen = worlds["gen"]
    member = world.train_member(bench, gen)
    annotator = world.train_au_annotator(bench, gen)

    found = sweep(bench, model, gen, member, annotator, "au_scale", [(s, {"au_scale": s}) for s in scales],
                  lambda scale: f"au-scale-{scale:g}", folder="au-scale-sweep")
    chosen, (low, high) = choose(found, next(p for p in found if p["au_scale"] == 1.0), "au_f1")
    world.emit({"chosen": chosen and chosen["au_scale"], "reference_fd_interval": [low, high], "seed": SEED,
                "judged_by": "member", "aus_read_by": "annotator", "torch": torch.__version__})
    if args.measure:
        measure(bench, worlds, model, scales)
    return 0


def measure(bench, worlds: dict[str, Path], model: Path, scales: list[float]) -> None:
    """Each weight's adapter row, measured as ``world.py`` measures it; one ``{"measured": ...}`` line per weight."""
    gen = worlds["gen"]
    judge = world.train_judge(bench, worlds["judge"])
    evaluator = world.train_au_evaluator(bench, worlds["judge"])
    for scale in scales:
        name = f"au-scale-{scale:g}"
        dataset = world.generate_row(bench, name, model, folder="au-scale-rows", au_scale=scale)
        found = world.evaluate_row(bench, name, dataset, gen, judge, evaluator, folder="au-scale-rows-eval")
        figures = found["figures"]
        world.emit({"measured": scale, "judge_accuracy": figures.get("judge/accuracy"), "au_f1": figures.get("au/macro_f1"),
                    "fd": figures.get("fd/classifier"), "fd_interval": found["intervals"].get("fd/classifier"),
                    "kid": figures.get("kid/classifier"), "downstream": world.downstream(bench, name, gen, synthetic=dataset)})


if __name__ == "__main__":
    sys.exit(main())
