"""Every event source in one app: spawn with retries, a topic, a stream, a batch job and a timer.

python examples/events.py
"""

from __future__ import annotations

import anyio

import microfaas as mf

app = mf.App("events_demo")
orders = app.topic("orders")
clicks = app.stream("clicks", shards=2)


@app.function(retries=mf.Retries(2, initial_delay=0.05))
def charge(order_id: int) -> str:
    if order_id == 13:
        raise ValueError("card declined")
    return f"charged order {order_id}"


@app.function(triggers=[orders.subscribe(batch_size=5, batch_window=0.1)])
def ship(batch: list[mf.Message]) -> mf.BatchResult:
    failed = [m.id for m in batch if m.data.get("address") is None]
    return mf.BatchResult(failed=failed)  # only these are retried, then dead-lettered


@app.function(triggers=[clicks.consume(batch_size=10, batch_window=0.05)])
def count_clicks(batch: mf.RecordBatch) -> int:
    # Records of one shard arrive in put order, one batch at a time.
    return len(batch.records)


@app.function
def thumbnail(name: str) -> str:
    return name.upper()


@app.function(triggers=[mf.Every(seconds=0.2)])
def heartbeat(tick: mf.Tick) -> None:
    pass


async def main() -> None:
    async with app.run() as faas:
        print("== spawn: retried, then dead-lettered")
        good = await charge.spawn(1)
        bad = await charge.spawn(13)
        print(" ", await good.result())
        try:
            await bad.result()
        except mf.FunctionError as exc:
            print(f"  call {bad.id} failed after {bad.attempts} attempts: {exc.remote_message}")

        print("== topic: fan-out, batches, partial failures")
        for i in range(8):
            await faas.topic("orders").publish({"id": i, "address": None if i == 5 else f"street {i}"})

        print("== stream: ordered per key")
        for i in range(30):
            await faas.stream("clicks").put({"click": i}, key=f"user-{i % 3}")

        print("== batch job")
        job = await thumbnail.batch(["a", "b", "c", "d"], max_parallel=2)
        async for progress in job.progress_updates():
            print(f"  progress {progress.done}/{progress.total}")
        print("  results:", job.results())

        await faas.drain(timeout=60)
        print("== after drain")
        print("  stream lag:", faas.stream("clicks").lag())
        for name in ("charge", "ship"):
            for letter in faas.dead_letters(name):
                print(f"  dead letter of {name} from {letter.source}: {letter.event!r:.60} after {letter.attempts} attempts")
        await anyio.sleep(0.5)
        print(f"  heartbeat ran {faas.stats('heartbeat').invocations} times")


if __name__ == "__main__":
    anyio.run(main)
