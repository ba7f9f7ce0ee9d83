"""Trace loading and replay: the Azure 2019 format, the plain CSV, determinism, the CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import microfaas as mf
from microfaas import sim
from microfaas.cli import main

# The Azure Functions 2019 samples ship with the repository (data/, CC-BY 4.0).
DATA = Path(__file__).resolve().parents[1] / "data" / "azure2019-invitro-samples"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_csv_sorts_calls_and_sizes_functions(tmp_path: Path) -> None:
    trace = sim.load_csv(
        write(tmp_path / "calls.csv", "time_s,function,duration_s,memory_mb\n5,f,1.0,256\n1,g,0.5,128\n2,f,2.0,512\n3,f,1,256\n")
    )
    assert trace.times == [1.0, 2.0, 3.0, 5.0]
    assert [trace.functions[i].name for i in trace.calls] == ["g", "f", "f", "f"]
    assert {f.name: f.memory_mb for f in trace.functions} == {"f": 256, "g": 128}
    assert trace.apps() == {"f": ["f"], "g": ["g"]}


def test_load_csv_app_column_groups_functions(tmp_path: Path) -> None:
    trace = sim.load_csv(write(tmp_path / "c.csv", "time_s,function,duration_s,memory_mb,app\n0,a,1,128,shop\n1,b,1,128,shop\n"))
    assert trace.apps() == {"shop": ["a", "b"]}
    report = sim.replay(trace, keep_alive=mf.FixedKeepAlive(600))
    assert report.app_cold_start_ratio == {"shop": 1.0}


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("time_s,function,duration_s,memory_mb\n0,f,1,128\n1,f,x,128\n", ":3:3:", "duration_s"),
        ("time_s,function,duration_s,memory_mb\n0,f,1,128\n1,f,1\n", ":3:4:", "truncated"),
        ("time_s,function,duration_s\n0,f,1\n", ":1:4:", "memory_mb"),
        ("", ":1:1:", "empty"),
        ("time_s,function,duration_s,memory_mb\n-1,f,1,128\n", ":2:1:", "time_s"),
    ],
)
def test_bad_csv_names_file_line_and_column(tmp_path: Path, text: str, where: str, what: str) -> None:
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(sim.TraceError, match=what) as info:
        sim.load_csv(path)
    assert f"bad.csv{where}" in str(info.value)


def test_load_azure_spreads_each_minute_and_is_seeded() -> None:
    trace = sim.load_azure(DATA / "10_inv.csv", seed=1, minutes=120)
    again = sim.load_azure(DATA / "10_inv.csv", seed=1, minutes=120)
    other = sim.load_azure(DATA / "10_inv.csv", seed=2, minutes=120)
    assert trace.times == again.times and trace.durations == again.durations
    assert trace.times != other.times
    assert trace.times == sorted(trace.times) and trace.times[-1] < 120 * 60
    assert len(trace.functions) == 10 and all(f.memory_mb > 0 and f.cold_start_s > 0.5 for f in trace.functions)
    poisson = sim.load_azure(DATA / "10_inv.csv", seed=1, minutes=120, arrivals="poisson")
    assert len(poisson) == len(trace)  # per-minute counts are kept exactly


def test_truncated_azure_file_names_line_and_column(tmp_path: Path) -> None:
    for kind in ("run", "mem"):
        shutil.copy(DATA / f"10_{kind}.csv", tmp_path / f"10_{kind}.csv")
    lines = (DATA / "10_inv.csv").read_text().splitlines()
    cut = lines[3][: len(lines[3]) // 2].rsplit(",", 1)[0]
    write(tmp_path / "10_inv.csv", "\n".join([*lines[:3], cut]) + "\n")
    with pytest.raises(sim.TraceError, match=r"10_inv\.csv:4:\d+: .*truncated"):
        sim.load_azure(tmp_path / "10_inv.csv")
    run = (DATA / "10_run.csv").read_text().splitlines()
    fields = run[1].split(",")
    fields[7] = "oops"  # percentile_Average_0
    write(tmp_path / "10_run.csv", "\n".join([run[0], ",".join(fields), *run[2:]]) + "\n")
    with pytest.raises(sim.TraceError, match=r"10_run\.csv:2:8: percentile_Average_0"):
        sim.load_azure(tmp_path / "10_inv.csv")


def test_same_seed_same_report() -> None:
    trace = sim.load_azure(DATA / "10_inv.csv", seed=0, minutes=240)
    first = sim.replay(trace, keep_alive=mf.HistogramKeepAlive())
    second = sim.replay(sim.load_azure(DATA / "10_inv.csv", seed=0, minutes=240), keep_alive=mf.HistogramKeepAlive())
    assert first == second
    assert first.invocations == len(trace) == first.cold_starts + first.warm_starts
    assert 0 <= first.p75_app_cold_start_ratio <= 1 and first.decisions > first.invocations


def test_replay_counts_cold_starts_and_idle_memory(tmp_path: Path) -> None:
    trace = sim.load_csv(write(tmp_path / "c.csv", "time_s,function,duration_s,memory_mb\n0,f,1,1024\n100,f,1,1024\n1000,f,1,1024\n"))
    report = sim.replay(trace, keep_alive=mf.FixedKeepAlive(200))
    # Cold start 1.0 s for 1 GB: up at 1, busy to 2, idle to 100 (98 s), idle 102..302 then stopped.
    assert (report.cold_starts, report.warm_starts) == (2, 1)
    assert report.idle_memory_mb_s == pytest.approx(1024 * (98 + 200))
    assert report.function_cold_start_ratio == {"f": pytest.approx(2 / 3)}


def test_greedy_dual_under_memory_pressure_evicts(tmp_path: Path) -> None:
    rows = "".join(f"{t},{f},1,400\n" for t, f in [(0, "a"), (0, "b"), (5, "a"), (10, "c"), (20, "a"), (30, "b")])
    trace = sim.load_csv(write(tmp_path / "c.csv", "time_s,function,duration_s,memory_mb\n" + rows))
    nodes = sim.SimulatedNodes(max_nodes=1, node_memory_mb=1000)
    report = sim.replay(trace, keep_alive=mf.GreedyDualKeepAlive(), nodes=nodes)
    assert report.containers_stopped.get("evicted", 0) >= 1
    assert report.failed == {}


def test_cli_replay_prints_a_table_and_draws_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, out = tmp_path / "out.png", tmp_path / "out.json"
    argv = [str(DATA / "10_inv.csv"), "--minutes", "180", "--policy", "hybrid", "--compare", "fixed:600.0", "--compare", "adaptive"]
    argv += ["--sweep", "60..7200", "--sweep-points", "3", "--plot", str(png), "--json", str(out), "--quiet"]
    assert main(["replay", *argv]) == 0
    text = capsys.readouterr().out
    assert "p75 app" in text and "hybrid" in text and "fixed:7200" in text
    assert "p75 vs fixed:600" in text and "idle vs fixed:600" in text  # the columns name their baseline
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    payload = json.loads(out.read_text())
    assert [p["policy"] for p in payload["policies"]] == ["hybrid", "fixed:600", "adaptive"]  # one spelling per policy
    assert payload["baseline"] == "fixed:600"
    assert len(payload["sweep"]) == 3


def test_cli_replay_defaults_to_adaptive_against_fixed_600(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    assert main(["replay", str(DATA / "10_inv.csv"), "--minutes", "60", "--json", str(out), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split()[0] for line in lines[3:]]
    assert rows == ["adaptive", "fixed:600"]  # the baseline is replayed too when no other policy is it
    assert lines[1].endswith("p75 vs fixed:600 idle vs fixed:600")
    assert lines[-1].split()[-2:] == ["1.00x", "1.00x"]
    assert json.loads(out.read_text())["baseline"] == "fixed:600"


def test_cli_replay_with_another_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(DATA / "10_inv.csv"), "--minutes", "60", "--policy", "never", "--baseline", "fixed:300", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "p75 vs fixed:300" in text and "adaptive" not in text


def test_cli_replay_checks_plot_before_replaying(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["replay", str(DATA / "10_inv.csv"), "--plot", "out.png", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "microfaas replay: error: --plot needs matplotlib: pip install 'microfaas[plot]'\n"
    assert captured.out == ""  # nothing was loaded or replayed


def test_cli_replay_reads_a_relative_path(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(DATA.parent)
    assert main(["replay", "azure2019-invitro-samples/10_inv.csv", "--minutes", "30", "--policy", "fixed:60", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("azure2019-invitro-samples/10_inv.csv: ")


@pytest.mark.parametrize("given", ["nowhere/50_inv.csv", "50_inv.csv"])
def test_a_missing_trace_is_named_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(sim.TraceError, match=rf"^{given}:0:0: no such file \(a relative path is read from {tmp_path}\)$"):
        sim.load_azure(given)
    assert main(["replay", given]) == 2
    assert capsys.readouterr().err.startswith(f"microfaas replay: error: {given}:0:0: no such file")


def test_a_missing_sibling_is_named_beside_the_trace(tmp_path: Path) -> None:
    shutil.copy(DATA / "10_inv.csv", tmp_path / "10_inv.csv")
    shutil.copy(DATA / "10_run.csv", tmp_path / "10_run.csv")
    with pytest.raises(sim.TraceError, match=r"10_inv\.csv:0:0: .*10_mem\.csv is missing"):
        sim.load_azure(tmp_path / "10_inv.csv")


def test_cli_replay_rejects_a_bad_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "c.csv", "time_s,function,duration_s,memory_mb\n0,f,1,128\n")
    assert main(["replay", str(path), "--policy", "lru"]) == 2
    assert "unknown policy" in capsys.readouterr().err
    assert main(["replay", str(path), "--sweep", "10..5"]) == 2


@pytest.mark.slow
def test_the_50_function_day_replays() -> None:
    trace = sim.load_azure(DATA / "50_inv.csv", seed=0)
    report = sim.replay(trace, keep_alive=mf.FixedKeepAlive(600))
    assert report.invocations == 283_330
    assert report.cold_starts + report.warm_starts == 283_330
    assert 0 <= report.cold_start_ratio <= 1 and 0 <= report.p75_app_cold_start_ratio <= 1
    assert all(0 <= r <= 1 for r in report.app_cold_start_ratio.values())
    assert report.failed == {}


def test_adaptive_spares_turn_a_burst_s_cold_starts_warm(tmp_path: Path) -> None:
    # 15 overlapping 6-second calls, one every 4 s: each finds the others busy.
    rows = "".join(f"{4 * k},burst,6,1024\n" for k in range(15))
    trace = sim.load_csv(write(tmp_path / "c.csv", "time_s,function,duration_s,memory_mb\n" + rows))
    without = sim.replay(trace, keep_alive=mf.AdaptiveKeepAlive(spares=False))
    spares = sim.replay(trace, keep_alive=mf.AdaptiveKeepAlive())
    assert without.cold_starts >= 2
    assert spares.cold_starts == 1  # only the first call: each later one finds a spare up
    assert spares.invocations == spares.cold_starts + spares.warm_starts and spares.failed == {}
    assert spares.containers_started >= without.containers_started  # spares cost starts ...
    assert spares.idle_memory_mb_s > 0  # ... and the memory they idle in is counted


def test_spares_wait_for_room_under_memory_pressure_without_evicting(tmp_path: Path) -> None:
    rows = "".join(f"{0.5 * k},f,30,400\n" for k in range(6)) + "0,g,1,400\n"
    trace = sim.load_csv(write(tmp_path / "c.csv", "time_s,function,duration_s,memory_mb\n" + rows))
    nodes = sim.SimulatedNodes(max_nodes=1, node_memory_mb=1200)
    report = sim.replay(trace, keep_alive=mf.AdaptiveKeepAlive(), nodes=nodes)
    assert report.failed == {} and report.invocations == report.cold_starts + report.warm_starts
    assert report.peak_nodes == 1
