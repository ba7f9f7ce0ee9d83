"""Messages per second from real brokers: mf.RabbitMQ and mf.MQTT through a no-op handler,
against a bare consumer loop of the same client library, in the same run.

    python -m benchmarks.brokers [--quick] [--json PATH]     (this figure alone; also part of python -m benchmarks)

Each round fills the broker with N messages first (RabbitMQ: a durable queue, persistent
messages, publisher confirms; MQTT: QoS 1 messages queued for a persistent session), then
times draining them, from the first message handled to the last one handled and
acknowledged (a steady-state rate: neither the client's connect nor the platform's start
and cold starts count):

- bare RabbitMQ: an aio-pika consumer on one channel with the same prefetch (100) that
  acknowledges each message as it arrives and does nothing else;
- mf.RabbitMQ: ``app.run()`` with a ``RabbitMQ(queue, prefetch=100)`` trigger on a no-op
  function with 2 containers, each message one invocation; the clock stops once the
  last message was handled and acknowledged (``faas.drain``);
- batched: the same triggers with ``batch_size=50, batch_window=0.005, max_concurrency=2``
  (a batch per container at a time, so what arrives meanwhile fills the next one), the handler taking ``list[mf.Message]``
  (it counts them in a file, so the benchmark knows when all are in);
- bare MQTT: an aiomqtt client on the session, at QoS 1 (paho acknowledges on receipt),
  counting messages; mf.MQTT: the same session through the trigger, each PUBACK sent
  once the handler returned.

Rounds alternate bare and microfaas; each figure is the median round. The brokers run on
loopback, started as the connector tests start them (tests/servers.py), on the same 2
cores as everything else. Without the ``connectors`` extra or the Debian packages the
phase is skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import anyio

import microfaas as mf
from benchmarks.common import log, print_ratios_and_notes

PREFETCH = 100
WORKERS = 2
BATCH = 50  # the batched contender's batch_size
BATCH_WINDOW = 0.005


def noop(msg: object) -> None:
    return None


def noop_batch(batch: list[object]) -> None:
    """Does nothing with the batch but count it: one byte per message, in the file the benchmark polls."""
    with open(os.environ["MF_BENCH_BROKERS_COUNT"], "ab") as f:
        f.write(b"x" * len(batch))


def why_not() -> str | None:
    """Why the phase cannot run here (None: it can)."""
    try:
        import aio_pika  # noqa: F401
        import aiomqtt  # noqa: F401
    except ImportError as exc:
        return f"the connectors extra is not installed ({exc.name}): pip install -e '.[connectors]'"
    servers = {"rabbitmq-server": "/usr/lib/rabbitmq/bin/rabbitmq-server", "mosquitto": "/usr/sbin/mosquitto"}
    missing = [name for name, path in servers.items() if not (Path(path).exists() or shutil.which(name))]
    return f"not installed: {', '.join(missing)} (apt-get install mosquitto rabbitmq-server)" if missing else None


def _servers_module() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import servers

    return servers


def _app(name: str, trigger: mf.Trigger) -> mf.App:
    app = mf.App(name)
    app.function(noop, name="noop", triggers=[trigger], max_containers=WORKERS, idle_timeout=None)
    return app


def _batched_app(name: str, trigger: mf.Trigger) -> mf.App:
    app = mf.App(name)
    app.function(noop_batch, name="noop", triggers=[trigger], max_containers=WORKERS, idle_timeout=None)
    return app


async def _drain_through_microfaas(app: mf.App, n: int) -> float:
    """Seconds from the first message handled to the last one handled and acknowledged."""
    return await _drain(app, n, lambda faas: faas.stats("noop").invocations)


async def _drain_batches(app: mf.App, n: int) -> float:
    """As ``_drain_through_microfaas``, for the batched handler (which counts messages in a file)."""
    count = Path(os.environ["MF_BENCH_BROKERS_COUNT"])
    count.write_bytes(b"")  # noqa: ASYNC240 - before the clock starts
    return await _drain(app, n, lambda faas: count.stat().st_size)


async def _drain(app: mf.App, n: int, handled: Any) -> float:
    async with app.run() as faas:
        while handled(faas) < 1:  # noqa: ASYNC110 - polled: the handler is in a container
            await anyio.sleep(0.001)
        t0 = time.perf_counter()
        while handled(faas) < n:  # noqa: ASYNC110 - every 20 ms: stats() is not free
            await anyio.sleep(0.02)
        await faas.drain(timeout=60)
        return time.perf_counter() - t0


# -- RabbitMQ ---------------------------------------------------------------------------------


async def _fill_queue(url: str, queue: str, n: int) -> None:
    import aio_pika

    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        body = b"{}"
        for _ in range(n):
            message = aio_pika.Message(body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=queue)


async def _bare_rabbitmq(url: str, queue: str, n: int) -> float:
    import aio_pika

    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        declared = await channel.declare_queue(queue, passive=True)
        got = 0
        async with declared.iterator() as messages:
            async for message in messages:
                await message.ack()
                if got == 0:
                    t0 = time.perf_counter()
                got += 1
                if got == n:
                    break
    return time.perf_counter() - t0


async def rabbitmq(url: str, n: int, rounds: int) -> dict[str, Any]:
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    app = _app("bench-rabbitmq", mf.RabbitMQ(url, queue=queue, prefetch=PREFETCH))
    trigger = mf.RabbitMQ(url, queue=queue, prefetch=PREFETCH, batch_size=BATCH, batch_window=BATCH_WINDOW, max_concurrency=WORKERS)
    batched = _batched_app("bench-rabbitmq-batched", trigger)
    seconds: dict[str, list[float]] = {"bare": [], "microfaas": [], "microfaas_batched": []}
    await _fill_queue(url, queue, 200)
    await _drain_through_microfaas(app, 200)  # warm: the code is loaded and the queue exists
    for r in range(rounds):
        log(f"rabbitmq: {n} messages, round {r + 1}/{rounds}")
        await _fill_queue(url, queue, n)
        seconds["bare"].append(await _bare_rabbitmq(url, queue, n))
        await _fill_queue(url, queue, n)
        seconds["microfaas"].append(await _drain_through_microfaas(app, n))
        await _fill_queue(url, queue, n)
        seconds["microfaas_batched"].append(await _drain_batches(batched, n))
    return _figures(seconds, n)


# -- MQTT -------------------------------------------------------------------------------------


def _mqtt_client(url: str, client_id: str | None = None, clean_session: bool | None = None) -> Any:
    import aiomqtt

    parts = urllib.parse.urlsplit(url)
    return aiomqtt.Client(parts.hostname or "", parts.port or 1883, identifier=client_id, clean_session=clean_session)


async def _fill_session(url: str, client_id: str, topic: str, n: int) -> None:
    """Make (or keep) the persistent session ``client_id`` subscribed to ``topic``, then queue ``n`` QoS 1 messages for it."""
    async with _mqtt_client(url, client_id, clean_session=False) as session:
        await session.subscribe(topic, qos=1)
    async with _mqtt_client(url) as publisher:
        for _ in range(n):
            await publisher.publish(topic, b"{}", qos=1)


async def _bare_mqtt(url: str, client_id: str, n: int) -> float:
    async with _mqtt_client(url, client_id, clean_session=False) as client:
        got = 0
        async for _ in client.messages:
            if got == 0:
                t0 = time.perf_counter()
            got += 1
            if got == n:
                break
    return time.perf_counter() - t0


async def mqtt(url: str, n: int, rounds: int) -> dict[str, Any]:
    topic = f"bench/{uuid.uuid4().hex[:6]}"
    bare_id, mf_id = f"bench-bare-{uuid.uuid4().hex[:6]}", f"bench-mf-{uuid.uuid4().hex[:6]}"
    batched_id = f"bench-mf-batched-{uuid.uuid4().hex[:6]}"
    app = _app("bench-mqtt", mf.MQTT(url, topic=topic, qos=1, client_id=mf_id))
    trigger = mf.MQTT(url, topic=topic, client_id=batched_id, batch_size=BATCH, batch_window=BATCH_WINDOW, max_concurrency=WORKERS)
    batched = _batched_app("bench-mqtt-batched", trigger)
    seconds: dict[str, list[float]] = {"bare": [], "microfaas": [], "microfaas_batched": []}
    await _fill_session(url, batched_id, topic, 0)
    await _fill_session(url, mf_id, topic, 200)
    await _drain_through_microfaas(app, 200)
    for r in range(rounds):
        log(f"mqtt: {n} messages, round {r + 1}/{rounds}")
        # Every session gets these: the bare one drains them, then microfaas's two (subscribed since the warm-up).
        await _fill_session(url, bare_id, topic, n)
        seconds["bare"].append(await _bare_mqtt(url, bare_id, n))
        seconds["microfaas"].append(await _drain_through_microfaas(app, n))
        seconds["microfaas_batched"].append(await _drain_batches(batched, n))
    return _figures(seconds, n)


def _figures(seconds: dict[str, list[float]], n: int) -> dict[str, Any]:
    # n - 1 messages come after the first, from which each clock runs.
    return {
        name: {"messages_per_s": (n - 1) / statistics.median(s), "best_messages_per_s": (n - 1) / min(s)} for name, s in seconds.items()
    }


async def measure(quick: bool) -> dict[str, Any] | None:
    """The phase's figures, or None with a note when it cannot run here."""
    reason = why_not()
    if reason is not None:
        return {"notes": [f"brokers skipped: {reason}"], "rabbitmq": None, "mqtt": None}
    n, rounds = (2_000, 3) if quick else (5_000, 5)
    servers = _servers_module()
    out: dict[str, Any] = {"n": n, "rounds": rounds, "notes": []}
    with tempfile.TemporaryDirectory(prefix="mf-bench-brokers-") as folder:
        os.environ["MF_BENCH_BROKERS_COUNT"] = str(Path(folder) / "count")  # the batched handler's, in its containers
        (Path(folder) / "rabbitmq").mkdir()
        (Path(folder) / "mosquitto").mkdir()
        with servers.running_rabbitmq(Path(folder) / "rabbitmq") as broker:
            out["rabbitmq_start_s"] = broker.start_seconds
            out["rabbitmq"] = await rabbitmq(broker.url, n, rounds)
        with servers.running_mosquitto(Path(folder) / "mosquitto") as broker:
            out["mqtt"] = await mqtt(broker.url, n, rounds)
    return out


def ratios(brokers: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name in ("rabbitmq", "mqtt"):
        figures = brokers.get(name)
        if figures:
            bare = figures["bare"]["messages_per_s"]
            out[f"{name}_vs_bare"] = figures["microfaas"]["messages_per_s"] / bare
            out[f"{name}_batched_vs_bare"] = figures["microfaas_batched"]["messages_per_s"] / bare
    return out


def cli() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.brokers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    args = parser.parse_args()
    result = anyio.run(measure, args.quick)
    assert result is not None
    result["ratios"] = ratios(result)
    for name in ("rabbitmq", "mqtt"):
        figures = result.get(name)
        if figures:
            print(
                f"{name:>8}: microfaas {figures['microfaas']['messages_per_s']:7.0f} msg/s, "
                f"batched by {BATCH} {figures['microfaas_batched']['messages_per_s']:7.0f} msg/s, "
                f"bare {figures['bare']['messages_per_s']:7.0f} msg/s"
            )
    print_ratios_and_notes(result, args.json)


if __name__ == "__main__":
    cli()
