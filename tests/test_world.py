"""The procedural-face world: AUs drawn where they belong, mirror symmetry, determinism, the writer and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synfer.aus import AU_INDEX, AU_NAMES, AUVector
from synfer.data.au_table import read_au_table
from synfer.data.readers import open_labelled
from synfer.errors import ConfigError
from synfer.expressions import Expression
from synfer.synth.au_sources import PrototypeAUs
from synfer.world import (
    DRAWN_AUS,
    Identity,
    WorldConfig,
    caption,
    caption_vocabulary,
    make_world,
    plan_world,
    region_masks,
    render,
    render_array,
)
from synfer.world.caption import MAX_CAPTION_WORDS, caption_words

SIZE = 64  # fine enough for the region checks; the world's default is 32


def _plain(seed: int = 3) -> Identity:
    """An identity without items that could cover a feature."""
    return replace(Identity.draw(seed), glasses=None, hat=None)


def _change(identity: Identity, aus: dict, size: int = SIZE) -> np.ndarray:
    """Per-pixel absolute change [size, size] from the neutral face to ``aus``."""
    base = render_array(identity, AUVector(), size).astype(np.float64)
    return np.abs(render_array(identity, AUVector.from_dict(aus), size) - base).mean(axis=2)


# Where each AU must act (its region) and a region it must leave nearly alone.
WHERE = {
    "AU1": ("brows", "mouth"), "AU2": ("brows", "mouth"), "AU4": ("brows", "mouth"),
    "AU5": ("eyes", "mouth"), "AU6": ("eyes", "mouth"), "AU7": ("eyes", "mouth"),
    "AU9": ("nose", "mouth"), "AU38": ("nose", "brows"), "AU39": ("nose", "brows"),
    "AU10": ("mouth", "brows"), "AU11": ("cheeks", "brows"), "AU12": ("mouth", "brows"), "AU14": ("mouth", "brows"),
    "AU15": ("mouth", "brows"), "AU16": ("mouth", "brows"), "AU17": ("chin", "brows"), "AU20": ("mouth", "brows"),
    "AU23": ("mouth", "brows"), "AU24": ("mouth", "brows"), "AU25": ("mouth", "brows"), "AU26": ("mouth", "brows"),
    "AU27": ("mouth", "eyes"),
}  # fmt: skip


def test_drawn_aus_are_slots_and_every_bilateral_one_has_a_region():
    assert len(set(DRAWN_AUS)) == len(DRAWN_AUS) and set(DRAWN_AUS) <= set(AU_NAMES)
    assert {name for name in DRAWN_AUS if name.startswith("AU")} == set(WHERE)
    for number in (1, 2, 4, 6, 10, 12, 14):  # the one-sided variants of the drawn ones are drawn too
        assert {f"L{number}", f"R{number}"} <= set(DRAWN_AUS)


@pytest.mark.parametrize("name", sorted(WHERE, key=AU_INDEX.get))
def test_each_au_changes_its_own_region(name):
    identity = _plain()
    masks = region_masks(identity, SIZE)
    strong = _change(identity, {name: 5.0})
    weak = _change(identity, {name: 1.0})
    assert weak.sum() > 0, f"{name} at intensity 1 changes nothing"
    assert strong.sum() > 1.5 * weak.sum(), f"{name}: intensity 5 should change much more than intensity 1"
    inside, far = WHERE[name]
    assert strong[masks[inside]].mean() > 4 * strong[masks[far]].mean(), f"{name} should act on the {inside}, not the {far}"


def test_undrawn_slots_change_nothing():
    identity = _plain()
    undrawn = [name for name in AU_NAMES if name not in DRAWN_AUS]
    assert undrawn  # e.g. AU13, AU18, AU22: unknown in the world's ground truth
    assert _change(identity, dict.fromkeys(undrawn, 5.0)).max() == 0


@pytest.mark.parametrize("number", [1, 2, 4, 6, 10, 12, 14])
def test_one_sided_aus_act_on_their_side_and_mirror(number):
    for seed in (3, 11):
        identity = Identity.draw(seed)  # with its own tilt, offset and background pattern
        masks = region_masks(identity, SIZE)
        left = _change(identity, {f"L{number}": 4.0})
        # the subject's left is the image's right
        assert left[masks["left"]].sum() > 2.5 * left[masks["right"]].sum()
        right = _change(identity, {f"R{number}": 4.0})
        assert right[masks["right"]].sum() > 2.5 * right[masks["left"]].sum()
        rendered = render_array(identity, AUVector.from_dict({f"L{number}": 4.0}), SIZE).astype(int)
        mirrored = render_array(identity.mirrored(), AUVector.from_dict({f"R{number}": 4.0}), SIZE)[:, ::-1].astype(int)
        error = np.abs(rendered - mirrored)
        # anti-aliasing may round a few edge pixels differently; the AU itself changes far more
        assert error.mean() < 0.1 and error.max() <= 8
        assert error.mean() < 0.1 * left.mean()


def test_mirrored_identity_is_the_mirror_image_and_an_involution():
    identity = Identity.draw(25)
    assert identity.mirrored() != identity and identity.mirrored().mirrored() == identity
    aus = AUVector.from_dict({"AU1": 2.0, "AU6": 3.0, "AU12": 3.0, "L14": 2.0})
    mirrored_aus = AUVector.from_dict({"AU1": 2.0, "AU6": 3.0, "AU12": 3.0, "R14": 2.0})
    a = render_array(identity, aus, 32).astype(int)
    b = render_array(identity.mirrored(), mirrored_aus, 32)[:, ::-1].astype(int)
    assert np.abs(a - b).mean() < 0.2
    assert np.abs(a - a[:, ::-1]).mean() > 2  # the face itself is not symmetric, so the check means something


def test_bilateral_and_one_sided_slots_combine_by_the_larger_per_side():
    identity = _plain(7)
    combined = render_array(identity, AUVector.from_dict({"AU12": 2.0, "L12": 4.5}), SIZE)
    per_side = render_array(identity, AUVector.from_dict({"L12": 4.5, "R12": 2.0}), SIZE)
    np.testing.assert_array_equal(combined, per_side)
    weaker = render_array(identity, AUVector.from_dict({"AU12": 3.0, "L12": 1.0}), SIZE)
    np.testing.assert_array_equal(weaker, render_array(identity, AUVector.from_dict({"AU12": 3.0}), SIZE))


def test_unknown_slots_read_as_absent():
    identity = _plain()
    unknown = AUVector.parse("AU12:?,AU6:2")
    np.testing.assert_array_equal(render_array(identity, unknown), render_array(identity, "AU6:2"))


def test_identity_and_render_are_deterministic_and_seeds_differ():
    assert Identity.draw(42) == Identity.draw(42)
    first = np.asarray(render(Identity.draw(42), "AU4:3,AU7:2"))
    np.testing.assert_array_equal(first, np.asarray(render(Identity.draw(42), "AU4:3,AU7:2")))
    identities = [Identity.draw(seed) for seed in range(40)]
    assert len(set(identities)) == 40
    for attribute in ("hair_style", "hair_colour", "skin_tone", "background", "background_pattern", "face_shape"):
        assert len({getattr(i, attribute) for i in identities}) >= 3, attribute
    assert any(i.glasses for i in identities) and not all(i.glasses for i in identities)
    images = [render_array(i, AUVector(), 32) for i in identities[:5]]
    assert all(np.abs(images[0].astype(int) - other).mean() > 5 for other in images[1:])


def test_render_sizes_and_bad_sizes():
    image = render(Identity.draw(1), "none", size=48)
    assert image.size == (48, 48) and image.mode == "RGB"
    with pytest.raises(ConfigError):
        render(Identity.draw(1), "none", size=4)


def test_expressions_differ_more_than_identities_allow_at_32px():
    """The eight prototypes at intensity 3 differ visibly from each other on the same face."""
    from synfer.aus import prototype

    identity = _plain(5)
    images = {e: render_array(identity, prototype(e, 3.0), 32).astype(float) for e in Expression}
    for a in Expression:
        for b in Expression:
            if a < b:
                assert np.abs(images[a] - images[b]).mean() > 0.6, (a.label, b.label)


def test_captions_are_short_and_use_the_vocabulary():
    vocabulary = set(caption_vocabulary())
    for seed in range(300):
        identity = Identity.draw(seed)
        for expression in (None, *Expression):
            text = caption(identity, expression)
            words = caption_words(text)
            assert len(text.split()) < MAX_CAPTION_WORDS
            assert set(words) <= vocabulary, set(words) - vocabulary
    identity = Identity.draw(0)
    assert identity.hair_colour in caption(identity) and "smiling" in caption(identity, Expression.HAPPY)
    assert not {"smiling", "looking", "neutral", "smirk"} & set(caption_words(caption(identity)))


# -- the writer ---------------------------------------------------------------------------------------------------
def _folder_files(split_dir: Path) -> dict[str, str]:
    return {f"{p.parent.name}/{p.name}": p.parent.name for p in split_dir.glob("*/*.png")}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, WorldConfig]:
    config = WorldConfig(n=64, seed=5, label_noise=0.25)
    out = tmp_path_factory.mktemp("world") / "w"
    result = make_world(config, out)
    assert result.made and result.rendered == 64
    return out, config


def test_world_layout_and_readers(world):
    out, config = world
    record = json.loads((out / "world.json").read_text())
    assert record["config"] == config.to_dict() and record["drawn_aus"] == list(DRAWN_AUS)
    sizes = config.split_sizes()
    assert sum(sizes.values()) == 64 and record["splits"] == sizes
    assert all(abs(sizes[s] - f * 64) < 1 for s, f in zip(("train", "val", "test"), config.splits))
    assert not list(out.glob(".*"))  # no temporary folders or markers left
    for split in ("train", "val", "test"):
        dataset = open_labelled(out, split=split)
        assert len(dataset) == sizes[split]
        files = _folder_files(out / split)
        assert len(files) == sizes[split]
        # the reader's labels are the folder labels, which world.json counts
        assert dataset.class_counts() == {name: record["counts"][split].get(name, 0) for name in dataset.label_set.names}
        read = {(Path(s.source).parent.name, s.label.label) for s in dataset}
        assert all(folder == label for folder, label in read)
        captions = [json.loads(line) for line in (out / split / "metadata.jsonl").read_text().splitlines()]
        assert sorted(c["file_name"] for c in captions) == sorted(files)
        assert all(c["text"].startswith("a cartoon face") for c in captions)


def test_true_labels_are_balanced_in_every_split(world):
    out, _ = world
    for split in ("train", "val", "test"):
        table = read_au_table(out / split / "aus.parquet")
        counts = np.bincount(table.extra["true_label"], minlength=8)
        assert counts.max() - counts.min() <= 1


def test_au_tables_hold_the_drawn_aus(world):
    out, config = world
    source = PrototypeAUs(config.seed)
    drawn = np.isin(np.array(AU_NAMES), DRAWN_AUS)
    for split in ("train", "val", "test"):
        table = read_au_table(out / split / "aus.parquet")
        assert table.kind == "intensity" and sorted(table.ids) == sorted(_folder_files(out / split))
        assert (table.known == drawn).all()  # every other slot is unknown
        for i, image_id in enumerate(table.ids):
            assert image_id.split("/")[0] == Expression(table.extra["label"][i]).label
            expected = source(table.extra["index"][i], Expression(table.extra["true_label"][i])).values
            np.testing.assert_array_equal(table.scores[i], np.where(drawn, expected, 0.0))
        # the faces show the AUs: re-rendering a row's identity with its AUs gives its PNG
        row = 0
        identity = Identity.draw(table.extra["identity_seed"][row])
        expected_image = render_array(identity, AUVector(table.scores[row], table.known[row]), config.size)
        with Image.open(out / split / table.ids[row]) as stored:
            np.testing.assert_array_equal(np.asarray(stored.convert("RGB")), expected_image)


def test_label_noise_swaps_the_stated_number_of_train_labels_only(world):
    out, config = world
    record = json.loads((out / "world.json").read_text())
    swapped = {}
    for split in ("train", "val", "test"):
        table = read_au_table(out / split / "aus.parquet")
        swapped[split] = int(np.sum(np.array(table.extra["label"]) != np.array(table.extra["true_label"])))
    assert swapped == {"train": round(0.25 * config.split_sizes()["train"]), "val": 0, "test": 0}
    assert record["swapped_labels"] == swapped


def test_same_config_same_bytes_and_rerun_is_a_no_op(world, tmp_path):
    out, config = world
    again = make_world(config, tmp_path / "again")
    for path in sorted((out / "train").glob("*/*.png"))[:10]:
        assert (tmp_path / "again" / "train" / path.parent.name / path.name).read_bytes() == path.read_bytes()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    result = make_world(config, out)
    assert not result.made and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert again.counts == result.counts


def test_other_config_or_foreign_folder_is_refused(world, tmp_path):
    out, config = world
    with pytest.raises(ConfigError, match="different world"):
        make_world(replace(config, seed=6), out)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        make_world(WorldConfig(n=8), tmp_path / "stuff")


class _Crash(Exception):
    pass


def test_a_crash_leaves_no_finished_world_and_a_rerun_completes_it(tmp_path):
    config = WorldConfig(n=24, seed=2, splits=(0.5, 0.25, 0.25))
    out = tmp_path / "w"
    done = []

    def crash_after_train(k):
        done.append(k)
        if sum(done) == 15:  # train (12) finished, halfway through val
            raise _Crash

    with pytest.raises(_Crash):
        make_world(config, out, progress=crash_after_train)
    assert not (out / "world.json").exists() and (out / "train").is_dir() and not (out / "val").exists()
    result = make_world(config, out)
    assert result.made and result.splits_reused == ["train"] and result.rendered == 12
    fresh = tmp_path / "fresh"
    make_world(config, fresh)
    for path in sorted(fresh.rglob("*.png")):
        assert (out / path.relative_to(fresh)).read_bytes() == path.read_bytes()
    assert json.loads((out / "world.json").read_text()) == json.loads((fresh / "world.json").read_text())


def test_seven_classes_and_captions_without_expression():
    samples = plan_world(WorldConfig(n=21, classes=7, caption_expression=False))
    assert {s.true_label for s in samples} == set(Expression) - {Expression.CONTEMPT}
    assert not any("looking" in s.caption or "smiling" in s.caption for s in samples)


@pytest.mark.parametrize(
    "options",
    [{"n": 0}, {"n": 10, "splits": (0.5, 0.6, 0.1)}, {"n": 10, "splits": (0.0, 0.5, 0.5)}, {"n": 10, "label_noise": 1.0},
     {"n": 10, "classes": 6}, {"n": 10, "size": 8}, {"n": 10, "seed": -1}],
)  # fmt: skip
def test_config_validation(options):
    with pytest.raises(ConfigError) as error:
        WorldConfig(**options)
    assert "\n" not in str(error.value)


# -- the CLI --------------------------------------------------------------------------------------------------------
def test_cli_world_make(tmp_path):
    from synfer.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["world", "make", "--n", "24", "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert len(open_labelled(out, split="train")) + len(open_labelled(out, split="val")) + len(open_labelled(out, split="test")) == 24
    again = runner.invoke(app, ["world", "make", "--n", "24", "--out", str(out), "--seed", "1"])
    assert again.exit_code == 0 and "already complete" in again.output
    bad = runner.invoke(app, ["world", "make", "--n", "24", "--out", str(tmp_path / "bad"), "--label-noise", "2"])
    assert bad.exit_code == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "--label-noise" in bad.stderr and "Traceback" not in bad.output
    assert not (tmp_path / "bad").exists()
