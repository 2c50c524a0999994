"""Relabelling throughput, and what FERAnno costs per image against a plain classifier forward.

On the tiny preset, in one process and one run:

- ``labeler`` lines: seconds per image of each labeler's ``predict`` on the same batch (FERAnno: VAE
  encode + one UNet pass with recording + head; classifiers: one forward), runs interleaved, medians
  kept. The baselines are the tiny test classifier and a ResNet-18 at 224 px (random weights), the
  size of a real ensemble member.
- ``relabel`` lines: ``relabel_dataset`` images/s over a generated tiny dataset with the ensemble
  FERAnno + classifier, against the classifier alone.
- with ``--sd15``: FERAnno images/s with the Stable Diffusion 1.5 architecture (random weights) at
  512 px on ``--device``, against a bare pass of the same UNet (no VAE, recording or head).

Prints JSON lines; the last ``ratio`` line holds the ratios.

    python benchmarks/bench_relabel.py [--n 64] [--batch 16] [--repeats 5] [--threads 1] [--sd15 --device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def quiet() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    import logging

    logging.getLogger("synfer").setLevel(logging.ERROR)


def make_dataset(root: Path, n: int, shard_size: int) -> Path:
    from synfer import GenerateConfig, generate

    out = root / "data"
    generate(GenerateConfig(str(out), model="tiny", n=n, steps=2, shard_size=shard_size, batch_size=16, device="cpu"))
    return out


def build_labelers(root: Path):
    from synfer.labelers.base import load_labeler
    from synfer.labelers.feranno import FERAnno, FERAnnoFeatureExtractor, FERAnnoHead
    from synfer.models.classifier import create_classifier
    from synfer.pipelines.loading import tiny_pipeline

    torch.manual_seed(0)
    extractor = FERAnnoFeatureExtractor(tiny_pipeline(0), model={"name": "tiny", "adapter": None, "seed": 0})
    FERAnnoHead.for_extractor(extractor, "affectnet8").save_pretrained(root / "feranno")
    create_classifier("tiny-resnet").save_pretrained(root / "tiny-resnet")
    create_classifier("resnet18").save_pretrained(root / "resnet18")
    return {
        "feranno": FERAnno.from_pretrained(root / "feranno", device="cpu"),
        "tiny-resnet": load_labeler(f"classifier:{root / 'tiny-resnet'}"),
        "resnet18": load_labeler(f"classifier:{root / 'resnet18'}"),
    }


def interleaved(functions: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, runs interleaved so that machine load hits all alike."""
    for function in functions.values():
        function()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_labelers(labelers: dict, batch: int, repeats: int) -> dict[str, float]:
    from synfer.labelers.base import LabelBatch

    torch.manual_seed(0)
    images = LabelBatch(torch.rand(batch, 3, 32, 32))
    seconds = interleaved({name: (lambda member=labeler: member.predict(images)) for name, labeler in labelers.items()}, repeats)
    per_image = {name: s / batch for name, s in seconds.items()}
    for name, value in per_image.items():
        print(json.dumps({"bench": "relabel", "labeler": name, "batch": batch, "ms_per_image": round(1000 * value, 3),
                          "images_per_s": round(1 / value, 1)}))
    return per_image


def bench_relabel(root: Path, data: Path, batch: int, repeats: int) -> dict[str, float]:
    """``synfer.relabel`` as the command runs it; its own clock leaves out loading the members."""
    from synfer import RelabelConfig, relabel
    from synfer.data.dataset import SynferDataset

    dataset = SynferDataset(data)
    ensembles = {
        "classifier": (f"classifier:{root / 'tiny-resnet'}",),
        "feranno+classifier": (f"feranno:{root / 'feranno'}", f"classifier:{root / 'tiny-resnet'}"),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ensembles}
    for run in range(repeats + 1):  # the first round warms up
        for name, members in ensembles.items():
            config = RelabelConfig(str(data), members, name=f"{name.replace('+', '-')}-{run}", batch_size=batch, device="cpu")
            result = relabel(config)
            if run:
                seconds[name].append(result.seconds)
    rates = {name: dataset.n / statistics.median(values) for name, values in seconds.items()}
    for name, rate in rates.items():
        print(json.dumps({"bench": "relabel", "ensemble": name, "n": dataset.n, "batch": batch, "images_per_s": round(rate, 1)}))
    return rates


def bench_sd15(device: str, batch: int, repeats: int) -> None:
    """FERAnno's feature pass + head with the SD1.5 architecture (random weights) at 512 px."""
    from diffusers import DDIMScheduler

    from synfer.labelers.feranno import FERAnnoFeatureExtractor, FERAnnoHead
    from synfer.models.au_adapter import AUAdapter
    from synfer.models.sd15 import sd15_text_encoder, sd15_unet, sd15_vae
    from synfer.models.tiny import tiny_tokenizer
    from synfer.pipelines.pipeline_synfer import SynFERPipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    unet = sd15_unet("cpu")
    pipe = SynFERPipeline(
        vae=sd15_vae("cpu"),
        text_encoder=sd15_text_encoder("cpu"),
        tokenizer=tiny_tokenizer(),  # no hub: any CLIP tokenizer whose ids fit the text encoder's vocabulary
        unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        au_adapter=AUAdapter.from_unet(unet),
    ).to(device, dtype)
    extractor = FERAnnoFeatureExtractor(pipe)
    head = FERAnnoHead.for_extractor(extractor, "affectnet8").to(device).eval()
    images = torch.rand(batch, 3, 512, 512)
    latents = torch.randn(batch, 4, 64, 64, device=device, dtype=dtype)
    context = (extractor.prompt_embeds().expand(batch, -1, -1), pipe.au_adapter.null(batch).to(dtype))

    def synchronize() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.no_grad()
    def feranno() -> None:
        features = extractor(images).to(device=device, dtype=torch.float32)
        head(features.features, features.attention)
        synchronize()

    @torch.no_grad()
    def bare_unet() -> None:  # the baseline: the same UNet pass without VAE, recording or head
        pipe.unet(latents, 1, encoder_hidden_states=context)
        synchronize()

    seconds = interleaved({"feranno": feranno, "unet": bare_unet}, repeats)
    print(json.dumps({"bench": "relabel", "labeler": "feranno-sd15-512px", "device": device, "dtype": str(dtype).removeprefix("torch."),
                      "batch": batch, "blocks": list(extractor.config.up_blocks), "images_per_s": round(batch / seconds["feranno"], 2),
                      "bare_unet_images_per_s": round(batch / seconds["unet"], 2),
                      "cost_vs_bare_unet_pass": round(seconds["feranno"] / seconds["unet"], 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="samples in the generated tiny dataset")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sd15", action="store_true", help="also time FERAnno with the SD1.5 architecture at 512 px")
    parser.add_argument("--sd15-batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="device for --sd15")
    # On a shared CPU, OpenMP workers spinning against other processes make multi-threaded timings
    # swing tenfold; one thread keeps the ratios stable.
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    quiet()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = make_dataset(root, args.n, shard_size=max(1, args.n // 2))
        labelers = build_labelers(root)
        per_image = bench_labelers(labelers, args.batch, args.repeats)
        rates = bench_relabel(root, data, args.batch, max(1, args.repeats // 2))
    print(json.dumps({
        "bench": "relabel", "metric": "ratios",
        "feranno_vs_tiny_classifier_cost": round(per_image["feranno"] / per_image["tiny-resnet"], 2),
        "feranno_vs_resnet18_224px_cost": round(per_image["feranno"] / per_image["resnet18"], 2),
        "relabel_rate_with_feranno_vs_classifier_only": round(rates["feranno+classifier"] / rates["classifier"], 3),
    }))
    if args.sd15:
        bench_sd15(args.device, args.sd15_batch, max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
