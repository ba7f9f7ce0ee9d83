"""The scheduler core's two facts for deploying while running, one at a time with an explicit ``now``:
``function_deployed`` (a function added to a running core starts its pinned containers) and
``retire_function`` (an old version stops its idle containers, and keeps none)."""

from __future__ import annotations

from microfaas.resources import ResourceManager
from microfaas.scheduler import FunctionProfile, RunOn, Scheduler, StartContainer, StopContainer


def running_core() -> Scheduler:
    sched = Scheduler(ResourceManager(node_memory_mb=1024, max_nodes=1, min_nodes=1, release_after=30.0))
    [acquire] = sched.start(now=0.0)
    sched.node_acquired(acquire.node_id, now=0.0)  # type: ignore[attr-defined]
    return sched


def test_a_function_deployed_while_running_starts_its_pinned_containers() -> None:
    sched = running_core()
    actions = sched.function_deployed(FunctionProfile(name="f@v1", memory_mb=128, min_containers=2), now=1.0)
    assert actions == [
        StartContainer(container_id="c-1", function="f@v1", node_id="n-1", pinned=True),
        StartContainer(container_id="c-2", function="f@v1", node_id="n-1", pinned=True),
    ]


def test_retiring_stops_idle_containers_now_and_busy_pinned_ones_once_asked_again_after_their_call() -> None:
    sched = running_core()
    sched.function_deployed(FunctionProfile(name="f@v1", memory_mb=128, min_containers=1), now=0.0)
    sched.container_started("c-1", now=1.0)  # pinned
    assert sched.request("r1", "f@v1", now=2.0) == [RunOn(request_id="r1", container_id="c-1", cold_start=False)]
    assert sched.request("r2", "f@v1", now=2.0) == [StartContainer(container_id="c-2", function="f@v1", node_id="n-1", pinned=False)]
    assert sched.container_started("c-2", now=3.0) == [RunOn(request_id="r2", container_id="c-2", cold_start=True)]
    assert sched.call_finished("c-2", now=4.0) == []  # c-2 idle, c-1 (pinned) busy

    assert sched.retire_function("f@v1", now=5.0) == [StopContainer(container_id="c-2", reason="retired")]
    assert sched.call_finished("c-1", now=6.0) == []  # idle now: the core keeps it...
    assert sched.retire_function("f@v1", now=6.0) == [StopContainer(container_id="c-1", reason="retired")]  # ...until asked again
    assert sched.container_exited("c-1", now=6.5) == []  # a retired pinned container is not replaced
    assert sched.retire_function("f@v1", now=7.0) == []
    assert sched.live("f@v1") == 0


def test_a_request_already_waiting_for_a_retired_version_is_still_served() -> None:
    sched = running_core()
    sched.function_deployed(FunctionProfile(name="f@v1", memory_mb=128, max_containers=1), now=0.0)
    sched.request("r1", "f@v1", now=0.0)
    sched.container_started("c-1", now=1.0)
    assert sched.request("r2", "f@v1", now=1.5) == []  # waits: the only container is busy
    assert sched.retire_function("f@v1", now=2.0) == []  # nothing idle to stop
    assert sched.call_finished("c-1", now=3.0) == [RunOn(request_id="r2", container_id="c-1", cold_start=False)]
