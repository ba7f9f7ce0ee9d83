"""Every code block in README.md and docs/*.md runs as written, with sybil.

How a block is run depends on its fence's language:

- ``python``: a complete program. Each block runs on its own, as ``python block.py`` would
  run it (a fresh namespace named ``__main__``, the repository as the working directory).
  A block whose first line is ``# examples/<path>`` shows that file instead, and must be
  identical to it (the suite runs the file: examples/testing_project's tests, for one).
  ``toml`` blocks show files the same way.
- ``pycon``: a session of ``python -m asyncio``, the REPL that takes top-level ``await``
  and ``async with`` (and has ``asyncio`` imported). A page's ``pycon`` blocks are one
  session: names carry over from block to block. Each ``>>>`` example's output is
  compared with what the page shows (doctest, with ``...`` matching anything).
- ``console`` and ``sh``: shell sessions. They are reported as skipped, with the command;
  tests/test_cli.py runs what the command line promises.
- ``text``: output or a diagram, not code.

``<!-- skip: next "why" -->`` right before a block skips it, visibly, with that reason:
for a deliberate fragment, or for a block that needs something the test extra does not
install (``<!-- skip: next if(not HAS_RAY, reason="needs the ray extra") -->``).
A fence with no language, or one not listed above, fails ``test_every_block_has_a_known_language``.
"""

from __future__ import annotations

import ast
import asyncio
import doctest
import importlib.util
import inspect
import unittest
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from sybil import Document, Example, Region, Sybil
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.evaluators.python import pad
from sybil.parsers.abstract.doctest import DocTestStringParser
from sybil.parsers.markdown import CodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "pycon", "toml", "console", "sh", "text"}

# What a skip condition may test (the namespace of `skip: next if(...)`).
CONDITIONS = {
    "HAS_RAY": importlib.util.find_spec("ray") is not None,
    "HAS_CONNECTORS": all(importlib.util.find_spec(m) is not None for m in ("redis", "watchfiles", "pyarrow")),
}


def run_program(example: Example) -> None:
    """A ``python`` block: compile and run it alone, as a script (or check it is the file it names)."""
    if shows_a_file(example):
        return
    source = pad(example.parsed, example.line + example.parsed.line_offset)
    code = compile(source, example.path, "exec", dont_inherit=True)
    exec(code, {"__name__": "__main__", "__file__": example.path})


def shows_a_file(example: Example) -> bool:
    """A block whose first line is ``# examples/...`` shows that file of the repository.

    It must be the file, byte for byte: the suite runs the file (a project's tests, say),
    so the page shows code that runs.
    """
    text = str(example.parsed)
    first, _, rest = text.partition("\n")
    if not first.startswith("# examples/"):
        return False
    path = ROOT / first[2:].strip()
    assert path.is_file(), f"{example.path}:{example.line}: the block shows {path}, which does not exist"
    assert rest == path.read_text(encoding="utf-8"), f"{example.path}:{example.line}: the block differs from {path}"
    return True


def check_file(example: Example) -> None:
    """A ``toml`` block: it must show a file of the repository (``shows_a_file``)."""
    assert shows_a_file(example), f"{example.path}:{example.line}: a toml block must start with '# examples/<the file it shows>'"


class AsyncDocTestEvaluator(DocTestEvaluator):
    """doctest's checks, with ``python -m asyncio``'s top-level await.

    An example whose code awaits is compiled with ``PyCF_ALLOW_TOP_LEVEL_AWAIT`` (as that
    REPL compiles it) and run to completion on the page's event loop; doctest then sees
    its output and its exception as for any other example.
    """

    def __call__(self, sybil_example: Example) -> str:
        example: doctest.Example = sybil_example.parsed
        namespace = sybil_example.namespace
        try:
            code = compile(example.source, sybil_example.path, "single", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        except SyntaxError:
            return super().__call__(sybil_example)  # doctest reports it as the REPL would
        if not code.co_flags & inspect.CO_COROUTINE:
            return super().__call__(sybil_example)
        runner: asyncio.Runner = namespace.setdefault("__doc_runner__", asyncio.Runner())
        namespace["__doc_await__"] = lambda: runner.run(eval(code, namespace))
        awaited = doctest.Example("__doc_await__()\n", example.want, example.exc_msg, example.lineno, example.indent, example.options)
        original, sybil_example.parsed = sybil_example.parsed, awaited
        try:
            return super().__call__(sybil_example)
        finally:
            sybil_example.parsed = original


class SessionParser:
    """``pycon`` blocks: each ``>>>`` example is a region, evaluated in the page's session."""

    def __init__(self) -> None:
        self.blocks = CodeBlockParser("pycon")
        self.examples = DocTestStringParser(AsyncDocTestEvaluator(doctest.ELLIPSIS))

    def __call__(self, document: Document) -> Iterator[Region]:
        for block in self.blocks(document):
            source = block.parsed
            for region in self.examples(source, document.path):
                region.adjust(block, source)
                yield region


def skip_shell(example: Example) -> None:
    first = next((line for line in str(example.parsed).splitlines() if line.strip()), "")
    raise unittest.SkipTest(f"a shell session, not run: {first.strip()[:80]}")


SYBIL = Sybil(
    parsers=[
        SkipParser(),
        CodeBlockParser("python", run_program),
        CodeBlockParser("toml", check_file),
        SessionParser(),
        CodeBlockParser("console", skip_shell),
        CodeBlockParser("sh", skip_shell),
    ],
)


def _documents() -> dict[Path, Document]:
    documents = {}
    for page in PAGES:
        document = SYBIL.parse(page)
        document.namespace.update(CONDITIONS)
        document.namespace["asyncio"] = asyncio  # `python -m asyncio` has it imported
        documents[page] = document
    return documents


DOCUMENTS = _documents()
# docs/ray.md starts a local Ray cluster: its blocks run with the Ray tests (`pytest -m ray`).
EXAMPLES = [
    pytest.param(example, id=f"{page.relative_to(ROOT)}:{example.line}", marks=[pytest.mark.ray] if page.name == "ray.md" else [])
    for page, document in DOCUMENTS.items()
    for example in document.examples()
]


@pytest.fixture(scope="module", autouse=True)
def close_sessions() -> Iterator[None]:
    yield
    for document in DOCUMENTS.values():
        runner = document.namespace.pop("__doc_runner__", None)
        if runner is not None:
            runner.close()


@pytest.mark.parametrize("example", EXAMPLES)
def test_block(example: Example, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    try:
        example.evaluate()
    except unittest.SkipTest as skip:  # sybil's skips: report them where the block is
        pytest.skip(f"{Path(example.path).relative_to(ROOT)}:{example.line}: {skip}")
    finally:
        if Path(example.path).name == "ray.md" and CONDITIONS["HAS_RAY"]:
            import ray

            ray.shutdown()  # the cluster the block started, so no process outlives the test


def _fences(page: Path) -> Iterable[tuple[int, str]]:
    document = Document(page.read_text(encoding="utf-8"), str(page))
    lexer = FencedCodeBlockLexer(language=r".*", mapping={"language": "language"})
    for region in lexer(document):
        yield document.text.count("\n", 0, region.start) + 1, str(region.lexemes["language"]).strip()


def test_every_block_has_a_known_language() -> None:
    unknown = [f"{page.relative_to(ROOT)}:{line}: {language or '(none)'}" for page in PAGES for line, language in _fences(page)]
    unknown = [u for u in unknown if u.rpartition(": ")[2] not in LANGUAGES]
    assert not unknown, f"fences need one of {sorted(LANGUAGES)}: {unknown}"
