"""Framing between the platform and its containers, with no I/O.

Every message is one frame on the container's own socket (never stdout/stderr,
which stay the user's)::

    u32 body_len | u8 version | u32 meta_len | meta (pickle of a tuple) | blob

``body_len`` counts everything after itself. ``meta`` is a small tuple of plain
values whose first item names the message kind; ``blob`` is an opaque payload
(cloudpickled arguments, results or the function bundle) carried as is, so a
large payload is never pickled twice. Senders pass the pieces to
``socket.sendmsg`` without joining them.

Messages, platform -> container:
    ("load",) + blob                     the function bundle (spawned containers only)
    ("call", invocation_id, attempt, timeout_s, cold_start) + blob (args, kwargs)
                                         timeout_s counts from when the container reads the call
container -> platform:
    ("ready", pid, load_s, init_s)
    ("start_failed", stage, type, message, traceback)
    ("result", invocation_id) + blob
    ("error", invocation_id, type, message, traceback)
    ("bad_payload", invocation_id, message)      args or result would not (un)pickle

This module imports nothing from microfaas: the worker and the pool both use it.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import MutableSequence
from typing import Final

__all__ = [
    "HEADER",
    "PROTOCOL_VERSION",
    "READ_SIZE",
    "FrameDecoder",
    "ProtocolError",
    "byte_views",
    "decode_meta",
    "drop_sent",
    "encode",
]

PROTOCOL_VERSION: Final = 2
HEADER: Final = struct.Struct(">IBI")
# A frame larger than this is a bug or a corrupt stream, not a payload.
MAX_FRAME: Final = 2**32 - 1
# Frames from this size on are read into a buffer of their own (one copy).
LARGE_FRAME: Final = 1 << 20
# How much one ``recv`` asks for. Below glibc's mmap threshold (128 KiB) on purpose: a
# larger buffer is mapped and unmapped on every read, which costs ~12 us per call here.
READ_SIZE: Final = 1 << 16


class ProtocolError(Exception):
    """The byte stream is not a valid frame sequence (internal; never reaches users)."""


def encode(meta: tuple[object, ...], blob: bytes | bytearray | memoryview = b"") -> list[bytes | bytearray | memoryview]:
    """Return the buffers of one frame, for ``socket.sendmsg`` (``len`` of each is its size in bytes)."""
    if type(blob) is memoryview:
        blob = blob.cast("B")
    meta_bytes = pickle.dumps(meta, protocol=pickle.HIGHEST_PROTOCOL)
    body_len = 1 + 4 + len(meta_bytes) + len(blob)
    if body_len > MAX_FRAME:
        raise ProtocolError(f"frame of {body_len} bytes is over the {MAX_FRAME}-byte limit")
    head = HEADER.pack(body_len, PROTOCOL_VERSION, len(meta_bytes)) + meta_bytes
    return [head, blob] if blob else [head]


def byte_views(buffers: list[bytes | bytearray | memoryview]) -> list[memoryview]:
    """Byte views of ``buffers``, so that ``len`` counts bytes and ``drop_sent`` can slice them."""
    return [memoryview(b).cast("B") for b in buffers]


def drop_sent(views: MutableSequence[memoryview], sent: int) -> None:
    """Drop the first ``sent`` bytes of ``views``: what one ``sendmsg`` of them took."""
    while views and sent >= len(views[0]):
        sent -= len(views[0])
        del views[0]
    if views and sent:
        views[0] = views[0][sent:]


def decode_meta(data: bytes | memoryview) -> tuple[object, ...]:
    try:
        meta = pickle.loads(data)
    except Exception as exc:
        raise ProtocolError(f"frame meta does not unpickle: {exc!r}") from exc
    if not isinstance(meta, tuple) or not meta:
        raise ProtocolError(f"frame meta is not a non-empty tuple: {meta!r}")
    return meta


def check_header(version: int, body_len: int, meta_len: int) -> None:
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"peer speaks protocol version {version}, this side speaks {PROTOCOL_VERSION}")
    if meta_len > body_len - 5:
        raise ProtocolError(f"meta length {meta_len} exceeds frame body length {body_len}")


class FrameDecoder:
    """Turns a byte stream into ``(meta, blob)`` frames; feed it whatever arrived.

    ::

        decoder.feed(chunk)
        while (frame := decoder.next_frame()) is not None:
            meta, blob = frame

    A frame larger than ``LARGE_FRAME`` gets a buffer of its own size once its
    header is known; ``writable()`` then offers the rest of that buffer for
    ``recv_into`` (report with ``wrote(n)``), so a large payload is copied once.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._frame: bytearray | None = None  # a large frame being filled
        self._filled = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        frame = self._frame
        if frame is None:
            self._buf += data
            return
        n = min(len(data), len(frame) - self._filled)
        frame[self._filled : self._filled + n] = data[:n]
        self._filled += n
        self._buf += data[n:]

    def writable(self) -> memoryview | None:
        """The unfilled part of a large frame, for ``recv_into``; None when there is none.

        Release the view (``with view:``) before the next ``next_frame()``.
        """
        if self._frame is None:
            return None
        return memoryview(self._frame)[self._filled :]

    def wrote(self, n: int) -> None:
        self._filled += n

    def next_frame(self) -> tuple[tuple[object, ...], bytes | bytearray] | None:
        frame = self._frame
        if frame is not None:
            if self._filled < len(frame):
                return None
            self._frame = None
            self._filled = 0
            return _split(frame)
        buf = self._buf
        if len(buf) < HEADER.size:
            return None
        body_len, version, meta_len = HEADER.unpack_from(buf)
        if version != PROTOCOL_VERSION or meta_len > body_len - 5:
            check_header(version, body_len, meta_len)  # raises, naming what is wrong
        end = 4 + body_len
        if len(buf) < end:
            if end >= LARGE_FRAME:
                self._frame = bytearray(end)
                self._frame[: len(buf)] = buf
                self._filled = len(buf)
                buf.clear()
            return None
        meta_end = HEADER.size + meta_len
        with memoryview(buf) as view:
            meta = decode_meta(view[HEADER.size : meta_end])
            blob = bytes(view[meta_end:end])
        del buf[:end]
        return meta, blob

    @property
    def pending_bytes(self) -> int:
        return len(self._buf) + self._filled


def _split(frame: bytearray) -> tuple[tuple[object, ...], bytearray]:
    """Meta and blob of a whole frame held in its own buffer (the blob is not copied)."""
    _, _, meta_len = HEADER.unpack_from(frame)
    meta_end = HEADER.size + meta_len
    with memoryview(frame) as view:
        meta = decode_meta(view[HEADER.size : meta_end])
    del frame[:meta_end]
    return meta, frame
