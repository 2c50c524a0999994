"""Reference hygiene: the real reference must not hold the faces the generated samples were laid out from.

A dataset made with ``--layout-dir`` inverts one reference face per sample (the one its seed picks) and
regenerates from it; those samples keep the reference's pose, framing and identity. Measuring FD or
precision against a real set that contains those very faces rewards copying. The manifest records the
layout folder (``model.layout_dir``) and a fingerprint of its listing (``render.layout.listing_sha256``);
from them and each sample's seed, :func:`check_layout_references` finds the references the finished
samples actually used and compares them with the real reference **by content**: the SHA-256 of each
file (or, for a reference set without one file per image, of the decoded pixels), so a copy under
another name or in another folder is found too. Found ones are refused, or with ``drop`` left out of
the reference and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..progress import Reporter, SilentReporter
from .model_files import file_sha256
from .sources import GeneratedImages, RealImages, pixel_sha256

EXAMPLES = 3


@dataclass
class LayoutCheck:
    recorded: bool
    folder: str | None = None
    used: int = 0  # distinct references the finished samples were laid out from
    found: int = 0  # real images equal to one of them
    dropped: int = 0
    method: str | None = None
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def used_references(generated: GeneratedImages, layout_dir: str | None, reporter: Reporter) -> tuple[Path, list[Path]]:
    """The layout folder and the distinct references the finished samples of ``generated`` used."""
    from ..pipelines.inversion import LayoutReferences

    manifest = generated.dataset.manifest
    recorded = manifest["render"]["layout"]
    folder = layout_dir or (manifest.get("model") or {}).get("layout_dir")
    if not folder or not Path(folder).is_dir():
        raise DatasetError(f"the samples of {generated.root} were laid out from reference faces in {folder!r}, which is not "
                           "there; give --layout-dir where they lie now, so that they are kept out of the real reference")
    references = LayoutReferences(Path(folder), strength=recorded.get("strength", 1.0), prompt=recorded.get("prompt", ""),
                                  iterations=recorded.get("iterations", 0))
    if references.to_dict()["listing_sha256"] != recorded.get("listing_sha256"):
        raise DatasetError(f"{folder} is not the layout folder {generated.root} was made from (its listing of names and "
                           "sizes differs from the manifest's render.layout.listing_sha256)")
    used: dict[Path, None] = {}
    seeds = generated.all_seeds
    with reporter.progress("finding layout references", total=len(seeds), unit="sample") as advance:
        for start in range(0, len(seeds), 4096):
            for seed in seeds[start:start + 4096].tolist():
                used[references.reference_for(int(seed))] = None
            advance(len(seeds[start:start + 4096]))
    return Path(folder), list(used)


def check_layout_references(generated: GeneratedImages, real: RealImages, *, layout_dir: str | None = None,
                            drop: bool = False, reporter: Reporter | None = None) -> LayoutCheck:
    """Refuse (or with ``drop`` remove) real images that are layout references of the generated samples."""
    reporter = reporter or SilentReporter()
    layout = (generated.dataset.manifest.get("render") or {}).get("layout")
    if not layout:
        return LayoutCheck(recorded=False)
    folder, used = used_references(generated, layout_dir, reporter)
    method = "file sha256" if real.has_files else "pixel sha256"
    digests: dict[str, Path] = {}
    with reporter.progress("hashing layout references", total=len(used)) as advance:
        for path in used:
            if real.has_files:
                digests[file_sha256(path)] = path
            else:
                from PIL import Image

                with Image.open(path) as image:
                    digests[pixel_sha256(image)] = path
            advance(1)
    hashes = real.content_hashes(reporter)
    rows = np.asarray([row for row, digest in enumerate(hashes) if digest in digests], dtype=np.int64)
    check = LayoutCheck(True, str(folder), len(used), len(rows), 0, method)
    for row in rows[:EXAMPLES].tolist():
        where = real.file_of(row) or f"position {int(real.positions[row])}"
        check.examples.append(f"{where} = {digests[hashes[row]].relative_to(folder)}")
    if len(rows) and not drop:
        raise DatasetError(
            f"the real reference holds {len(rows)} of the {len(used)} layout references the generated samples were made "
            f"from (first: {'; '.join(check.examples)}); they would reward copying. Use another reference split, or "
            "--drop-layout-references to leave them out")
    if len(rows):
        real.drop(rows, "layout references of the generated samples (--drop-layout-references)")
        check.dropped = len(rows)
    return check
