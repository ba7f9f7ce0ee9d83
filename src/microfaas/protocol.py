"""The wire between the platform and its containers (and zygotes): typed messages, framed, with no I/O.

Every message is one frame on the container's own socket (never stdout/stderr,
which stay the user's)::

    u32 body_len | u8 version | u8 kind | u32 meta_len | meta | blob

``body_len`` counts everything after itself. ``kind`` says which message class the
frame holds (``KINDS``); ``meta`` is that message's small fields, and ``blob`` its
opaque payload (cloudpickled arguments, a result or a function bundle) carried as
is, so a large payload is never pickled twice. Senders pass the pieces that
``encode`` returns to ``socket.sendmsg`` without joining them; receivers feed the
bytes they get to a ``FrameDecoder``, the one decoder of both ends, and take
messages out.

Messages, one frozen record per kind:

    platform -> container   LoadRequest (spawned containers only), CallRequest
    container -> platform   Ready | StartFailure, then per call ResultReply | ErrorReply | BadPayloadReply
    platform -> zygote      SetupRequest, ForkRequest (with the container's socket as an fd)
    zygote -> platform      SetupDone, Forked, ChildExited

The meta of a call and of a result, the two frames of every warm call, is packed
by hand (``struct`` and UTF-8): a few hundred nanoseconds less per frame than a
pickled tuple. The other kinds pickle a tuple of their fields.

This module imports nothing from microfaas: the worker, the zygote and the platform all use it.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable, MutableSequence
from operator import attrgetter
from typing import Any, Final, TypeAlias

import attrs

__all__ = [
    "HEADER",
    "KINDS",
    "PROTOCOL_VERSION",
    "READ_SIZE",
    "BadPayloadReply",
    "Blob",
    "CallReply",
    "CallRequest",
    "ChildExited",
    "ErrorReply",
    "ForkRequest",
    "Forked",
    "FrameDecoder",
    "Imports",
    "LoadRequest",
    "Message",
    "PreloadRequest",
    "ProtocolError",
    "Ready",
    "ResultReply",
    "SetupDone",
    "SetupRequest",
    "SpareRequest",
    "StartFailure",
    "byte_views",
    "drop_sent",
    "encode",
    "slot_setters",
]

# 3: a kind byte in the header, and typed messages instead of a pickled tuple naming its kind.
PROTOCOL_VERSION: Final = 4
HEADER: Final = struct.Struct(">IBBI")  # body_len, version, kind, meta_len
_HEADER_SIZE: Final = HEADER.size
# What body_len counts before the meta: version, kind, meta_len.
_BODY_HEAD: Final = HEADER.size - 4
# A frame larger than this is a bug or a corrupt stream, not a payload.
MAX_FRAME: Final = 2**32 - 1
# Frames from this size on are read into a buffer of their own (one copy).
LARGE_FRAME: Final = 1 << 20
# How much one ``recv`` asks for. Below glibc's mmap threshold (128 KiB) on purpose: a
# larger buffer is mapped and unmapped on every read, which costs ~12 us per call here.
READ_SIZE: Final = 1 << 16
# Both ends of a call poll their socket for a moment before they sleep, yielding the CPU
# on every empty poll. A yield that takes longer than this gave the CPU to another
# process that wanted it: the machine is busy, polling only takes CPU from others (and
# makes the kernel run the poller later), so the poll ends there (after one more look)
# and the poller sleeps.
POLL_CONTENDED_S: Final = 30e-6

# A payload as messages carry it (a decoded frame's is a bytearray).
Blob: TypeAlias = bytes | bytearray


class ProtocolError(Exception):
    """The byte stream is not a valid frame sequence, or a message cannot be framed (internal; never reaches users)."""


def _str_tuple(value: Any) -> tuple[str, ...]:
    return tuple(value)


# -- the messages ------------------------------------------------------------------------------
#
# Records of the hot path (CallRequest, ResultReply) have no validators: they are built twice
# per warm call, and only by this package.


@attrs.frozen(kw_only=True)
class LoadRequest:
    """Platform -> spawned container: its function, and where the platform imports from."""

    sys_path: tuple[str, ...] = attrs.field(converter=_str_tuple)  # the platform's ``sys.path``
    cwd: str  # the platform's working directory
    bundle: Blob  # the cloudpickled ``worker.Bundle``


@attrs.frozen(kw_only=True, init=False)
class CallRequest:
    """Platform -> container: run one invocation."""

    invocation_id: str
    attempt: int  # 1 for the first attempt
    timeout_s: float | None  # counts from when the container reads the call; None: no limit
    cold_start: bool  # the first call of a container that was started for it
    args: Blob  # ``payload.dumps_call(args, kwargs)``

    def __init__(self, *, invocation_id: str, attempt: int, timeout_s: float | None, cold_start: bool, args: Blob) -> None:
        # What attrs' own __init__ does, faster (see slot_setters).
        set_id, set_attempt, set_timeout, set_cold, set_args = _CALL_SLOTS
        set_id(self, invocation_id)
        set_attempt(self, attempt)
        set_timeout(self, timeout_s)
        set_cold(self, cold_start)
        set_args(self, args)


@attrs.frozen(kw_only=True)
class Ready:
    """Container -> platform: loaded, init run, ready for calls."""

    pid: int
    load_s: float  # from the process's start until the bundle was loaded
    init_s: float  # how long the function's init ran


@attrs.frozen(kw_only=True)
class StartFailure:
    """Container -> platform: loading the function or running its init raised; the container exits."""

    stage: str = attrs.field(validator=attrs.validators.in_(("load", "init")))
    remote_type: str  # the exception's ``module.qualname``
    remote_message: str
    remote_traceback: str


@attrs.frozen(kw_only=True, init=False)
class ResultReply:
    """Container -> platform: the call returned."""

    invocation_id: str
    value: Blob  # ``payload.dumps(result)``

    def __init__(self, *, invocation_id: str, value: Blob) -> None:
        # What attrs' own __init__ does, faster (see slot_setters).
        set_id, set_value = _RESULT_SLOTS
        set_id(self, invocation_id)
        set_value(self, value)


@attrs.frozen(kw_only=True)
class ErrorReply:
    """Container -> platform: the handler raised."""

    invocation_id: str
    remote_type: str  # the exception's ``module.qualname``
    remote_message: str
    remote_traceback: str


@attrs.frozen(kw_only=True)
class BadPayloadReply:
    """Container -> platform: the call's arguments would not unpickle, or its result would not pickle."""

    invocation_id: str
    message: str


@attrs.frozen(kw_only=True)
class SetupRequest:
    """Platform -> zygote: take the platform's import path and working directory, pre-import ``modules``."""

    sys_path: tuple[str, ...] = attrs.field(converter=_str_tuple)
    cwd: str
    modules: tuple[str, ...] = attrs.field(converter=_str_tuple)


@attrs.frozen(kw_only=True)
class SetupDone:
    """Zygote -> platform: set up (or preloaded more); what it imported and what it refused.

    Answers a ``SetupRequest`` and each ``PreloadRequest``.
    """

    failures: dict[str, str]  # module -> repr of what importing it raised
    refused: dict[str, str] = attrs.field(factory=dict)  # module -> why it was not preloaded (a thread, too slow, too big)
    preloaded: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)  # every module it preloaded so far
    import_s: float = 0.0  # how long this request's imports took
    rss_mb: float = 0.0  # the zygote's resident memory after them
    threads: int = 1  # the zygote's threads after them (more than one: it can no longer fork)


@attrs.frozen(kw_only=True)
class PreloadRequest:
    """Platform -> zygote: import ``modules`` too (learned ones), refusing the unsafe; answered by ``SetupDone``."""

    modules: tuple[str, ...] = attrs.field(converter=_str_tuple)
    memory_mb: float | None  # refuse a module that would take the zygote past this resident memory


@attrs.frozen(kw_only=True)
class Imports:
    """Container -> platform, after its first reply: the modules its function's load, init and first call imported."""

    modules: tuple[str, ...] = attrs.field(converter=_str_tuple)
    files: tuple[str, ...] = attrs.field(converter=_str_tuple)  # each module's ``__file__`` ("" for none)


@attrs.frozen(kw_only=True)
class ForkRequest:
    """Platform -> zygote: fork a container; the frame carries the container's socket as an fd."""

    container_id: str
    busy_poll_s: float  # how long the container polls for its next call (``worker.serve``)
    bundle: Blob  # the cloudpickled ``worker.Bundle``
    report_imports: bool = False  # send ``Imports`` after the first call


@attrs.frozen(kw_only=True)
class SpareRequest:
    """Platform -> zygote: fork a spare on the frame's fd; it waits there for its ``ForkRequest``."""

    spare_id: str


@attrs.frozen(kw_only=True)
class Forked:
    """Zygote -> platform: the container's process is running."""

    container_id: str
    pid: int


@attrs.frozen(kw_only=True)
class ChildExited:
    """Zygote -> platform: a container process it forked was reaped."""

    pid: int
    returncode: int  # negative: killed by that signal


def slot_setters(cls: type[Any]) -> tuple[Callable[[Any, Any], None], ...]:
    """The ``__set__`` of each field's slot, in field order.

    attrs' __init__ of a frozen class sets each field through ``object.__setattr__`` by name
    (a look-up per field); setting the slots directly costs a third less. For the records
    built on every warm call, which have no validators or converters to run.
    """
    return tuple(cls.__dict__[field.name].__set__ for field in attrs.fields(cls))


_CALL_SLOTS: Final = slot_setters(CallRequest)
_RESULT_SLOTS: Final = slot_setters(ResultReply)

CallReply: TypeAlias = ResultReply | ErrorReply | BadPayloadReply
Message: TypeAlias = (
    LoadRequest
    | CallRequest
    | Ready
    | StartFailure
    | ResultReply
    | ErrorReply
    | BadPayloadReply
    | SetupRequest
    | SetupDone
    | ForkRequest
    | Forked
    | ChildExited
    | PreloadRequest
    | Imports
    | SpareRequest
)

# The kind byte of each message. Never renumber a kind: append, and bump PROTOCOL_VERSION.
KINDS: Final[dict[type[Any], int]] = {
    LoadRequest: 1,
    CallRequest: 2,
    Ready: 3,
    StartFailure: 4,
    ResultReply: 5,
    ErrorReply: 6,
    BadPayloadReply: 7,
    SetupRequest: 8,
    SetupDone: 9,
    ForkRequest: 10,
    Forked: 11,
    ChildExited: 12,
    PreloadRequest: 13,
    Imports: 14,
    SpareRequest: 15,
}
# The field of each kind that travels as the frame's blob (the others are its meta).
_BLOB_FIELD: Final[dict[type[Any], str]] = {LoadRequest: "bundle", CallRequest: "args", ResultReply: "value", ForkRequest: "bundle"}

# -- encoding and decoding the meta of each kind ---------------------------------------------------

_MetaEncoder: TypeAlias = Callable[[Any], bytes]
# (data, start, end, blob) -> the message whose meta is data[start:end]: the receive buffer
# itself for a small frame, so that decoding it takes no view and no copy of the whole frame.
_Decoder: TypeAlias = Callable[[bytes | bytearray, int, int, Blob], Any]

_CALL_META: Final = struct.Struct(">IdB")  # attempt, timeout_s (when flagged), flags
_CALL_META_SIZE: Final = _CALL_META.size
_COLD: Final = 1
_TIMED: Final = 2


def _encode_call(m: CallRequest) -> bytes:
    flags = (_COLD if m.cold_start else 0) | (_TIMED if m.timeout_s is not None else 0)
    return _CALL_META.pack(m.attempt, m.timeout_s or 0.0, flags) + m.invocation_id.encode()


def _decode_call(data: bytes | bytearray, start: int, end: int, blob: Blob) -> CallRequest:
    packed_end = start + _CALL_META_SIZE
    if packed_end > end:
        raise ProtocolError(f"CallRequest frame: meta of {end - start} bytes is shorter than its {_CALL_META_SIZE} packed bytes")
    attempt, timeout_s, flags = _CALL_META.unpack_from(data, start)
    return CallRequest(
        invocation_id=data[packed_end:end].decode(),
        attempt=attempt,
        timeout_s=timeout_s if flags & _TIMED else None,
        cold_start=bool(flags & _COLD),
        args=blob,
    )


def _encode_result(m: ResultReply) -> bytes:
    return m.invocation_id.encode()


def _decode_result(data: bytes | bytearray, start: int, end: int, blob: Blob) -> ResultReply:
    return ResultReply(invocation_id=data[start:end].decode(), value=blob)


def _pickled(cls: type[Any]) -> tuple[_MetaEncoder, _Decoder]:
    """A meta codec that pickles the tuple of ``cls``'s fields (its blob field aside)."""
    blob_field = _BLOB_FIELD.get(cls)
    names = tuple(f.name for f in attrs.fields(cls) if f.name != blob_field)
    values = attrgetter(*names)

    def encode_meta(message: Any) -> bytes:
        meta = values(message)
        return pickle.dumps(meta if len(names) > 1 else (meta,), protocol=pickle.HIGHEST_PROTOCOL)

    def decode(data: bytes | bytearray, start: int, end: int, blob: Blob) -> Any:
        fields = pickle.loads(data[start:end])
        if type(fields) is not tuple or len(fields) != len(names):
            raise ProtocolError(f"{cls.__name__} frame: meta {fields!r} is not a tuple of its fields {names}")
        kwargs = dict(zip(names, fields, strict=True))
        if blob_field is not None:
            kwargs[blob_field] = blob
        return cls(**kwargs)

    return encode_meta, decode


_CODECS: Final = {cls: _pickled(cls) for cls in KINDS}
_CODECS[CallRequest] = (_encode_call, _decode_call)
_CODECS[ResultReply] = (_encode_result, _decode_result)
# What encode needs of each class, in one look-up: kind, meta encoder, blob getter (None: no blob).
_ENCODE: Final[dict[type[Any], tuple[int, _MetaEncoder, Callable[[Any], Blob] | None]]] = {
    cls: (kind, _CODECS[cls][0], attrgetter(_BLOB_FIELD[cls]) if cls in _BLOB_FIELD else None) for cls, kind in KINDS.items()
}
# The decoder of each kind byte.
_DECODE: Final[dict[int, _Decoder]] = {kind: _CODECS[cls][1] for cls, kind in KINDS.items()}
_CLASS_OF: Final = {kind: cls for cls, kind in KINDS.items()}


def encode(message: Message) -> list[bytes | bytearray | memoryview]:
    """The buffers of one frame holding ``message``, for ``socket.sendmsg`` (``len`` of each is its size in bytes).

    :raises ProtocolError: ``message`` is not a protocol message, a field does not fit the wire, or the frame is too large.
    """
    try:
        kind, encode_meta, blob_of = _ENCODE[type(message)]
        meta = encode_meta(message)
        blob: Blob = b"" if blob_of is None else blob_of(message)
        head = HEADER.pack(_BODY_HEAD + len(meta) + len(blob), PROTOCOL_VERSION, kind, len(meta)) + meta
    except Exception as exc:
        raise _unencodable(message, exc) from exc
    return [head, blob] if blob else [head]


def _unencodable(message: object, exc: Exception) -> ProtocolError:
    """What ``encode`` could not do with ``message``, named."""
    cls = type(message)
    if cls not in _ENCODE:
        return ProtocolError(f"encode: {cls.__qualname__} is not a protocol message")
    blob_of = _ENCODE[cls][2]
    size = 0 if blob_of is None else len(blob_of(message))
    if size > MAX_FRAME - _BODY_HEAD:
        return ProtocolError(f"encode: a {cls.__name__} of {size} bytes is over the {MAX_FRAME}-byte frame limit")
    return ProtocolError(f"encode: {message!r} does not fit the wire: {exc}")


def _decode(kind: int, data: bytes | bytearray, start: int, end: int, blob: Blob) -> Message:
    """The message of a frame of ``kind`` whose meta is ``data[start:end]``."""
    try:
        return _DECODE[kind](data, start, end, blob)  # type: ignore[no-any-return]
    except Exception as exc:
        raise _undecodable(kind, exc) from exc


def _undecodable(kind: int, exc: Exception) -> ProtocolError:
    """Why a frame of ``kind`` did not decode, named."""
    if isinstance(exc, ProtocolError):
        return exc
    cls = _CLASS_OF.get(kind)
    if cls is None:
        return ProtocolError(f"frame of unknown kind {kind}: protocol version {PROTOCOL_VERSION} has kinds 1 to {len(_DECODE)}")
    # Whatever garbage raised: a corrupt frame.
    return ProtocolError(f"{cls.__name__} frame (kind {kind}): meta does not decode: {exc!r}")


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


def _check_header(version: int, body_len: int, meta_len: int) -> None:
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"peer speaks protocol version {version}, this side speaks {PROTOCOL_VERSION}")
    if meta_len > body_len - _BODY_HEAD:
        raise ProtocolError(f"meta length {meta_len} exceeds frame body length {body_len}")


class FrameDecoder:
    """Turns a byte stream into messages; feed it whatever arrived. Both ends of every socket use it.

    ::

        decoder.feed(chunk)
        while (message := decoder.next_message()) is not None:
            handle(message)

    A frame larger than ``LARGE_FRAME`` gets a buffer of its own size once its
    header is known; ``writable()`` then offers the rest of that buffer for
    ``recv_into`` (report with ``wrote(n)``), so a large payload is copied once.
    ``next_message`` raises ``ProtocolError`` for a frame of another protocol
    version, of an unknown kind, or whose meta does not decode.
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

        Release the view (``with view:``) before the next ``next_message()``.
        """
        if self._frame is None:
            return None
        return memoryview(self._frame)[self._filled :]

    def wrote(self, n: int) -> None:
        self._filled += n

    def next_message(self) -> Message | None:
        """The next whole message received, or None until more bytes come."""
        frame = self._frame
        if frame is not None:
            if self._filled < len(frame):
                return None
            self._frame = None
            self._filled = 0
            return _split(frame)
        buf = self._buf
        if len(buf) < _HEADER_SIZE:
            return None
        body_len, version, kind, meta_len = HEADER.unpack_from(buf)
        if version != PROTOCOL_VERSION or meta_len > body_len - _BODY_HEAD:
            _check_header(version, body_len, meta_len)  # raises, naming what is wrong
        end = 4 + body_len
        if len(buf) < end:
            if end >= LARGE_FRAME:
                self._frame = bytearray(end)
                self._frame[: len(buf)] = buf
                self._filled = len(buf)
                buf.clear()
            return None
        meta_end = _HEADER_SIZE + meta_len
        try:  # _decode, inlined: this runs for every frame
            message: Message = _DECODE[kind](buf, _HEADER_SIZE, meta_end, buf[meta_end:end])
        except Exception as exc:
            raise _undecodable(kind, exc) from exc
        del buf[:end]
        return message

    @property
    def pending_bytes(self) -> int:
        return len(self._buf) + self._filled


def _split(frame: bytearray) -> Message:
    """The message of a whole frame held in its own buffer (the blob is not copied)."""
    _, _, kind, meta_len = HEADER.unpack_from(frame)
    meta_end = HEADER.size + meta_len
    meta = frame[HEADER.size : meta_end]
    del frame[:meta_end]
    return _decode(kind, meta, 0, len(meta), frame)
