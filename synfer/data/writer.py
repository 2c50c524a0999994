"""Writing shards: a webdataset tar of images + JSON, then its parquet index; optionally off the sampling loop.

:class:`ShardWriter` writes one shard. :class:`ShardSink` keeps the writing out of the sampling loop's
way: images are encoded (PNG / JPEG / WebP; Pillow's encoders release the GIL) on a thread pool and
one writer thread appends them to the tar and commits each shard, in the order they were given, so
a shard's bytes are those :class:`ShardWriter` writes inline. The format is in docs/formats.md.
"""

from __future__ import annotations

import io
import json
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from .format import INDEX_SCHEMA, TAR_MTIME, atomic_path, check_image_format, commit_file, index_path, tar_path, temporary_path

_PIL_FORMATS = {"png": ("PNG", {"compress_level": 6}), "jpg": ("JPEG", {"quality": 95}), "webp": ("WEBP", {"quality": 95})}


def encode_image(image: Image.Image, image_format: str) -> bytes:
    name, options = _PIL_FORMATS[check_image_format(image_format)]
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=name, **options)
    return buffer.getvalue()


class ShardWriter:
    """Collects one shard's samples and commits them: the tar first, the index last, each renamed into place.

    Use it as a context manager: leaving the block normally commits, leaving it with an exception
    removes the temporary files, so an unfinished shard never looks finished.
    """

    def __init__(self, root: Path, shard: int, image_format: str = "png"):
        self.root = Path(root)
        self.shard = shard
        self.image_format = check_image_format(image_format)
        self.rows: list[dict] = []
        self._tar_path = tar_path(self.root, shard)
        self._tmp = temporary_path(self._tar_path)
        self._stream = open(self._tmp, "wb")  # noqa: SIM115 (kept open until commit or abort)
        self._tar = wds.TarWriter(self._stream, user="synfer", group="synfer", mtime=TAR_MTIME, encoder=False)
        self._open = True

    def write(self, row: dict, image: Image.Image, meta: dict) -> None:
        """Add one sample; ``row`` follows ``INDEX_SCHEMA`` except ``image``; ``meta`` becomes <key>.json."""
        self.write_encoded(row, encode_image(image, self.image_format), meta)

    def write_encoded(self, row: dict, data: bytes, meta: dict) -> None:
        """Add one sample whose image is already encoded (``encode_image(image, self.image_format)``)."""
        key = row["key"]
        self._tar.write({"__key__": key, self.image_format: data, "json": json.dumps(meta, sort_keys=True).encode()})
        self.rows.append({**row, "image": f"{key}.{self.image_format}"})

    def commit(self) -> None:
        self._tar.close()
        self._stream.close()
        self._open = False
        commit_file(self._tmp, self._tar_path)
        table = pa.Table.from_pylist(sorted(self.rows, key=lambda r: r["index"]), schema=INDEX_SCHEMA)
        with atomic_path(index_path(self.root, self.shard)) as tmp:
            pq.write_table(table, tmp)

    def abort(self) -> None:
        if self._open:
            self._open = False
            try:
                self._tar.close()  # closes tarfile's own stream too; the bytes are discarded anyway
            finally:
                self._stream.close()
                self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.abort()
        elif self._open:
            self.commit()


_STOP = object()


class ShardSink:
    """Shard writing off the caller's thread: encoding on ``workers`` threads, tar and index on one writer thread.

    ``workers=0`` writes inline, exactly as :class:`ShardWriter` alone does. Otherwise :meth:`write`
    and :meth:`commit` only queue work and return, unless ``max_pending`` samples are already waiting
    (then the caller waits: memory stays bounded when the writer is the slower side). An error in the
    background is raised by the next call (or by :meth:`close`), with :attr:`failed_shard` naming the
    shard. Use it as a context manager: leaving the block normally waits for every queued shard to be
    committed; leaving it with an exception stops the writer and removes every unfinished shard's
    temporary files, so that no shard looks finished that is not.
    """

    def __init__(self, workers: int, max_pending: int = 128):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers
        self.failed_shard: int | None = None
        self._error: BaseException | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._unfinished: dict[int, ShardWriter] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if workers:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="synfer-encode")
            self._queue = queue.Queue(maxsize=max(1, max_pending))
            self._thread = threading.Thread(target=self._run, name="synfer-shard-writer", daemon=True)
            self._thread.start()

    # -- the caller's side -------------------------------------------------------------------------
    def open(self, root: Path, shard: int, image_format: str = "png") -> ShardWriter:
        """A new shard; its samples go through :meth:`write`, and :meth:`commit` finishes it."""
        self._check()
        writer = ShardWriter(root, shard, image_format)
        with self._lock:
            self._unfinished[id(writer)] = writer
        return writer

    def write(self, writer: ShardWriter, row: dict, image: Image.Image, meta: dict) -> None:
        if self._pool is None:
            self._inline(writer, writer.write, row, image, meta)
            return
        self._check()
        self._put(("write", writer, row, self._pool.submit(encode_image, image, writer.image_format), meta))

    def commit(self, writer: ShardWriter) -> None:
        if self._pool is None:
            self._inline(writer, writer.commit)
            with self._lock:
                self._unfinished.pop(id(writer), None)
            return
        self._put(("commit", writer))

    def close(self) -> None:
        """Wait until everything queued is written and committed; raise the first background error."""
        if self._thread is not None and self._thread.is_alive():
            self._put(_STOP, check=False)
            self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._check()

    def abort(self) -> None:
        """Stop the writer thread and remove the temporary files of every shard not yet committed."""
        self._stopping = True
        if self._thread is not None and self._thread.is_alive():
            self._put(_STOP, check=False)
            self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            unfinished, self._unfinished = list(self._unfinished.values()), {}
        for writer in unfinished:
            writer.abort()

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.abort()
        else:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise

    # -- internals ---------------------------------------------------------------------------------
    def _inline(self, writer: ShardWriter, method, *args) -> None:
        try:
            method(*args)
        except BaseException:
            self.failed_shard = writer.shard
            raise

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _put(self, job, check: bool = True) -> None:
        while True:
            if check:
                self._check()
            elif self._thread is None or not self._thread.is_alive():
                return
            try:
                self._queue.put(job, timeout=0.05)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if self._error is not None or self._stopping:
                if job[0] == "write":
                    job[3].cancel()
                continue  # drain: the caller aborts the unfinished shards
            writer = job[1]
            try:
                if job[0] == "write":
                    _, _, row, future, meta = job
                    self._write(writer, row, future, meta)
                else:
                    writer.commit()
                    with self._lock:
                        self._unfinished.pop(id(writer), None)
            except BaseException as error:  # noqa: BLE001 (handed to the caller's thread)
                self.failed_shard = writer.shard
                self._error = error

    @staticmethod
    def _write(writer: ShardWriter, row: dict, future: Future, meta: dict) -> None:
        writer.write_encoded(row, future.result(), meta)
