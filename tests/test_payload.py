"""payload.dumps: plain pickle for plain values, cloudpickle for everything else."""

from __future__ import annotations

import pickle

import pytest

from microfaas import payload


@pytest.mark.parametrize(
    "value",
    [None, True, 3, 2.5, 1j, "text", b"bytes", ((1, "a"), {"k": [None, b"x"]}), [[[1]]], {"a": {"b": {"c": 1}}}],
)
def test_plain_values_round_trip_as_plain_pickle(value: object) -> None:
    blob = payload.dumps(value)
    assert blob == pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    assert payload.loads(blob) == value


def test_what_plain_pickle_cannot_ship_goes_through_cloudpickle() -> None:
    class Local:
        def __init__(self, x: int) -> None:
            self.x = x

    def square(x: int) -> int:
        return x * x

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(square)
    fn, (obj,) = payload.loads(payload.dumps((square, [Local(4)])))
    assert fn(obj.x) == 16


def test_deep_or_large_containers_are_not_inspected_but_still_round_trip() -> None:
    deep = [[[[[1]]]]]
    large = list(range(1000))
    assert payload.loads(payload.dumps(deep)) == deep
    assert payload.loads(payload.dumps(large)) == large
    assert not payload._plain(deep) and not payload._plain(large)
    assert payload._plain([[[1]]]) and payload._plain(list(range(64)))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((None,), {}), ((1, "a"), {"k": [[1]]}), (([[1]],), {}), ((), {"deep": [[[1]]]}), ((lambda: 1,), {})],
    ids=["empty", "scalar", "mixed", "deepest-plain-arg", "too-deep-kwarg", "lambda"],
)
def test_a_calls_arguments_pickle_as_the_pair_would(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    assert payload.dumps_call(args, kwargs) == payload.dumps((args, kwargs))


def test_a_message_with_plain_data_takes_plain_pickle_and_one_with_a_closure_cloudpickle() -> None:
    import cloudpickle

    import microfaas as mf
    from microfaas.runtime import shipping  # noqa: F401 - registers mf.Message as a plain record

    message = mf.Message(id="m1", topic="t", data={"n": [1, 2]}, attributes={"k": "v"}, attempt=2)
    assert payload._plain(message)
    blob = payload.dumps_call((message,), {})
    assert blob == pickle.dumps(((message,), {}), protocol=pickle.HIGHEST_PROTOCOL)
    assert blob == cloudpickle.dumps(((message,), {}), protocol=pickle.HIGHEST_PROTOCOL)  # the same bytes either way
    assert payload.loads(blob) == ((message,), {})
    offset = 3
    odd = mf.Message(id="m2", topic="t", data=lambda x: x + offset)
    assert not payload._plain(odd)
    ((back,), _) = payload.loads(payload.dumps_call((odd,), {}))
    assert back.data(1) == 4
