"""mf.Files (CSV, JSON Lines and Parquet files as ordered records, a checkpoint per file) and mf.Directory
(a directory's changes as object events): order, new files and rows, bad rows, restarts, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import psutil
import pytest

import microfaas as mf
from conftest import HandlerLog, wait_until

pytestmark = pytest.mark.anyio

LOG = HandlerLog("files")
FAST = mf.Retries(0, initial_delay=0.01, jitter=False)
POLL = 0.02


@pytest.fixture(autouse=True)
def fresh_log():
    LOG.clear()
    yield
    LOG.clear()


def handled() -> list[tuple[str, int, str]]:
    """(file name, row, the row's "n") of each row handled, in log order."""
    out = []
    for line in LOG.lines():
        name, row, n = line.split()
        out.append((name, int(row), n))
    return out


def record_rows(batch: mf.RecordBatch) -> None:
    LOG.write("\n".join(f"{os.path.basename(batch.stream)} {r.sequence} {r.value['n']}" for r in batch))


def fail_on_poison(batch: mf.RecordBatch) -> None:
    if any(r.value["n"] == "poison" for r in batch):
        raise ValueError("poison")
    record_rows(batch)


def write_csv(path: Path, values, header: str = "n,word") -> None:
    path.write_text(header + "\n" + "".join(f"{v},w{v}\n" for v in values))


def write_jsonl(path: Path, values, mode: str = "w") -> None:
    with open(path, mode) as f:
        f.writelines(json.dumps({"n": str(v)}) + "\n" for v in values)


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def files_app(name: str, handler=record_rows, **settings) -> mf.App:
    app = mf.App(name)
    app.function(handler, name="rows", retries=FAST, triggers=[mf.Files(**{"poll_interval": POLL, **settings})])
    return app


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"glob": ""}, "Files: glob must be"),
        ({"glob": "data/"}, "Files: glob must be"),
        ({"glob": "data/a**/x.csv"}, "'\\*\\*' stands alone"),
        ({"glob": "*.csv", "format": "xml"}, "Files: format must be 'csv', 'jsonl' or 'parquet'"),
        ({"glob": "*.csv", "batch_size": 0}, "Files: batch_size must be"),
        ({"glob": "*.csv", "poll_interval": 0}, "Files: poll_interval must be"),
    ],
)
def test_a_bad_glob_format_or_setting_is_a_value_error_at_decoration(settings, message):
    with pytest.raises(ValueError, match=message):
        mf.Files(**settings)


def test_a_bad_directory_setting_is_a_value_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="Directory: path must be a directory"):
        mf.Directory(str(tmp_path / "f"))
    with pytest.raises(ValueError, match="Directory: debounce must be"):
        mf.Directory(str(tmp_path), debounce=0)


# -- files ---------------------------------------------------------------------------------------


async def test_csv_rows_arrive_in_file_order_file_after_file_and_are_checkpointed(tmp_path):
    write_csv(tmp_path / "a.csv", range(7))
    write_csv(tmp_path / "b.csv", range(100, 103))
    (tmp_path / "c.txt").write_text("not matched")
    app = files_app("files-csv", glob=str(tmp_path / "*.csv"), format="csv", batch_size=3)
    async with app.run() as faas:
        await wait_until(lambda: len(handled()) >= 10)
        await faas.drain(timeout=30)
        source = faas.source(f"files:rows:{tmp_path / '*.csv'}")
        assert source.checkpoints() == {str(tmp_path / "a.csv"): 7, str(tmp_path / "b.csv"): 3}
    assert handled() == [("a.csv", i, str(i)) for i in range(7)] + [("b.csv", i, str(100 + i)) for i in range(3)]


async def test_new_files_and_appended_rows_are_picked_up(tmp_path):
    write_jsonl(tmp_path / "1.jsonl", range(3))
    app = files_app("files-new", glob=str(tmp_path / "*.jsonl"), format="jsonl")
    async with app.run():
        await wait_until(lambda: len(handled()) >= 3)
        write_jsonl(tmp_path / "2.jsonl", range(10, 12))
        await wait_until(lambda: len(handled()) >= 5)
        write_jsonl(tmp_path / "1.jsonl", range(3, 5), mode="a")
        await wait_until(lambda: len(handled()) >= 7)
    assert handled() == [
        ("1.jsonl", 0, "0"),
        ("1.jsonl", 1, "1"),
        ("1.jsonl", 2, "2"),
        ("2.jsonl", 0, "10"),
        ("2.jsonl", 1, "11"),
        ("1.jsonl", 3, "3"),
        ("1.jsonl", 4, "4"),
    ]


async def test_rows_that_do_not_decode_go_to_the_dead_letters_with_the_reason(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"n": "0"}\n{"n": oops}\n\n{"n": "3"}\n\xff\xfe\n{"n": "5"}\n')
    (tmp_path / "b.csv").write_text("n,word\n0,a\n1,b,extra\n2,c\n")
    app = mf.App("files-bad")
    app.function(record_rows, name="json_rows", triggers=[mf.Files(str(tmp_path / "*.jsonl"), format="jsonl", poll_interval=POLL)])
    app.function(record_rows, name="csv_rows", triggers=[mf.Files(str(tmp_path / "*.csv"), format="csv", poll_interval=POLL)])
    async with app.run() as faas:
        await wait_until(lambda: len(handled()) >= 5)
        await faas.drain(timeout=30)
        json_letters, csv_letters = faas.dead_letters("json_rows"), faas.dead_letters("csv_rows")
    assert sorted(handled()) == [("a.jsonl", 0, "0"), ("a.jsonl", 3, "3"), ("a.jsonl", 5, "5"), ("b.csv", 0, "0"), ("b.csv", 2, "2")]
    assert [(d.event.sequence, type(d.error)) for d in json_letters] == [(1, mf.SerializationError), (4, mf.SerializationError)]
    assert f"row 1 of {tmp_path / 'a.jsonl'} is not valid JSON" in str(json_letters[0].error)
    assert json_letters[0].event.value == '{"n": oops}' and json_letters[0].source == f"files:{tmp_path / 'a.jsonl'}"
    assert "row 4" in str(json_letters[1].error) and "is not UTF-8" in str(json_letters[1].error)
    assert [d.event.sequence for d in csv_letters] == [1]
    assert "has 3 field(s) where the header has 2" in str(csv_letters[0].error)


@pytest.mark.connectors  # pyarrow is in the connectors extra
async def test_parquet_rows_arrive_in_order(tmp_path):
    import pyarrow
    import pyarrow.parquet as pq

    table = pyarrow.table({"n": [str(i) for i in range(25)], "x": list(range(25))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=10)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    app = files_app("files-parquet", glob=str(tmp_path / "*.parquet"), format="parquet", batch_size=8)
    async with app.run() as faas:
        await wait_until(lambda: len(handled()) >= 25)
        await faas.drain(timeout=30)
        letters = faas.dead_letters("rows")
    assert handled() == [("t.parquet", i, str(i)) for i in range(25)]
    assert len(letters) == 1 and "broken.parquet could not be read as Parquet" in str(letters[0].error)


async def test_a_poison_row_is_bisected_out_and_a_restart_resumes_after_the_checkpoint(tmp_path):
    write_csv(tmp_path / "a.csv", [0, 1, 2, "poison", 4, 5, 6, 7])
    store = str(tmp_path / "faas.db")
    app = files_app("files-restart", handler=fail_on_poison, glob=str(tmp_path / "*.csv"), batch_size=8, max_retries=0)
    async with app.run(store=store) as faas:
        await wait_until(lambda: len(handled()) >= 7)
        await faas.drain(timeout=30)
        assert [d.event.sequence for d in faas.dead_letters("rows")] == [3]
    append(tmp_path / "a.csv", "8,w8\n9,w9\n")
    async with app.run(store=store) as faas:
        await wait_until(lambda: len(handled()) >= 9)
        await faas.drain(timeout=30)
        assert len(faas.dead_letters("rows")) == 1  # kept in the store, not made again
    assert [n for _, _, n in handled()] == ["0", "1", "2", "4", "5", "6", "7", "8", "9"]


# -- kill -9 --------------------------------------------------------------------------------------


def slow_rows(batch: mf.RecordBatch) -> None:
    import time

    time.sleep(0.03)
    record_rows(batch)


def child(folder: str, store: str) -> None:
    """Read folder/*.jsonl slowly on ``store`` until killed (with MF_DRAIN: until every row is handled)."""

    async def main() -> None:
        app = mf.App("files-kill")
        app.function(
            slow_rows, name="rows", triggers=[mf.Files(os.path.join(folder, "*.jsonl"), format="jsonl", batch_size=5, poll_interval=POLL)]
        )
        async with app.run(store=store) as faas:
            print("ready", flush=True)
            if os.environ.get("MF_DRAIN"):
                source = faas.source(f"files:rows:{os.path.join(folder, '*.jsonl')}")
                await wait_until(lambda: sum(source.checkpoints().values()) >= 300, 120)
                await faas.drain(timeout=30)
                print("drained", flush=True)
                return
            await anyio.sleep_forever()

    anyio.run(main)


def _spawn(folder: Path, store: Path, **env: str) -> subprocess.Popen[str]:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_files as t; t.child({str(folder)!r}, {str(store)!r})"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, **env})


@pytest.mark.slow  # a few seconds; CI runs it with -m slow
async def test_a_killed_platform_resumes_every_file_after_its_checkpoint(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_jsonl(folder / f"{i}.jsonl", range(i * 100, i * 100 + 100))
    store = tmp_path / "faas.db"
    first = _spawn(folder, store)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "ready"
        await wait_until(lambda: len(handled()) >= 60)
        family = psutil.Process(first.pid).children(recursive=True)
        os.kill(first.pid, signal.SIGKILL)  # its containers die with it (PR_SET_PDEATHSIG)
        psutil.wait_procs(family, timeout=10)
    finally:
        first.kill()
        first.wait()
    before = len(handled())
    assert before < 300
    second = _spawn(folder, store, MF_DRAIN="1")
    try:
        out, _ = await anyio.to_thread.run_sync(lambda: second.communicate(timeout=120))
    finally:
        second.kill()
        second.wait()
    assert "drained" in out
    rows = handled()
    assert {(name, row) for name, row, _ in rows} == {(f"{i}.jsonl", r) for i in range(3) for r in range(100)}
    assert len(rows) - 300 <= 5 * 2  # only the batch in flight at the kill came twice (at least once, not from the start)
    for i in range(3):  # per file, in file order (a repeated batch starts again where it had)
        seq = [row for name, row, _ in rows if name == f"{i}.jsonl"]
        assert list(dict.fromkeys(seq)) == list(range(100))


# -- directory -------------------------------------------------------------------------------------


def record_object(event: mf.ObjectEvent) -> None:
    LOG.write(f"{event.kind} {os.path.basename(event.path)} {event.size}")


@pytest.mark.connectors  # watchfiles is in the connectors extra
async def test_created_modified_and_deleted_files_become_object_events(tmp_path):
    app = mf.App("directory")
    app.function(record_object, name="on_object", triggers=[mf.Directory(str(tmp_path))])
    async with app.run() as faas:
        (tmp_path / "a.txt").write_text("hello")
        await wait_until(lambda: any(line.startswith("created a.txt") for line in LOG.lines()))
        append(tmp_path / "a.txt", " world")
        await wait_until(lambda: "modified a.txt 11" in LOG.lines())
        (tmp_path / "a.txt").unlink()
        await wait_until(lambda: "deleted a.txt None" in LOG.lines())
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "b.bin").write_bytes(b"123")
        await wait_until(lambda: any(line.startswith("created b.bin") for line in LOG.lines()))
        await faas.drain(timeout=30)
    assert not any(" sub " in line for line in LOG.lines())  # a folder is not an object


@pytest.mark.connectors
async def test_a_missing_directory_fails_app_run_naming_it(tmp_path):
    app = mf.App("directory-missing")
    app.function(record_object, name="on_object", triggers=[mf.Directory(str(tmp_path / "nope"))])
    with pytest.raises(mf.ConnectorUnreachable, match=r"on_object: Directory .*nope.* does not exist"):
        async with app.run():
            pass


def record_object_or_fail(event: mf.ObjectEvent) -> None:
    record_object(event)
    if os.path.basename(event.path).startswith("bad"):
        raise RuntimeError(f"cannot take {event.path}")


def directory_app(folder: Path) -> mf.App:
    app = mf.App("directory-restart")
    app.function(record_object_or_fail, name="on_object", retries=FAST, triggers=[mf.Directory(str(folder))])
    return app


def objects(lines: list[str]) -> set[tuple[str, str]]:
    """(kind, file name) of each object event logged."""
    return {(line.split()[0], line.split()[1]) for line in lines}


@pytest.mark.connectors
async def test_changes_made_while_the_platform_was_down_are_delivered_after_a_restart(tmp_path):
    folder = tmp_path / "bucket"
    (folder / "sub").mkdir(parents=True)
    (folder / "kept.txt").write_text("same")
    (folder / "edited.txt").write_text("v1")
    (folder / "removed.txt").write_text("x")
    store = tmp_path / "faas.db"
    async with app_run(directory_app(folder), store) as faas:
        await faas.drain(timeout=30)
    assert LOG.lines() == []  # the first platform on a store takes the directory as it is
    (folder / "edited.txt").write_text("version two")
    (folder / "removed.txt").unlink()
    (folder / "new.txt").write_text("hello")
    (folder / "sub" / "deep.bin").write_bytes(b"123")
    (folder / "bad.txt").write_text("fails")
    (folder / "brief.txt").write_text("made and removed while down")
    (folder / "brief.txt").unlink()
    async with app_run(directory_app(folder), store) as faas:
        await faas.drain(timeout=30)
        assert [os.path.basename(letter.event.path) for letter in faas.dead_letters("on_object")] == ["bad.txt"]
    assert objects(LOG.lines()) == {
        ("modified", "edited.txt"),
        ("deleted", "removed.txt"),
        ("created", "new.txt"),
        ("created", "deep.bin"),
        ("created", "bad.txt"),
    }
    assert "modified edited.txt 11" in LOG.lines()
    LOG.clear()
    async with app_run(directory_app(folder), store) as faas:  # nothing changed since: nothing again, the dead letter kept
        (folder / "live.txt").write_text("seen while running")
        await wait_until(lambda: LOG.lines() != [])
        await faas.drain(timeout=30)
        assert len(faas.dead_letters("on_object")) == 1
    assert objects(LOG.lines()) == {("created", "live.txt")}
    LOG.clear()
    (folder / "live.txt").unlink()
    async with app_run(directory_app(folder), store) as faas:  # the live change was listed: only the deletion since
        await faas.drain(timeout=30)
    assert objects(LOG.lines()) == {("deleted", "live.txt")}


@pytest.mark.connectors
async def test_on_the_memory_store_changes_made_while_down_are_not_replayed(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    async with directory_app(tmp_path).run() as faas:
        await faas.drain(timeout=30)
    (tmp_path / "b.txt").write_text("two")
    async with directory_app(tmp_path).run() as faas:
        await faas.drain(timeout=30)
    assert LOG.lines() == []


def app_run(app: mf.App, store: Path):
    return app.run(store=str(store))
