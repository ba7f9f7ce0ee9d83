"""The wire: every message kind comes back as sent, whatever way the byte stream is cut.

Both ends decode with the one ``FrameDecoder``: the platform's container handle and
zygote reader feed it what the event loop received, the worker's ``Channel`` what it
read from its socket. A frame of another version, of an unknown kind or with a meta
that does not decode is a ``ProtocolError`` that says which.
"""

from __future__ import annotations

import pickle
import socket
import threading
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microfaas import protocol
from microfaas.worker import Channel

# Frames from 4 KiB on take the large-frame path in these tests.
SMALL_LARGE_FRAME = 4096

texts = st.text(max_size=12)
blobs = st.binary(max_size=3 * SMALL_LARGE_FRAME)
seconds = st.floats(min_value=0, max_value=1e9)
pids = st.integers(min_value=1, max_value=2**22)
paths = st.lists(texts, max_size=3)

# One strategy per message kind; test_every_kind_has_a_strategy keeps this complete.
MESSAGES: dict[type[Any], st.SearchStrategy[Any]] = {
    protocol.LoadRequest: st.builds(protocol.LoadRequest, sys_path=paths, cwd=texts, bundle=blobs),
    protocol.CallRequest: st.builds(
        protocol.CallRequest,
        invocation_id=texts,
        attempt=st.integers(min_value=1, max_value=2**32 - 1),
        timeout_s=st.none() | seconds,
        cold_start=st.booleans(),
        args=blobs,
    ),
    protocol.Ready: st.builds(protocol.Ready, pid=pids, load_s=seconds, init_s=seconds),
    protocol.StartFailure: st.builds(
        protocol.StartFailure,
        stage=st.sampled_from(["load", "init"]),
        remote_type=texts,
        remote_message=texts,
        remote_traceback=texts,
    ),
    protocol.ResultReply: st.builds(protocol.ResultReply, invocation_id=texts, value=blobs),
    protocol.ErrorReply: st.builds(
        protocol.ErrorReply, invocation_id=texts, remote_type=texts, remote_message=texts, remote_traceback=texts
    ),
    protocol.BadPayloadReply: st.builds(protocol.BadPayloadReply, invocation_id=texts, message=texts),
    protocol.SetupRequest: st.builds(protocol.SetupRequest, sys_path=paths, cwd=texts, modules=paths),
    protocol.SetupDone: st.builds(
        protocol.SetupDone,
        failures=st.dictionaries(texts, texts, max_size=3),
        refused=st.dictionaries(texts, texts, max_size=3),
        preloaded=paths,
        import_s=seconds,
        rss_mb=seconds,
        threads=st.integers(min_value=1, max_value=64),
    ),
    protocol.ForkRequest: st.builds(
        protocol.ForkRequest, container_id=texts, busy_poll_s=seconds, bundle=blobs, report_imports=st.booleans()
    ),
    protocol.PreloadRequest: st.builds(protocol.PreloadRequest, modules=paths, memory_mb=st.none() | seconds),
    protocol.Imports: st.builds(protocol.Imports, modules=paths, files=paths),
    protocol.SpareRequest: st.builds(protocol.SpareRequest, spare_id=texts),
    protocol.Forked: st.builds(protocol.Forked, container_id=texts, pid=pids),
    protocol.ChildExited: st.builds(protocol.ChildExited, pid=pids, returncode=st.integers(min_value=-64, max_value=255)),
}
messages_st = st.one_of(*MESSAGES.values())

# One of each kind, for the exhaustive tests.
ONE_OF_EACH = [
    protocol.LoadRequest(sys_path=["/app"], cwd="/app", bundle=b"bundle"),
    protocol.CallRequest(invocation_id="inv-\u00e9", attempt=2, timeout_s=1.5, cold_start=True, args=b"args"),
    protocol.CallRequest(invocation_id="inv-2", attempt=1, timeout_s=None, cold_start=False, args=b""),
    protocol.Ready(pid=42, load_s=0.01, init_s=0.5),
    protocol.StartFailure(stage="init", remote_type="builtins.ValueError", remote_message="no", remote_traceback="Traceback"),
    protocol.ResultReply(invocation_id="inv-2", value=b"result"),
    protocol.ErrorReply(invocation_id="inv-3", remote_type="m.Boom", remote_message="boom", remote_traceback="tb"),
    protocol.BadPayloadReply(invocation_id="inv-4", message="would not pickle"),
    protocol.SetupRequest(sys_path=["/app"], cwd="/app", modules=["app"]),
    protocol.SetupDone(failures={"gone": "ModuleNotFoundError('gone')"}),
    protocol.ForkRequest(container_id="c-1", busy_poll_s=0.0002, bundle=b"bundle"),
    protocol.Forked(container_id="c-1", pid=43),
    protocol.ChildExited(pid=43, returncode=-9),
    protocol.PreloadRequest(modules=["numpy", "PIL.Image"], memory_mb=512.0),
    protocol.Imports(modules=["numpy", "numpy.linalg"], files=["/site/numpy/__init__.py", ""]),
    protocol.SpareRequest(spare_id="n-1-spare-1"),
]


@pytest.fixture(autouse=True)
def small_large_frames(monkeypatch):
    monkeypatch.setattr(protocol, "LARGE_FRAME", SMALL_LARGE_FRAME)


def _wire(messages: list[Any]) -> bytes:
    return b"".join(bytes(part) for message in messages for part in protocol.encode(message))


def _drain(decoder: protocol.FrameDecoder) -> list[Any]:
    received = []
    while (message := decoder.next_message()) is not None:
        received.append(message)
    return received


def test_every_kind_has_a_strategy_and_an_example() -> None:
    assert set(MESSAGES) == set(protocol.KINDS)
    assert {type(m) for m in ONE_OF_EACH} == set(protocol.KINDS)
    assert sorted(protocol.KINDS.values()) == list(range(1, len(protocol.KINDS) + 1))


@settings(max_examples=300, deadline=None)
@given(message=messages_st)
def test_every_message_comes_back_as_sent(message: Any) -> None:
    decoder = protocol.FrameDecoder()
    decoder.feed(_wire([message]))
    assert _drain(decoder) == [message]
    assert decoder.pending_bytes == 0


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(messages_st, min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=20),
    data=st.data(),
)
def test_any_chunking_yields_the_messages_sent(messages: list[Any], cuts: list[int], data: st.DataObject) -> None:
    stream = _wire(messages)
    decoder = protocol.FrameDecoder()
    received: list[Any] = []
    position, turn = 0, 0
    while position < len(stream):
        size = cuts[turn % len(cuts)]
        turn += 1
        view = decoder.writable()
        if view is not None and data.draw(st.booleans()):
            with view:
                n = min(len(view), size, len(stream) - position)
                view[:n] = stream[position : position + n]
            decoder.wrote(n)
        else:
            if view is not None:
                view.release()
            n = min(size, len(stream) - position)
            decoder.feed(stream[position : position + n])
        position += n
        received.extend(_drain(decoder))
    assert received == messages
    assert decoder.pending_bytes == 0


@pytest.mark.parametrize("message", ONE_OF_EACH, ids=lambda m: type(m).__name__)
def test_a_frame_split_at_any_byte_decodes_once_whole(message: Any) -> None:
    stream = _wire([message])
    for cut in range(len(stream) + 1):
        decoder = protocol.FrameDecoder()
        decoder.feed(stream[:cut])
        before = _drain(decoder)
        decoder.feed(stream[cut:])
        assert before + _drain(decoder) == [message], f"split at byte {cut} of {len(stream)}"
        assert before == ([] if cut < len(stream) else [message])


def test_a_large_frame_split_at_any_byte_decodes_whole() -> None:
    message = protocol.ResultReply(invocation_id="big", value=bytes(range(256)) * 20)  # over SMALL_LARGE_FRAME
    stream = _wire([message, protocol.ChildExited(pid=1, returncode=0)])
    for cut in range(len(stream) + 1):
        decoder = protocol.FrameDecoder()
        decoder.feed(stream[:cut])
        received = _drain(decoder)
        decoder.feed(stream[cut:])
        assert received + _drain(decoder) == [message, protocol.ChildExited(pid=1, returncode=0)], cut


def test_a_stream_fed_byte_by_byte_yields_every_kind() -> None:
    decoder = protocol.FrameDecoder()
    received = []
    for byte in _wire(ONE_OF_EACH):
        decoder.feed(bytes([byte]))
        received.extend(_drain(decoder))
    assert received == ONE_OF_EACH


def _tampered(offset: int, value: int) -> bytes:
    frame = bytearray(_wire([protocol.Forked(container_id="c-1", pid=7)]))
    frame[offset] = value
    return bytes(frame)


def test_a_frame_of_another_version_is_refused_naming_both_versions() -> None:
    decoder = protocol.FrameDecoder()
    decoder.feed(_tampered(4, protocol.PROTOCOL_VERSION + 1))
    with pytest.raises(
        protocol.ProtocolError, match=f"version {protocol.PROTOCOL_VERSION + 1}, this side speaks {protocol.PROTOCOL_VERSION}"
    ):
        decoder.next_message()


@pytest.mark.parametrize("kind", [0, len(protocol.KINDS) + 1, 255])
def test_a_frame_of_an_unknown_kind_is_refused_naming_the_kind(kind: int) -> None:
    decoder = protocol.FrameDecoder()
    decoder.feed(_tampered(5, kind))
    with pytest.raises(protocol.ProtocolError, match=f"unknown kind {kind}:"):
        decoder.next_message()


@pytest.mark.parametrize(
    ("cls", "meta"),
    [
        (protocol.Forked, b"not a pickle"),
        (protocol.Forked, pickle.dumps(("c-1",))),  # a field short
        (protocol.CallRequest, b"\x00"),  # shorter than its packed fields
        (protocol.ResultReply, b"\xff\xfe"),  # not UTF-8
        (protocol.StartFailure, pickle.dumps(("boot", "t", "m", "tb"))),  # a stage that does not exist
    ],
    ids=["garbage", "a-field-short", "call-too-short", "result-not-utf8", "invalid-field"],
)
def test_a_meta_that_does_not_decode_is_refused_naming_the_kind(cls: type[Any], meta: bytes) -> None:
    kind = protocol.KINDS[cls]
    frame = protocol.HEADER.pack(6 + len(meta), protocol.PROTOCOL_VERSION, kind, len(meta)) + meta
    decoder = protocol.FrameDecoder()
    decoder.feed(frame)
    with pytest.raises(protocol.ProtocolError, match=rf"{cls.__name__} frame"):
        decoder.next_message()


def test_a_meta_longer_than_its_frame_is_refused() -> None:
    decoder = protocol.FrameDecoder()
    decoder.feed(protocol.HEADER.pack(6, protocol.PROTOCOL_VERSION, 1, 100))
    with pytest.raises(protocol.ProtocolError, match="meta length 100 exceeds frame body length 6"):
        decoder.next_message()


def test_only_messages_that_fit_are_encoded() -> None:
    with pytest.raises(protocol.ProtocolError, match="tuple is not a protocol message"):
        protocol.encode(("call", "inv-1"))  # type: ignore[arg-type]
    too_many = protocol.CallRequest(invocation_id="inv-1", attempt=2**32, timeout_s=None, cold_start=False, args=b"")
    with pytest.raises(protocol.ProtocolError, match="does not fit the wire"):
        protocol.encode(too_many)


def test_messages_are_frozen_and_validated() -> None:
    call = ONE_OF_EACH[1]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        call.attempt = 3
    with pytest.raises(ValueError, match="stage"):
        protocol.StartFailure(stage="boot", remote_type="t", remote_message="m", remote_traceback="tb")
    with pytest.raises(TypeError):
        protocol.Ready(42, 0.0, 0.0)  # type: ignore[misc]  # keyword-only


def test_the_workers_channel_reads_through_the_same_decoder() -> None:
    """Small frames several to a ``recv``, and a large one read straight into its own buffer."""
    big = protocol.LoadRequest(sys_path=["/app"], cwd="/app", bundle=b"b" * (5 * SMALL_LARGE_FRAME))
    sent = [ONE_OF_EACH[1], ONE_OF_EACH[2], big, ONE_OF_EACH[1]]
    platform_end, container_end = socket.socketpair()
    with platform_end, container_end:

        def send() -> None:
            platform_end.sendall(_wire(sent))
            platform_end.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        channel = Channel(container_end)
        received = [channel.recv() for _ in sent]
        assert channel.recv() is None  # the platform closed its end
        sender.join()
    assert received == sent


@given(buffers=st.lists(st.binary(max_size=64), max_size=6), data=st.data())
def test_dropping_what_sendmsg_took_leaves_exactly_the_rest(buffers: list[bytes], data: st.DataObject) -> None:
    whole = b"".join(buffers)
    sent = data.draw(st.integers(min_value=0, max_value=len(whole)))
    views = protocol.byte_views(buffers)
    protocol.drop_sent(views, sent)
    assert b"".join(bytes(v) for v in views) == whole[sent:]
