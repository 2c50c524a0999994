"""Tiny FER datasets in each real on-disk layout, written by the tests themselves.

Every image is a solid colour that depends on its expression (plus a little per-image noise), so a
classifier can learn them in a few steps: a toy separable set in every layout.
"""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from synfer.data.format import MANIFEST, SCHEMA_VERSION, SHARDS_DIR, num_shards, sample_key, write_json
from synfer.data.writer import ShardWriter
from synfer.expressions import AFFECTNET_TO_FER2013, AFFECTNET_TO_RAFDB, Expression

COLOURS = {
    Expression.NEUTRAL: (128, 128, 128),
    Expression.HAPPY: (230, 200, 30),
    Expression.SAD: (30, 60, 200),
    Expression.SURPRISE: (240, 240, 240),
    Expression.FEAR: (120, 30, 160),
    Expression.DISGUST: (40, 160, 40),
    Expression.ANGER: (210, 30, 30),
    Expression.CONTEMPT: (20, 20, 20),
}
SEVEN = [e for e in Expression if e is not Expression.CONTEMPT]


def face(expression: Expression, index: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(1000 * int(expression) + index)
    pixels = np.clip(np.array(COLOURS[expression], dtype=np.int16) + rng.integers(-12, 13, (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def write_affectnet_csv(root, per_class=2, header=True):
    """Both splits; each also lists one row per excluded code (8-10) and one image that is missing."""
    lists, images = root / "Manually_Annotated_file_lists", root / "Manually_Annotated_Images"
    lists.mkdir(parents=True)
    for split_index, name in enumerate(("training", "validation")):
        rows = []
        for expression in Expression:
            for i in range(per_class):
                rel = f"{split_index}{int(expression)}/{name}_{int(expression)}_{i}.jpg"
                (images / rel).parent.mkdir(parents=True, exist_ok=True)
                # A face in the middle of a larger image: the face box crops it out.
                canvas = Image.new("RGB", (24, 24), (255, 0, 255))
                canvas.paste(face(expression, i), (4, 4))
                canvas.save(images / rel, quality=95)
                rows.append([rel, 4, 4, 16, 16, "1.0;2.0", int(expression), 0.1, -0.2])
        for code in (8, 9, 10):
            rel = f"{split_index}0/{name}_noface_{code}.jpg"
            face(Expression.NEUTRAL, code).save(images / rel)
            rows.append([rel, 0, 0, 16, 16, "", code, -2, -2])
        rows.append([f"{split_index}0/{name}_gone.jpg", 0, 0, 16, 16, "", int(Expression.SAD), 0, 0])
        with open(lists / f"{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            if header or name == "training":
                writer.writerow(["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                                 "facial_landmarks", "expression", "valence", "arousal"])
            writer.writerows(rows)
    return root


def write_affectnet_npy(root, per_class=2):
    for folder in ("train_set", "val_set"):
        (root / folder / "images").mkdir(parents=True)
        (root / folder / "annotations").mkdir()
        for expression in Expression:
            for i in range(per_class):
                sample_id = f"{int(expression) * 100 + i}"
                face(expression, i).save(root / folder / "images" / f"{sample_id}.jpg")
                np.save(root / folder / "annotations" / f"{sample_id}_exp.npy", np.array(str(int(expression))))
                np.save(root / folder / "annotations" / f"{sample_id}_val.npy", np.array("0.1"))
    return root


def write_rafdb(root, per_class=2):
    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    lines = []
    for split in ("train", "test"):
        n = 0
        for expression in SEVEN:
            for i in range(per_class):
                n += 1
                name = f"{split}_{n:05d}"
                face(expression, i).save(root / "Image" / "aligned" / f"{name}_aligned.jpg")
                lines.append(f"{name}.jpg {AFFECTNET_TO_RAFDB[expression]}")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


def write_fer2013(root, per_class=2, bad_row=False):
    root.mkdir(parents=True, exist_ok=True)
    rows = ["emotion,pixels,Usage"]
    for usage in ("Training", "PublicTest", "PrivateTest"):
        for expression in SEVEN:
            for i in range(per_class):
                grey = np.asarray(face(expression, i, size=48).convert("L")).reshape(-1)
                rows.append(f"{AFFECTNET_TO_FER2013[expression]},{' '.join(map(str, grey))},{usage}")
    if bad_row:
        rows.append(f"{AFFECTNET_TO_FER2013[Expression.HAPPY]},1 2 3,Training")
    (root / "fer2013.csv").write_text("\n".join(rows) + "\n")
    return root


def write_folder(root, per_class=2, splits=("train", "val"), names=None, expressions=tuple(Expression)):
    names = names or {}
    for split in splits:
        base = root / split if split else root
        for expression in expressions:
            folder = base / names.get(expression, expression.label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                face(expression, i + (100 if split == "val" else 0)).save(folder / f"{i}.png")
    return root


def write_synfer(root, per_class=2, shard_size=5, image_format="png", classes=8, seed_offset=0):
    """A synfer dataset as synfer generate lays it out (without running a diffusion model)."""
    expressions = list(Expression)[:classes]
    plan = [(e, i) for i in range(per_class) for e in expressions]
    (root / SHARDS_DIR).mkdir(parents=True)
    for shard in range(num_shards(len(plan), shard_size)):
        with ShardWriter(root, shard, image_format) as writer:
            for index in range(shard * shard_size, min((shard + 1) * shard_size, len(plan))):
                expression, i = plan[index]
                row = {
                    "key": sample_key(index), "index": index, "shard": shard, "label": int(expression),
                    "label_name": expression.label, "aus": [0.0] * 41, "au_known": [True] * 41,
                    "prompt": f"a photo of a {expression.label} face", "seed": index, "height": 16,
                    "width": 16, "attributes": "{}",
                }
                writer.write(row, face(expression, i + seed_offset), {"key": row["key"], "label": int(expression)})
    write_json(root / MANIFEST, {
        "schema_version": SCHEMA_VERSION, "n": len(plan), "shard_size": shard_size,
        "num_shards": num_shards(len(plan), shard_size), "label_set": f"affectnet{classes}",
        "image_format": image_format, "base_seed": 0,
    })
    return root


def write_relabel(root, name, rows):
    """``labels/<name>.parquet`` as relabel writes it: rows of (key, label, keep)."""
    (root / "labels").mkdir(exist_ok=True)
    table = pa.table({
        "key": pa.array([r[0] for r in rows], pa.string()),
        "label": pa.array([r[1] for r in rows], pa.int8()),
        "keep": pa.array([r[2] for r in rows], pa.bool_()),
        "confidence": pa.array([0.9] * len(rows), pa.float32()),
    })
    pq.write_table(table, root / "labels" / f"{name}.parquet")

