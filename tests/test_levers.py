"""Speed levers: the writer's thread pool, --batch-size auto, channels-last / compile / VAE dtype, the adapter's in-place sums."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from synfer import GenerateConfig, generate
from synfer.aus import AUVector, stack
from synfer.cli import app
from synfer.data import writer as writer_module
from synfer.data.format import SHARDS_DIR, TAR_MTIME, index_path, read_manifest, sample_key, tar_path
from synfer.data.writer import ShardSink, encode_image
from synfer.errors import ConfigError, DatasetError
from synfer.pipelines.loading import tiny_pipeline
from synfer.pipelines.speed import attention_report, compile_unet, is_compiled, set_vae_dtype, use_channels_last
from synfer.prompts import PromptBuilder
from synfer.synth.batching import BatchSizer, cpu_batch_size, parse_batch_size
from synfer.synth.plan import PlanConfig, Planner
from synfer.synth.runner import RenderConfig, generate_dataset

from helpers import generators

REPO = Path(__file__).resolve().parents[1]
FAST = dict(model="tiny", steps=1, device="cpu")


def samples(count: int, start: int = 0):
    """(row, image, meta) triples of the index schema, with distinct random images."""
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        key = f"{i:06d}"
        row = {"key": key, "index": i, "shard": 0, "label": 1, "label_name": "happy", "aus": [0.0] * 41, "au_known": [True] * 41,
               "prompt": f"a face {i}", "seed": i, "height": 16, "width": 16, "attributes": "{}"}
        image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        yield row, image, {"key": key, "prompt": row["prompt"], "aus": [round(0.1 * i, 4)] * 3}


def old_way_tar(path: Path, items, image_format: str) -> bytes:
    """A shard tar as ShardWriter wrote it before the writer had a thread pool: encode, then write, one by one."""
    with open(path, "wb") as stream:
        tar = wds.TarWriter(stream, user="synfer", group="synfer", mtime=TAR_MTIME, encoder=False)
        for row, image, meta in items:
            tar.write({"__key__": row["key"], image_format: encode_image(image, image_format),
                       "json": json.dumps(meta, sort_keys=True).encode()})
        tar.close()
    return path.read_bytes()


@pytest.mark.parametrize("image_format", ["png", "webp"])
def test_a_shard_written_on_the_thread_pool_is_byte_identical_to_the_old_way(tmp_path, image_format):
    shards = {0: list(samples(9)), 1: list(samples(5, start=9))}
    for name, workers in (("inline", 0), ("pool", 3)):
        (tmp_path / name / SHARDS_DIR).mkdir(parents=True)
        with ShardSink(workers, max_pending=4) as sink:  # a small queue: the caller waits on the writer, as a fast GPU would
            for shard, items in shards.items():
                writer = sink.open(tmp_path / name, shard, image_format)
                for row, image, meta in items:
                    sink.write(writer, row, image, meta)
                sink.commit(writer)
    for shard, items in shards.items():
        reference = old_way_tar(tmp_path / f"old-{shard}.tar", items, image_format)
        for name in ("inline", "pool"):
            assert tar_path(tmp_path / name, shard).read_bytes() == reference, (name, shard)
        assert pq.read_table(index_path(tmp_path / "pool", shard)).equals(pq.read_table(index_path(tmp_path / "inline", shard)))
    names = sorted(p.name for p in (tmp_path / "pool" / SHARDS_DIR).iterdir())
    assert names == ["00000.parquet", "00000.tar", "00001.parquet", "00001.tar"]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_encoding_error_leaves_no_shard_looking_finished(tmp_path, monkeypatch, workers):
    calls = {"n": 0}
    real = writer_module.encode_image

    def failing(image, image_format):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError(28, "No space left on device")
        return real(image, image_format)

    monkeypatch.setattr(writer_module, "encode_image", failing)
    (tmp_path / SHARDS_DIR).mkdir()
    with pytest.raises(OSError, match="No space"), ShardSink(workers) as sink:
        for shard, start in ((0, 0), (1, 5)):
            writer = sink.open(tmp_path, shard)
            for row, image, meta in samples(5, start):
                sink.write(writer, row, image, meta)
            sink.commit(writer)
    assert sink.failed_shard == 1
    files = sorted(p.name for p in (tmp_path / SHARDS_DIR).iterdir())
    assert files in (["00000.parquet", "00000.tar"], []), files  # shard 0 finished or not; shard 1 left nothing behind


def test_generate_with_writer_threads_makes_the_same_bytes_as_inline(tmp_path):
    outs = {}
    for threads in (0, 3):
        outs[threads] = tmp_path / f"t{threads}"
        generate(GenerateConfig(str(outs[threads]), n=7, shard_size=3, batch_size=2, writer_threads=threads, **FAST))
    files = {t: {p.name: p.read_bytes() for p in sorted((out / SHARDS_DIR).iterdir())} for t, out in outs.items()}
    assert len(files[0]) == 6 and files[0] == files[3]


# -- --batch-size auto ----------------------------------------------------------------------------------
def test_batch_size_option_accepts_numbers_and_auto():
    assert parse_batch_size("auto") == "auto" and parse_batch_size(" 12 ") == 12 and parse_batch_size(3) == 3
    assert GenerateConfig("o", n=1, batch_size="AUTO").batch_size == "auto"
    assert GenerateConfig("o", n=1, batch_size="4").batch_size == 4
    for bad in ("0", "many", -1, 0, 2.5):
        with pytest.raises(ConfigError, match="--batch-size must be a whole number >= 1 or auto"):
            GenerateConfig("o", n=1, batch_size=bad)


def run_sizer(limit: int, n: int, max_batch: int = 64) -> tuple[list[int], BatchSizer]:
    """Drive a BatchSizer over n samples on a device that fits at most ``limit`` images; returns the sizes tried."""
    sizer, done, tried = BatchSizer(1, max_batch, adaptive=True), 0, []
    while done < n:
        count = min(sizer.size, n - done)
        tried.append(count)
        if count > limit:
            sizer.out_of_memory(count)
        else:
            sizer.fitted(count)
            done += count
    return tried, sizer


@pytest.mark.parametrize("limit", [1, 3, 5, 13, 40, 64, 200])
def test_the_search_settles_on_nearly_the_largest_batch_that_fits(limit):
    tried, sizer = run_sizer(limit, 2_000)
    best = min(limit, 64)
    assert sizer.settled and best - best // 4 <= sizer.size <= best
    assert sum(count > limit for count in tried) <= 4  # few batches ran out of memory
    assert tried[-5:] == [min(sizer.size, t) for t in tried[-5:]]  # once settled, it stays


def test_running_out_of_memory_with_one_image_is_an_error():
    sizer = BatchSizer(1, 8, adaptive=True)
    with pytest.raises(DatasetError, match="batch of one image"):
        sizer.out_of_memory(1)


def test_cpu_rule_follows_free_memory_and_the_shard_size():
    gib = 2**30
    assert cpu_batch_size(512, 512, False, 1000, available=20 * gib) == 8
    assert cpu_batch_size(512, 512, True, 1000, available=20 * gib) == 2
    assert cpu_batch_size(512, 512, True, 1000, available=2 * gib) == 1
    assert cpu_batch_size(32, 32, False, 3, available=20 * gib) == 3


class OutOfMemoryAbove:
    """A pipeline that runs out of (simulated CUDA) memory for batches larger than ``limit``."""

    def __init__(self, pipe, limit: int):
        self.pipe, self.limit, self.batches = pipe, limit, []
        self.au_adapter = pipe.au_adapter
        self.device = SimpleNamespace(type="cuda")

    def __call__(self, prompt, **kwargs):
        self.batches.append(len(prompt))
        if len(prompt) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.pipe(prompt, **kwargs)


def shard_images(out: Path, shard: int) -> dict[str, np.ndarray]:
    dataset = wds.WebDataset(str(tar_path(out, shard)), shardshuffle=False)
    return {s["__key__"]: np.asarray(Image.open(io.BytesIO(s["png"]))).astype(int) for s in dataset}


def test_auto_batch_size_finds_the_largest_that_fits_and_makes_every_sample_once(tmp_path):
    pipe = tiny_pipeline(0)
    planner = Planner(PlanConfig(n=20), PromptBuilder(pipe.tokenizer))
    render = RenderConfig(steps=1, height=32, width=32, shard_size=20)
    limited, logs = OutOfMemoryAbove(pipe, 5), []
    outs = {"auto": tmp_path / "auto", "fixed": tmp_path / "fixed"}
    for name, pipeline, batch in (("auto", limited, "auto"), ("fixed", pipe, 4)):
        (outs[name] / SHARDS_DIR).mkdir(parents=True)
        work = generate_dataset(pipeline, planner, render, outs[name], batch_size=batch, writer_threads=0, log=logs.append)
        assert work.made == 20 and work.made_shards == [0]
    # 1, 2, 4 fit; 8 and then 6 run out of memory; 5 fits and is the size found; it makes the rest.
    assert limited.batches == [1, 2, 4, 8, 6, 5, 5, 3]
    assert any("--batch-size auto: 5" in line for line in logs)
    auto, fixed = shard_images(outs["auto"], 0), shard_images(outs["fixed"], 0)
    assert list(auto) == [sample_key(i) for i in range(20)] == list(fixed)
    # Each sample has its own generator: batch sizes differ only in float rounding (one 8-bit level at most).
    assert max(np.abs(auto[k] - fixed[k]).max() for k in auto) <= 1


def test_batch_size_auto_off_cuda_is_the_memory_rule_without_trials():
    logs = []
    sizer = BatchSizer.for_run("auto", torch.device("cpu"), limit=1000, height=32, width=32, guided_decoder=False, log=logs.append)
    assert not sizer.adaptive and sizer.size == cpu_batch_size(32, 32, False, 1000)
    assert logs and "--batch-size auto" in logs[0]
    cuda = BatchSizer.for_run("auto", SimpleNamespace(type="cuda"), limit=10, height=512, width=512, guided_decoder=True)
    assert cuda.adaptive and cuda.size == 1 and cuda.limit == 10
    assert BatchSizer.for_run(6, torch.device("cpu"), limit=1000, height=32, width=32, guided_decoder=False).size == 6


def test_the_command_takes_batch_size_auto_and_the_levers(tmp_path):
    out = tmp_path / "d"
    result = CliRunner().invoke(app, ["generate", "--model", "tiny", "--steps", "1", "--n", "3", "--batch-size", "auto", "--device", "cpu",
                                      "--writer-threads", "1", "--channels-last", "--vae-dtype", "float32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "--batch-size auto: 3 on cpu" in result.output.replace("\n", " ")
    assert read_manifest(out)["render"]["vae_dtype"] == "float32"
    bad = CliRunner().invoke(app, ["generate", "--model", "tiny", "--n", "3", "--batch-size", "lots", "--out", str(tmp_path / "e")])
    assert bad.exit_code == 2 and "--batch-size must be a whole number >= 1 or auto" in bad.stderr


# -- levers that are recorded ---------------------------------------------------------------------------
def test_levers_that_may_change_samples_are_recorded_and_compared_on_resume(tmp_path):
    out = tmp_path / "d"
    options = dict(n=2, shard_size=1, batch_size=2, channels_last=True, vae_dtype="bfloat16", **FAST)
    generate(GenerateConfig(str(out), **options))
    render = read_manifest(out)["render"]
    assert (render["channels_last"], render["vae_dtype"], render["compile"]) == (True, "bfloat16", False)
    assert generate(GenerateConfig(str(out), **options)).made == 0  # the same options resume
    with pytest.raises(DatasetError, match="render.vae_dtype"):
        generate(GenerateConfig(str(out), **{**options, "vae_dtype": "float32"}))
    # Batch size and writer threads change no sample: they are not compared.
    assert generate(GenerateConfig(str(out), **{**options, "batch_size": 1, "writer_threads": 0})).made == 0
    with pytest.raises(ConfigError, match="accepted: model, float32, float16, bfloat16"):
        GenerateConfig(str(out), n=1, vae_dtype="fp8")


def test_channels_last_and_another_vae_dtype_stay_close_to_the_default():
    pipe = tiny_pipeline(0)

    def images():
        return pipe(["a happy face", "a sad face"], aus=["6,12", "1,4,15"], num_inference_steps=2, generator=generators(0, 1),
                    output_type="np").images

    reference = images()
    use_channels_last(pipe)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(images(), reference, atol=1e-4)
    use_channels_last(pipe, False)
    assert set_vae_dtype(pipe, "bfloat16") == torch.bfloat16 and pipe.unet.dtype == torch.float32
    np.testing.assert_allclose(images(), reference, atol=0.05)
    assert set_vae_dtype(pipe, "model") == torch.bfloat16  # model leaves the VAE as it is


def test_compiled_unet_keeps_its_state_dict_and_its_images(monkeypatch):
    pipe = tiny_pipeline(0)
    keys = list(pipe.unet.state_dict())

    def images():
        return pipe("a happy face", aus="6,12", num_inference_steps=1, generator=generators(3), output_type="np").images

    before = images()
    compile_unet(pipe, backend="eager")  # inductor's code generation takes minutes on a small CPU; eager checks the wiring
    assert is_compiled(pipe.unet) and list(pipe.unet.state_dict()) == keys
    assert np.array_equal(images(), before)


def test_float16_decoding_redoes_only_overflowing_images_in_float32():
    pipe = tiny_pipeline(0)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 4, 4, generator=generator)
    latents[1] *= 1e5  # beyond float16's range: this image overflows, the others do not
    set_vae_dtype(pipe, "float16")
    scaled = latents / pipe.vae.config.scaling_factor
    with torch.no_grad():
        decoded = pipe.decode_latents(latents)
        assert torch.isfinite(decoded).all() and pipe.vae.dtype == torch.float16
        half = pipe.vae.decode(scaled.half()).sample
        full = pipe.vae.float().decode(scaled[[1]]).sample
    assert not torch.isfinite(half[1]).all()
    assert torch.equal(decoded[[0, 2]], half[[0, 2]].float()) and torch.equal(decoded[[1]], full)
    pipe.vae.register_to_config(force_upcast=False)  # a VAE made safe for float16 is trusted as it is
    set_vae_dtype(pipe, "float16")
    with torch.no_grad():
        assert not torch.isfinite(pipe.decode_latents(latents)[1]).all()


# -- attention ----------------------------------------------------------------------------------------
def test_attention_runs_sdpa_everywhere():
    report = attention_report(tiny_pipeline(0))
    assert report["sdpa_everywhere"] and report["unet"]["AUAttnProcessor[sdpa]"] == 7 and report["text_encoder"] == "sdpa"


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_in_place_au_sums_equal_the_autograd_path_bit_for_bit(tiny_components, scale):
    unet, adapter = tiny_components["unet"], tiny_components["au_adapter"]
    adapter.attach(unet)
    adapter.set_scale(scale)
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    values, known = stack([AUVector.parse("6,12"), AUVector.parse("1,4,15")])
    with torch.no_grad():
        tokens = adapter(torch.from_numpy(values), torch.from_numpy(known))
        fast = unet(latents, 10, encoder_hidden_states=(text, tokens)).sample
    with torch.enable_grad():
        slow = unet(latents, 10, encoder_hidden_states=(text.requires_grad_(), tokens)).sample
    assert torch.equal(fast, slow.detach())


# -- the device suite -----------------------------------------------------------------------------------
def test_device_suite_runs_in_smoke_mode_on_the_cpu(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device" / "suite.py"), "--device", "cpu", "--smoke",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "suite.jsonl").read_text().splitlines()]
    kinds = {r.get("measure") for r in records}
    assert {"pipelines", "guidance", "feranno", "levers", "schedulers", "flops", "train"} <= kinds, kinds
    pipelines = [r for r in records if r.get("measure") == "pipelines" and "variant" in r]
    assert len(pipelines) == 4 and all(r["images_per_s"] > 0 and r["variant"] in ("sd", "synfer") for r in pipelines)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["smoke"] is True and summary["synfer_vs_sd"] and summary["errors"] == []
