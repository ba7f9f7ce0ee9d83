"""The pytest plugin, run on small test projects through pytest's ``pytester`` (each in a pytest subprocess)."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import pid_alive

pytest_plugins = ["pytester"]

APP = textwrap.dedent(
    """
    import os
    import microfaas as mf

    app = mf.App("plugged")

    @app.function
    def pid() -> int:
        return os.getpid()
    """
)

CONFTEST = textwrap.dedent(
    """
    import pytest

    @pytest.fixture
    def anyio_backend():
        return "asyncio"
    """
)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", *args, timeout=300)


def pids_written(pytester: pytest.Pytester) -> list[int]:
    path = pytester.path / "pids.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_the_marker_names_the_app_and_the_fixture_runs_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(myapp=APP)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_it="""
        import pytest
        import microfaas as mf
        from myapp import app

        pytestmark = [pytest.mark.anyio, pytest.mark.microfaas(app=app)]

        async def test_warm(faas):
            first = await faas.invoke("pid")
            assert await faas.invoke("pid") == first
            assert [e.kind for e in faas.events(["cold_start", "warm_start"])] == ["cold_start", "warm_start"]

        @pytest.mark.microfaas(nodes=mf.LocalNodes(start_method="spawn"))
        async def test_markers_merge(faas):
            assert faas.app is app and faas.nodes_config.start_method == "spawn"

        @pytest.mark.microfaas(app="myapp:app")
        async def test_app_by_name(faas):
            assert faas.app is app
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=3)


def test_the_app_fixture_can_be_overridden(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(myapp=APP)
    pytester.makeconftest(
        CONFTEST
        + textwrap.dedent(
            """
            import microfaas as mf
            from myapp import app

            @pytest.fixture
            def microfaas_app():
                return app

            @pytest.fixture
            def microfaas_run_options():
                return {"queue_limit": 7}
            """
        )
    )
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.anyio
        async def test_it(faas):
            assert faas.app.name == "plugged" and faas._runtime.queue_limit == 7
            assert await faas.invoke("pid") > 0
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_a_failing_test_leaves_no_process_behind(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(myapp=APP)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_it="""
        import pytest
        from myapp import app

        @pytest.mark.anyio
        @pytest.mark.microfaas(app=app)
        async def test_fails(faas):
            pid = await faas.invoke("pid")
            zygotes = sorted(faas.process_ids() - {pid})
            with open("pids.txt", "w") as f:
                f.write(" ".join(str(p) for p in [pid, *zygotes]))
            assert pid == -1
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    pids = pids_written(pytester)
    assert len(pids) == 2
    assert not any(pid_alive(pid) for pid in pids)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited, waiting a little (an orphaned worker dies on its parent-death signal)."""
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


HANGS = """
import anyio
import pytest
from myapp import app

@pytest.mark.anyio
@pytest.mark.microfaas(app=app)
{mark}
async def test_hangs(faas):
    pid = await faas.invoke("pid")
    with open("pids.txt", "w") as f:
        f.write(str(pid))
    {body}
"""


@pytest.mark.slow  # a few seconds; CI runs it with -m slow
def test_a_test_timing_out_in_its_event_loop_leaves_no_process_behind(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(myapp=APP)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_it=HANGS.format(mark="", body="with anyio.fail_after(1):\n        await anyio.sleep(60)"))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    [pid] = pids_written(pytester)
    assert gone(pid)


@pytest.mark.skipif(importlib.util.find_spec("pytest_timeout") is None, reason="needs pytest-timeout")
@pytest.mark.slow  # a few seconds; CI runs it with -m slow
def test_a_test_killed_by_pytest_timeout_leaves_no_process_behind(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(myapp=APP)
    pytester.makeconftest(CONFTEST)
    # The thread method ends the whole pytest process: the zygote sees its control socket
    # close and kills its containers, which also have a parent-death signal.
    pytester.makepyfile(test_it=HANGS.format(mark='@pytest.mark.timeout(3, method="thread")', body="await anyio.sleep(60)"))
    result = run(pytester)
    assert result.ret != 0
    assert "Timeout" in result.stdout.str() + result.stderr.str()
    [pid] = pids_written(pytester)
    assert gone(pid)


def test_clear_errors_without_an_app_or_an_async_plugin(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(myapp=APP)
    pytester.makepyfile(
        test_it="""
        import pytest
        from myapp import app

        @pytest.mark.anyio
        async def test_no_app(faas):
            pass

        @pytest.mark.microfaas(app=app)
        def test_sync(faas):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*needs an app*microfaas_app*", "*needs an async test*"])


def test_the_plugin_is_inert_unless_used(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        def test_plain(request):
            assert "faas" not in request.fixturenames
        """
    )
    run(pytester).assert_outcomes(passed=1)
    markers = pytester.runpytest_subprocess("--markers", "-p", "no:cacheprovider")
    markers.stdout.fnmatch_lines(["@pytest.mark.microfaas(app, [*][*]run_options)*"])
    fixtures = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    fixtures.stdout.fnmatch_lines(["*faas*", "*microfaas_app*"])


@pytest.mark.skipif(importlib.util.find_spec("pytest_asyncio") is None, reason="needs pytest-asyncio")
@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_it_works_with_pytest_asyncio(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(myapp=APP)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_it="""
        import pytest
        from myapp import app

        @pytest.mark.asyncio
        @pytest.mark.microfaas(app=app)
        async def test_it(faas):
            assert await faas.invoke("pid") == await faas.invoke("pid")
        """
    )
    run(pytester, "-p", "no:anyio", f"--asyncio-mode={mode}", "-W", "error::pytest.PytestDeprecationWarning").assert_outcomes(passed=1)


@pytest.mark.slow  # a few seconds; CI runs it with -m slow
def test_the_example_project_passes_its_own_tests() -> None:
    """examples/testing_project is a small project tested with the plugin; run its pytest as a user would."""
    project = pathlib.Path(__file__).parent.parent / "examples" / "testing_project"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"examples/testing_project failed:\n{done.stdout}\n{done.stderr}"
    assert "6 passed" in done.stdout  # tests/test_shop.py (pytest) and tests/test_shop_unittest.py
