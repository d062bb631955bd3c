"""The Zarr store that :meth:`S3TaskFiles.zarr_store` returns.

It is ``zarr.storage.FsspecStore`` except for how a chunk is written: FsspecStore copies
each encoded chunk into a ``bytes`` and hands it to aiohttp, whose transport then
copies whatever the socket does not take at once, so every chunk in flight is held up
to three times. Here the chunk is sent from zarr's own buffer as a seekable file
object, which aiohttp streams in small pieces (retries rewind it): a chunk being
written costs no copy, and peak memory stays near one chunk (plus its encoded form)
per writing thread.
"""

from __future__ import annotations

from typing import Any

from zarr.core.buffer import Buffer
from zarr.storage import FsspecStore

from ._s3io import _PiecesFile

__all__ = ["S3ZarrStore"]

#: smaller objects (metadata, small chunks) are written by FsspecStore as usual
STREAM_FROM = 1 << 20
_SINGLE_PUT_LIMIT = 5 << 30


class S3ZarrStore(FsspecStore):
    """``FsspecStore`` on an s3fs file system, writing chunks without copying them."""

    async def set(self, key: str, value: Buffer, byte_range: tuple[int, int] | None = None) -> None:
        if byte_range is not None or not isinstance(value, Buffer):
            return await super().set(key, value, byte_range)
        try:
            view = memoryview(value.as_numpy_array()).cast("B")  # type: ignore[arg-type]
        except (TypeError, ValueError, NotImplementedError):  # not host memory: the usual way
            return await super().set(key, value, byte_range)
        if not (STREAM_FROM <= view.nbytes < _SINGLE_PUT_LIMIT) or not hasattr(self.fs, "split_path"):
            return await super().set(key, value, byte_range)
        if not self._is_open:
            await self._open()
        self._check_writable()
        path = f"{self.path.rstrip('/')}/{key}" if self.path else key
        bucket, object_key, _ = self.fs.split_path(path)
        await self.fs._call_s3(
            "put_object",
            Bucket=bucket,
            Key=object_key,
            Body=_PiecesFile([view], [0], 0, view.nbytes),
            ContentLength=view.nbytes,
        )
        self.fs.invalidate_cache(path)
        return None
