"""Framing: whatever way the byte stream is cut, the decoder gives back the frames sent."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microfaas import protocol

# Frames from 4 KiB on take the large-frame path in these tests.
SMALL_LARGE_FRAME = 4096

frames_st = st.lists(
    st.tuples(
        st.tuples(st.sampled_from(["call", "result", "error"]), st.text(max_size=8)),
        st.binary(max_size=3 * SMALL_LARGE_FRAME),
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture(autouse=True)
def small_large_frames(monkeypatch):
    monkeypatch.setattr(protocol, "LARGE_FRAME", SMALL_LARGE_FRAME)


@settings(max_examples=150, deadline=None)
@given(frames=frames_st, cuts=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=20), data=st.data())
def test_any_chunking_yields_the_frames_sent(frames, cuts, data):
    stream = b"".join(b"".join(bytes(part) for part in protocol.encode(meta, blob)) for meta, blob in frames)
    decoder = protocol.FrameDecoder()
    received: list[tuple[tuple[object, ...], bytes]] = []
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
        while (frame := decoder.next_frame()) is not None:
            received.append((frame[0], bytes(frame[1])))
    assert received == [(meta, blob) for meta, blob in frames]
    assert decoder.pending_bytes == 0


def test_a_frame_of_another_version_is_refused():
    head, *_ = protocol.encode(("call",))
    tampered = bytearray(head)
    tampered[4] = protocol.PROTOCOL_VERSION + 1
    decoder = protocol.FrameDecoder()
    decoder.feed(bytes(tampered))
    with pytest.raises(protocol.ProtocolError, match="version"):
        decoder.next_frame()


def test_garbage_meta_is_a_protocol_error():
    garbage = b"not a pickle"
    frame = protocol.HEADER.pack(1 + 4 + len(garbage), protocol.PROTOCOL_VERSION, len(garbage)) + garbage
    decoder = protocol.FrameDecoder()
    decoder.feed(frame)
    with pytest.raises(protocol.ProtocolError, match="does not unpickle") as info:
        decoder.next_frame()
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)  # what went wrong, chained


@pytest.mark.parametrize("meta", [(), ["call"], "call", None], ids=["empty-tuple", "list", "str", "none"])
def test_meta_that_is_not_a_non_empty_tuple_is_a_protocol_error(meta: object) -> None:
    meta_bytes = pickle.dumps(meta)
    decoder = protocol.FrameDecoder()
    decoder.feed(protocol.HEADER.pack(1 + 4 + len(meta_bytes), protocol.PROTOCOL_VERSION, len(meta_bytes)) + meta_bytes)
    with pytest.raises(protocol.ProtocolError, match="not a non-empty tuple"):
        decoder.next_frame()


def test_a_meta_length_past_the_frame_is_a_protocol_error() -> None:
    decoder = protocol.FrameDecoder()
    decoder.feed(protocol.HEADER.pack(5, protocol.PROTOCOL_VERSION, 100))
    with pytest.raises(protocol.ProtocolError, match="meta length 100 exceeds frame body length 5"):
        decoder.next_frame()


def test_a_frame_over_max_frame_is_refused_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME", 64)
    decoder = protocol.FrameDecoder()
    decoder.feed(b"".join(protocol.encode(("result", "inv"), b"x" * 10)))  # under the limit: fine
    assert decoder.next_frame() == (("result", "inv"), b"x" * 10)
    with pytest.raises(protocol.ProtocolError, match=r"frame of \d+ bytes is over the 64-byte limit"):
        protocol.encode(("result", "inv"), b"x" * 64)


@given(buffers=st.lists(st.binary(max_size=64), max_size=6), data=st.data())
def test_dropping_what_sendmsg_took_leaves_exactly_the_rest(buffers: list[bytes], data: st.DataObject) -> None:
    whole = b"".join(buffers)
    sent = data.draw(st.integers(min_value=0, max_value=len(whole)))
    views = protocol.byte_views(buffers)
    protocol.drop_sent(views, sent)
    assert b"".join(bytes(v) for v in views) == whole[sent:]
