"""The platform of tests/test_durability_kill.py: its app, its handlers and the child process's
main, in a module that imports nothing heavy (not pytest): the child imports it, and each node's
zygote preloads it (the module that defines the functions), so both start in a fraction of the
time the test module would take.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import anyio

import microfaas as mf

app = mf.App("kill")
orders = app.topic("orders")
clicks = app.stream("clicks", shards=2)
KEYS = ("alice", "bob", "carol", "dave")
EVENTS = 60  # of each kind
TASKS = 20


def _handled(line: str) -> None:
    with open(Path(os.environ["MF_KILL_DIR"]) / "handled", "a") as f:
        f.write(line + "\n")


@app.function(max_containers=2, retries=mf.Retries(2, initial_delay=0.01))
def work(i: int) -> int:
    time.sleep(0.05)  # slower than the producer: a backlog builds up, and a kill finds work accepted but not done
    _handled(f"spawn {mf.context().invocation_id}")
    return i


@app.function(triggers=[orders.subscribe(batch_size=4, batch_window=0.01)])
def on_order(batch: list[mf.Message]) -> None:
    time.sleep(0.05)
    for msg in batch:
        _handled(f"message {msg.id}")


@app.function(triggers=[clicks.consume(batch_size=5)])
def on_click(batch: mf.RecordBatch) -> None:
    time.sleep(0.05)
    for r in batch:
        _handled(f"record {r.key} {r.shard} {r.sequence} {r.value}")


@app.function(max_containers=2)
def crunch(x: int) -> int:
    time.sleep(0.05)
    _handled(f"task {mf.context().invocation_id}")
    return 2 * x


@app.function(retries=0)
def poison(i: int) -> None:
    raise ValueError(f"poison {i}")


# -- the child process ------------------------------------------------------------------------


def child(mode: str, store: str) -> None:
    """Run the platform: ``produce`` accepts events until killed; ``resume`` drains what is left and reports."""
    anyio.run(_child, mode, store)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _child(mode: str, store: str) -> None:
    async with app.run(store=store) as faas:
        if mode == "resume":
            await faas.drain(timeout=120)
            jobs = {job_id: faas.batch_job(job_id).results() for job_id in sys.argv[3:]}
            _say(json.dumps({"letters": [letter.invocation_id for letter in faas.dead_letters("poison")], "jobs": jobs}))
            return
        stream, topic = faas.stream("clicks"), faas.topic("orders")
        for i in range(EVENTS):
            _say(f"accepted spawn {(await work.spawn(i)).id}")
            _say(f"accepted message {await topic.publish(i)}")
            record = await stream.put(i, key=KEYS[i % len(KEYS)])
            _say(f"accepted record {record.key} {record.shard} {record.sequence} {i}")
            if i == 10:
                _say(f"accepted job {(await crunch.batch(range(TASKS), max_parallel=4)).id}")
            if i % 10 == 3:
                _say(f"accepted poison {(await poison.spawn(i)).id}")
        _say("produced")
        await anyio.sleep(600)  # killed before this ends
