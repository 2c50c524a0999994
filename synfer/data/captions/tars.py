"""Random access into uncompressed tar files: index the member headers once, then seek and read.

Webdataset shards and synfer's shards are plain tars, so a member's bytes lie at a fixed offset. An
index maps member names to (offset, size); reading a member is one ``pread``, from any process.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from ...errors import DatasetError, first_line
from ..readers.base import UnreadableImage


def index_tar(path: Path) -> dict[str, tuple[int, int]]:
    """Member name -> (offset of its data, size) for every regular file of the tar at ``path``."""
    members: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:  # "r:" refuses compressed tars, which cannot be seeked into
            for member in tar:
                if member.isfile():
                    members[member.name] = (member.offset_data, member.size)
    except (OSError, tarfile.TarError, EOFError) as error:
        raise DatasetError(f"cannot read tar {path}: {first_line(error)} (an uncompressed tar is expected)") from None
    return members


def read_member(path: Path, offset: int, size: int, what: str) -> bytes:
    """The ``size`` bytes at ``offset`` of ``path``; an ``UnreadableImage`` naming ``what`` when they are not all there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise UnreadableImage(f"{what}: {error.strerror or error}") from None
    try:
        data = os.pread(fd, size, offset)
    except OSError as error:
        raise UnreadableImage(f"{what}: {error.strerror or error}") from None
    finally:
        os.close(fd)
    if len(data) != size:
        raise UnreadableImage(f"{what}: the tar ends after {len(data)} of its {size} bytes")
    return data


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name, the rest the extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (extension.lower() if dot else "")
