"""The message connectors' settings are checked at decoration: a bad one is a ValueError naming it.
(No broker and no client library is needed for this: the triggers are plain records until the platform starts.)"""

from __future__ import annotations

from typing import Any

import pytest

import microfaas as mf

RABBIT = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "http://127.0.0.1/", "queue": "q"}, "url must be amqp://"),
        ({"url": "amqp://", "queue": "q"}, "url must be amqp://"),
        ({"url": RABBIT, "queue": ""}, "queue must be a non-empty str"),
        ({"url": RABBIT, "queue": "q", "batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"url": RABBIT, "queue": "q", "batch_window": -1}, "batch_window must be a number >= 0"),
        ({"url": RABBIT, "queue": "q", "max_retries": -1}, "max_retries must be an int >= 0"),
        ({"url": RABBIT, "queue": "q", "max_concurrency": 0}, "max_concurrency must be an int >= 1 or None"),
        ({"url": RABBIT, "queue": "q", "decode": "xml"}, "decode must be one of 'auto', 'json', 'text', 'bytes'"),
        ({"url": RABBIT, "queue": "q", "batch_size": 10, "prefetch": 5}, "prefetch must be an int >= batch_size (10)"),
        ({"url": RABBIT, "queue": "q", "declare": "yes"}, "declare must be a bool"),
        ({"url": RABBIT, "queue": "q", "wait_for_server": 1}, "wait_for_server must be a bool"),
    ],
)
def test_a_bad_rabbitmq_setting_is_a_value_error_naming_it(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mf.RabbitMQ(**settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "tcp://127.0.0.1:1883", "topic": "a"}, "url must be mqtt://"),
        ({"url": "mqtt://127.0.0.1:port", "topic": "a"}, "url must be mqtt://"),
        ({"url": "mqtt://127.0.0.1", "topic": ""}, "it must be a non-empty str"),
        ({"url": "mqtt://127.0.0.1", "topic": ()}, "non-empty list"),
        ({"url": "mqtt://127.0.0.1", "topic": "a/#/b"}, "'#' must be a whole level, and the last one"),
        ({"url": "mqtt://127.0.0.1", "topic": "a/b+"}, "'\\+' must be a whole level"),
        ({"url": "mqtt://127.0.0.1", "topic": "a", "qos": 3}, "qos must be 0, 1 or 2, got 3"),
        ({"url": "mqtt://127.0.0.1", "topic": "a", "qos": True}, "qos must be 0, 1 or 2"),
        ({"url": "mqtt://127.0.0.1", "topic": "a", "client_id": ""}, "client_id must be a non-empty str or None"),
        ({"url": "mqtt://127.0.0.1", "topic": "a", "keepalive": 0}, "keepalive must be an int >= 1"),
        ({"url": "mqtt://127.0.0.1", "topic": "a", "batch_size": 0}, "batch_size must be an int >= 1"),
        ({"url": "mqtt://127.0.0.1", "topic": "a", "decode": None}, "decode must be one of"),
    ],
)
def test_a_bad_mqtt_setting_is_a_value_error_naming_it(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mf.MQTT(**settings)


def test_a_bad_setting_fails_at_decoration_before_any_platform_runs() -> None:
    app = mf.App("settings")
    with pytest.raises(ValueError, match="RabbitMQ queue 'orders': batch_size"):

        @app.function(triggers=[mf.RabbitMQ(RABBIT, queue="orders", batch_size=0)])
        def on_order(msg: mf.Message) -> None: ...


def test_good_settings_keep_their_values_and_defaults() -> None:
    rabbit = mf.RabbitMQ(RABBIT, queue="orders", batch_size=300)
    assert (rabbit.prefetch_count, rabbit.max_retries, rabbit.decode, rabbit.declare) == (600, 2, "auto", True)
    assert mf.RabbitMQ(RABBIT, queue="orders").prefetch_count == 100
    mqtt = mf.MQTT("mqtt://u:p@broker:1884", topic=["a/+/c", "d/#"], qos=2)
    assert mqtt.topic == ("a/+/c", "d/#")
    assert mf.MQTT("mqtt://broker", topic="x").topic == ("x",)
