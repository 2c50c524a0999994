"""Many processes and crashes: the samples are the same bytes however and however often they are made."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import synfer
from synfer.data.dataset import SynferDataset
from synfer.data.format import MANIFEST, read_manifest
from synfer.data.verify import check_keys, verify_dataset
from synfer.errors import DatasetError
from synfer.synth.runner import wait_for_manifest

N = 10
ARGS = ["generate", "--model", "tiny", "--steps", "2", "--n", str(N), "--shard-size", "4", "--batch-size", "2", "--device", "cpu"]
TIMEOUT = 240


def environment() -> dict:
    # One thread everywhere, so that every process computes with the same kernels.
    root = str(Path(synfer.__file__).resolve().parents[1])
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=root)


def synfer_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "synfer", *ARGS, "--out", str(out)]


def contents(root: Path) -> dict[str, bytes]:
    names = list((root / "shards").iterdir()) + [root / "README.md", root / "preview.png"]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(names)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "one"
    subprocess.run(synfer_command(out), env=environment(), check=True, capture_output=True, timeout=TIMEOUT)
    return out


def test_two_processes_under_accelerate_make_the_same_bytes_as_one(reference, tmp_path):
    out = tmp_path / "two"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
    ]
    result = subprocess.run(
        [*launch, "-m", "synfer", *ARGS, "--out", str(out)], env=environment(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Each rank made its own shards: 0 and 2 (4 + 2 samples) on rank 0, 1 (4 samples) on rank 1.
    assert "rank 0/2" in result.stdout and "rank 1/2" in result.stdout
    assert "made 6 now" in result.stdout and "made 4 now" in result.stdout
    assert contents(out) == contents(reference)
    dataset = SynferDataset(out)
    assert dataset.complete and check_keys(dataset) == []
    assert len(set(dataset.index(["key"]).column("key").to_pylist())) == N


def kill_during_shard_1(out: Path) -> bool:
    """Run until shard 0 is done and shard 1 has its first batch on disk, then SIGKILL; False when shard 1
    finished before the signal landed (its second batch can be rendered while the writer thread writes the first)."""
    partial = out / "shards" / "00001.tar.tmp"
    process = subprocess.Popen(synfer_command(out), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT
    while not (partial.is_file() and partial.stat().st_size > 0):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "shard 1 never started"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    return not (out / "shards" / "00001.parquet").exists()


def test_sigkill_mid_shard_then_rerun_ends_with_exactly_n_samples(reference, tmp_path):
    for attempt in range(5):
        out = tmp_path / f"killed-{attempt}"
        if kill_during_shard_1(out):
            break
    else:
        pytest.fail("in 5 attempts the kill never landed before shard 1 finished")
    shards = out / "shards"
    assert (shards / "00000.parquet").is_file() and not (shards / "00001.parquet").exists()
    assert SynferDataset(out).shards == [0]
    finished = {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in shards.glob("00000.*")}

    subprocess.run(synfer_command(out), env=environment(), check=True, capture_output=True, timeout=TIMEOUT)
    # The finished shard was not touched; the rest is what an uninterrupted run makes.
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in shards.glob("00000.*")} == finished
    assert contents(out) == contents(reference)
    assert not list(out.rglob("*.tmp"))
    report = verify_dataset(SynferDataset(out))
    assert report.ok and report.samples == N


def test_other_ranks_wait_for_the_manifest_of_rank_zero(reference, tmp_path):
    manifest = read_manifest(reference)
    with pytest.raises(DatasetError, match="waited 0.2 s for rank 0"):
        wait_for_manifest(tmp_path, manifest, timeout=0.2, poll=0.05)

    # A different config is refused at once, unless --overwrite, when rank 0 is about to replace it.
    other = {**manifest, "base_seed": 99}
    (tmp_path / MANIFEST).write_text(json.dumps(other))
    start = time.monotonic()
    with pytest.raises(DatasetError, match="different config .*base_seed"):
        wait_for_manifest(tmp_path, manifest, timeout=30, poll=0.05)
    assert time.monotonic() - start < 5
    writer = threading.Timer(0.3, lambda: (tmp_path / MANIFEST).write_bytes((reference / MANIFEST).read_bytes()))
    writer.start()
    wait_for_manifest(tmp_path, manifest, overwrite=True, timeout=30, poll=0.05)
    writer.join()


@pytest.mark.parametrize("world_size", [1, 2, 3, 7, 40])
def test_ranks_split_the_shards_exactly(world_size):
    from synfer.data.format import num_shards
    from synfer.synth.runner import rank_shards

    owned = [s for rank in range(world_size) for s in rank_shards(1234, 50, rank, world_size)]
    assert sorted(owned) == list(range(num_shards(1234, 50)))
