from collections import Counter

import numpy as np
import pytest
import torch

from synfer.data.readers import open_labelled
from synfer.errors import DatasetError
from synfer.train.data import EvalStream, Source, StreamShape, TrainStream, draw, make_loader

from fer_layouts import write_folder, write_synfer


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    real = open_labelled(write_folder(root / "real", per_class=2, splits=("",)))
    synthetic = open_labelled(write_synfer(root / "syn", per_class=3, shard_size=5))
    return real, synthetic


def batches(stream, workers, epoch=0, skip=0):
    stream.set_epoch(epoch, skip)
    loader = make_loader(stream, stream.shape.batch_size, workers, seed=0)
    return [(b["target"].tolist(), b["source"].tolist(), b["image"].sum().item()) for b in loader]


def mixed_stream(datasets, workers, **kwargs):
    real, synthetic = datasets
    shape = StreamShape(batch_size=4, workers=workers, **kwargs)
    return TrainStream([Source(real, 16), Source(synthetic, 20)], real.label_set, 16, seed=3, shape=shape, shuffle_buffer=6)


def test_an_epoch_skipped_into_continues_exactly(datasets):
    stream = mixed_stream(datasets, workers=2)
    full = batches(stream, 2)
    assert len(full) == stream.batches_per_process == 9
    for skip in range(len(full)):
        assert batches(stream, 2, skip=skip) == full[skip:], skip
    assert batches(stream, 2, epoch=1) != full  # another epoch, another order


def test_mixing_is_exact_and_every_epoch_sees_each_real_image_once(datasets):
    real, synthetic = datasets
    stream = mixed_stream(datasets, workers=0)
    for epoch in range(2):
        seen = batches(stream, 0, epoch=epoch)
        sources = Counter(s for _, batch_sources, _ in seen for s in batch_sources)
        # 36 slots, 16 real + 20 synthetic; 9 full batches use all of them.
        assert sources == {0: 16, 1: 20}
        real_targets = Counter(t for targets, batch_sources, _ in seen for t, s in zip(targets, batch_sources) if s == 0)
        assert real_targets == Counter(real.labels.tolist())


def test_processes_and_accumulation_cut_the_epoch_evenly(datasets):
    real, synthetic = datasets
    per_process = [TrainStream([Source(real, 16), Source(synthetic, 20)], real.label_set, 16, 3,
                               StreamShape(4, num_processes=2, process_index=rank, batch_multiple=2)) for rank in (0, 1)]
    assert [s.batches_per_process for s in per_process] == [4, 4]  # 9 batches: 4 per process, a multiple of 2
    halves = [batches(s, 0) for s in per_process]
    assert halves[0] != halves[1]
    with pytest.raises(DatasetError, match="too few for batches of 64"):
        TrainStream([Source(real, 16)], real.label_set, 16, 0, StreamShape(64))


def test_balanced_draws_even_out_classes():
    labels = np.array([0] * 90 + [1] * 10)
    counts = np.bincount(labels[draw(labels, 4000, True, np.random.default_rng(0))])
    assert abs(counts[0] - counts[1]) < 300
    plain = draw(labels, 250, False, np.random.default_rng(0))
    # Whole permutations first: every sample twice, then half of them a third time.
    assert sorted(np.bincount(plain, minlength=100).tolist()) == [2] * 50 + [3] * 50


def test_unreadable_images_become_flagged_blanks(tmp_path):
    root = write_folder(tmp_path / "f", per_class=1, splits=("",))
    (root / "sad" / "0.png").write_bytes(b"broken")
    dataset = open_labelled(root)
    stream = TrainStream([Source(dataset, len(dataset))], dataset.label_set, 8, 0, StreamShape(8))
    stream.set_epoch(0)
    batch = next(iter(make_loader(stream, 8, 0, 0)))
    broken = [i for i, e in enumerate(batch["error"]) if e]
    assert len(broken) == 1 and "sad/0.png" in batch["error"][broken[0]]
    assert not batch["valid"][broken[0]] and batch["target"][broken[0]] == -100
    assert batch["valid"].sum() == 7 and batch["image"].shape == (8, 3, 8, 8) and batch["image"].dtype == torch.uint8


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_sees_every_image_once(datasets, workers):
    _, synthetic = datasets
    seen = Counter()
    for rank in (0, 1):
        stream = EvalStream(synthetic, synthetic.label_set, 16, num_processes=2, process_index=rank)
        for batch in make_loader(stream, 5, workers, 0):
            seen.update(batch["target"].tolist())
    assert sum(seen.values()) == len(synthetic) == 24
    assert seen == Counter(synthetic.label_set.index(int(v)) for v in synthetic.labels)
