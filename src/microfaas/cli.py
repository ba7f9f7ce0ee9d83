"""The ``microfaas`` command (also ``python -m microfaas``).

::

    microfaas serve MODULE:APP [--host 127.0.0.1] [--port 8000] [--invoke-api] [--token T]
    microfaas invoke MODULE:APP NAME [ARG ...]          # a platform of its own, in this process
    microfaas invoke --url http://127.0.0.1:8000 NAME [ARG ...]   # a running `microfaas serve`
    microfaas demo
    microfaas replay TRACE [--policy adaptive] [--compare hybrid] [--sweep 60..7200] [--plot out.png]

``MODULE:APP`` is ``shop:app`` (a module importable from the current directory),
``shop`` (for ``shop:app``), or a file: ``./shop.py`` or ``path/to/shop.py:app``.

Every error is one line on stderr that names the problem and the fix. Exit
status: 0 when it worked; 1 when the platform (or the server) raised a
``FaaSError``, whose ``{"error", "message"}`` goes to stderr as JSON, or when the
server could not be reached; 2 on a usage error (a bad option, a module that
cannot be found, arguments that do not fit, a missing extra, a port in use).
"""

from __future__ import annotations

import argparse
import errno
import functools
import importlib
import json
import logging
import os
import signal
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

from .app import App
from .errors import FaaSError, SerializationError, UnknownFunction
from .http import DEFAULT_MAX_BODY, check_arguments, error_payload, parse_invoke_body

__all__ = ["build_parser", "load_app", "main"]

TOKEN_ENV = "MICROFAAS_TOKEN"


HTTP_EXTRA = "serving HTTP needs the http extra: pip install 'microfaas[http]'"
# What binding the server's socket raises for a bad --host or --port (and nothing else does).
LISTEN_ERRORS = frozenset({errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL})


class UsageError(Exception):
    """A command line that cannot work: one line on stderr, exit status 2."""


class CommandFailed(Exception):
    """The command ran and failed, for a reason that is not a ``FaaSError``: one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line that says where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def load_app(target: str) -> App:
    """The ``mf.App`` named by ``module:attribute`` (``module`` alone means ``module:app``).

    The module is importable from the current directory (put on ``sys.path`` first,
    as ``python -m`` does), or is a file: ``./shop.py`` or ``path/to/shop.py:app``,
    whose directory goes on ``sys.path`` so the containers import it the same way.

    :raises UsageError: the module, file or attribute is missing, or is not an ``mf.App``.
    """
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise UsageError(f"expected MODULE:APP (shop:app) or FILE.py:APP (./shop.py:app), got {target!r}")
    if module_name.endswith(".py") or os.sep in module_name or Path(module_name).is_file():
        module_name = _module_of_file(module_name)
    elif os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(
                f"no module named {module_name!r} in the current directory or on sys.path; "
                "name a module of the current directory (shop:app for ./shop.py) or a file (path/to/shop.py:app)"
            ) from None
        raise
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(obj, App):
        raise UsageError(f"{target} is a {type(obj).__name__}, not a microfaas App (mf.App); name the App, as in {module_name}:app")
    return obj


def _module_of_file(text: str) -> str:
    """The module name of the file ``text`` names, with its directory put first on ``sys.path``."""
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"no file {text!r}; name a module (shop:app) or an existing file (path/to/shop.py:app)")
    if path.suffix != ".py":
        raise UsageError(f"{text!r} is not a .py file; name a module (shop:app) or a Python file (path/to/shop.py:app)")
    if not path.stem.isidentifier():
        raise UsageError(f"{text!r}: {path.stem!r} cannot be imported by name; rename the file (letters, digits and _)")
    directory = str(path.resolve().parent)
    if directory in sys.path:
        sys.path.remove(directory)
    sys.path.insert(0, directory)
    return path.stem


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="microfaas",
        description="microfaas: a Function-as-a-Service runtime inside your Python program.",
        epilog=(
            "MODULE:APP names an mf.App: shop:app (shop.py in the current directory), shop (for shop:app), "
            "or a file, ./shop.py or path/to/shop.py:app.\n"
            "Exit status: 0 ok; 1 when the platform or server raised an error (JSON on stderr) or the server "
            "could not be reached; 2 on a usage error."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run an app and serve it over HTTP (uvicorn)",
        description=(
            "Start the app's platform and serve it over HTTP until Ctrl+C or SIGTERM: its mf.Http routes and "
            "GET /healthz, and with --invoke-api also GET /v1/functions, GET /v1/functions/NAME and "
            "POST /v1/functions/NAME/invoke. Prints 'serving ... on http://HOST:PORT' once it accepts connections."
        ),
        epilog=(
            "example:\n  microfaas serve shop:app --invoke-api --port 8000\n"
            '  curl -H "Authorization: Bearer $MICROFAAS_TOKEN" --json \'{"args": [2, 3]}\' '
            "http://127.0.0.1:8000/v1/functions/add/invoke"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("target", metavar="MODULE:APP", help="the mf.App to run: shop:app, shop, ./shop.py or path/to/shop.py:app")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s; use 0.0.0.0 to listen on every interface)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s; 0 picks a free one)")
    serve.add_argument("--invoke-api", action="store_true", help="serve the invoke API under /v1/functions (off by default)")
    serve.add_argument(
        "--expose",
        action="append",
        metavar="NAME",
        help="a function the invoke API may call; repeat for several (default: all of them)",
    )
    serve.add_argument(
        "--token",
        help=f"bearer token the invoke API requires (default: ${TOKEN_ENV} when set; prefer it, a command line is visible to ps)",
    )
    serve.add_argument("--debug", action="store_true", help="include remote tracebacks in FunctionError responses")
    serve.add_argument(
        "--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES", help="largest request body (default: %(default)s)"
    )
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level (default: %(default)s)"
    )
    serve.set_defaults(run=_serve, parser=serve)

    invoke = commands.add_parser(
        "invoke",
        help="invoke one function, print its result as JSON (on a platform of its own, or a server with --url)",
        usage="%(prog)s [-h] [--url URL [--token TOKEN]] [--json JSON] [--debug] [MODULE:APP] NAME [ARG ...]",
        description=(
            "Invoke function NAME once and print its result as JSON on stdout.\n\n"
            "Without --url, it starts a platform of its own for MODULE:APP, in this process, makes the\n"
            "call in a container and stops. It does not talk to a running `microfaas serve` (whose stats\n"
            "do not move).\n"
            "With --url, it calls NAME through the invoke API of the `microfaas serve --invoke-api`\n"
            "running at URL (POST URL/v1/functions/NAME/invoke). Leave MODULE:APP out: the server\n"
            "knows its app.\n\n"
            "Each ARG is one positional argument, read as JSON (2, [1, 2], true, null, '\"2\"'), or as a\n"
            'string when it is not JSON (ada). --json gives them all instead: {"args": [...], "kwargs": {...}}.\n'
            'On a platform error, {"error": ..., "message": ...} goes to stderr and the status is 1.'
        ),
        epilog=(
            "examples:\n  microfaas invoke shop:app add 2 3\n"
            '  microfaas invoke shop:app add --json \'{"args": [2], "kwargs": {"b": 3}}\'\n'
            "  microfaas invoke --url http://127.0.0.1:8000 add 2 3"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    invoke.add_argument("words", nargs="+", metavar="[MODULE:APP] NAME [ARG ...]", help=argparse.SUPPRESS)
    invoke.add_argument("--url", help="call the function on the `microfaas serve --invoke-api` running at URL, e.g. http://127.0.0.1:8000")
    invoke.add_argument(
        "--token",
        help=f"with --url: the bearer token the server's invoke API requires (default: ${TOKEN_ENV} when set; prefer it)",
    )
    invoke.add_argument(
        "--json",
        dest="payload",
        metavar="JSON",
        help='the arguments, {"args": [...], "kwargs": {...}}, instead of ARGs; "-" reads them from stdin',
    )
    invoke.add_argument("--debug", action="store_true", help="without --url: include the remote traceback when the function raises")
    invoke.set_defaults(run=_invoke, parser=invoke)

    demo = commands.add_parser(
        "demo",
        help="start a platform, call a few functions, show cold and warm starts",
        description=(
            "Start a platform on the default LocalNodes with the demo app (microfaas.demo), invoke its functions "
            "cold and warm, and print a table of what happened: cold or warm start and latency per call."
        ),
    )
    demo.set_defaults(run=_demo, parser=demo)

    replay = commands.add_parser(
        "replay",
        help="replay an invocation trace under keep-alive policies and compare them",
        description=(
            "Replay a trace through the real scheduler on simulated nodes in virtual time, under --policy, "
            "each --compare policy and the --baseline (and a fixed-TTL --sweep), and print a table: cold starts, "
            "cold-start ratio, p75 per-app cold-start ratio, idle memory kept warm (GB·h), node-hours, total "
            "wait (s), evictions, and the p75 and idle memory of each policy as a multiple of the baseline's. "
            "PATH is an Azure 2019 N_inv.csv (with N_run.csv and N_mem.csv beside it) or a CSV with columns "
            "time_s,function,duration_s,memory_mb; a relative PATH is read from the current directory. "
            "Policies: fixed:TTL, hybrid, greedydual, adaptive[:VALUE_S], never."
        ),
        epilog=(
            "example (from the repository's root):\n"
            "  microfaas replay data/azure2019-invitro-samples/50_inv.csv --compare hybrid --compare never "
            "--sweep 60..7200 --plot replay.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("path", metavar="PATH", help="the trace: N_inv.csv (Azure 2019) or a calls CSV")
    replay.add_argument("--policy", default="adaptive", help="the policy to replay (default: %(default)s, AdaptiveKeepAlive)")
    replay.add_argument("--compare", action="append", default=[], metavar="POLICY", help="another policy; repeat for several")
    replay.add_argument(
        "--baseline",
        default="fixed:600",
        metavar="POLICY",
        help="the policy the 'vs' columns divide by, replayed too (default: %(default)s, a 10-minute keep-alive)",
    )
    replay.add_argument("--sweep", metavar="LO..HI", help="also replay fixed TTLs from LO to HI seconds (log-spaced)")
    replay.add_argument("--sweep-points", type=int, default=8, metavar="N", help="TTLs in the sweep (default: %(default)s)")
    replay.add_argument("--seed", type=int, default=0, help="seed for arrivals, durations and memory (default: %(default)s)")
    replay.add_argument("--arrivals", choices=["uniform", "poisson"], default="uniform", help="spreading within a minute")
    replay.add_argument("--minutes", type=int, metavar="N", help="replay only the first N minutes of an Azure trace")
    replay.add_argument("--node-memory-mb", type=int, metavar="MB", help="node capacity (default: the replay's, no pressure)")
    replay.add_argument("--max-nodes", type=int, metavar="N", help="nodes that may be held (default: the replay's)")
    replay.add_argument(
        "--plot", metavar="PNG", help="draw cold-start ratios against idle memory (needs matplotlib: pip install 'microfaas[plot]')"
    )
    replay.add_argument("--json", dest="json_out", metavar="PATH", help="write the reports as JSON")
    replay.add_argument("--quiet", action="store_true", help="no progress on stderr")
    replay.set_defaults(run=_replay, parser=replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``microfaas`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except BaseException as raised:  # sorted below; what is not ours is raised again
        exc = _single(raised)
        if isinstance(exc, UsageError):
            print(f"{args.parser.prog}: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, _RemoteError):
            print(exc, file=sys.stderr)  # the server's {"error", "message"}, as a local FaaSError's
            return 1
        if isinstance(exc, CommandFailed):
            print(f"{args.parser.prog}: error: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, FaaSError):
            _, payload, _ = error_payload(exc, debug=getattr(args, "debug", False))
            print(json.dumps(payload), file=sys.stderr)
            return 1
        if isinstance(exc, BrokenPipeError):
            # stdout was closed early (`microfaas demo | head`): not an error worth a traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        raise


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# -- serve ---------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    if args.token is not None and not args.invoke_api:
        raise UsageError("--token protects the invoke API; add --invoke-api")
    if args.expose and not args.invoke_api:
        raise UsageError("--expose names functions for the invoke API; add --invoke-api")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")
    try:
        import uvicorn  # noqa: F401 - only: is it there?
    except ImportError:
        raise UsageError(HTTP_EXTRA) from None
    app = load_app(args.target)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    options: dict[str, Any] = {
        "invoke_api": args.invoke_api,
        "expose": args.expose,
        "token": token,
        "debug": args.debug,
        "max_body": args.max_body,
        "uvicorn_options": {"log_level": args.log_level},
    }
    if args.expose:
        unknown = sorted(set(args.expose) - set(app.functions))
        if unknown:
            raise UsageError(f"--expose names no function {', '.join(unknown)}; {app.name} has: {', '.join(sorted(app.functions))}")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        anyio.run(_serve_until_signal, app, args.host, args.port, options, backend="asyncio")
    except BaseException as raised:
        exc = _single(raised)
        if isinstance(exc, socket.gaierror) or (isinstance(exc, OSError) and exc.errno in LISTEN_ERRORS):
            raise _listen_error(exc, args.host, args.port) from None
        raise
    return 0


def _listen_error(exc: OSError, host: str, port: int) -> UsageError:
    """Why ``host:port`` could not be listened on, and what to do."""
    if exc.errno == errno.EADDRINUSE:
        return UsageError(f"port {port} on {host} is already in use; stop what listens there, or pick another --port (0: a free one)")
    if exc.errno == errno.EACCES:
        return UsageError(f"no permission to listen on port {port}; pick a --port above 1023 (0: a free one)")
    return UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port")


async def _serve_until_signal(app: App, host: str, port: int, options: dict[str, Any]) -> None:
    async with anyio.create_task_group() as outer:
        outer.start_soon(_cancel_on_signal, outer.cancel_scope)
        async with app.run() as faas, anyio.create_task_group() as tg:
            bound = await tg.start(functools.partial(faas.serve_http, host, port, **options))
            where = f"[{host}]" if ":" in host else host
            api = " (invoke API on)" if options["invoke_api"] else ""
            print(f"microfaas: serving app {app.name!r} on http://{where}:{bound}{api}; Ctrl+C stops", flush=True)


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"microfaas: {signal.Signals(signum).name}, stopping", file=sys.stderr, flush=True)
            scope.cancel()
            return


# -- invoke --------------------------------------------------------------------------------------


def _invoke(args: argparse.Namespace) -> int:
    words: list[str] = args.words
    if args.url is None:
        if args.token is not None:
            raise UsageError("--token is for the server at --url; without --url the call runs on a platform of its own")
        if len(words) < 2:
            raise UsageError(
                "name the app and the function: microfaas invoke MODULE:APP NAME [ARG ...] (or --url URL NAME to call a running server)"
            )
        target, name, positional = words[0], words[1], words[2:]
    else:
        if args.debug:
            raise UsageError("--debug is for a platform of its own; with --url, the server's --debug decides")
        if len(words) >= 2 and ":" in words[0]:
            raise UsageError(f"with --url, name only the function (the server knows its app): microfaas invoke --url URL {words[1]}")
        target, name, positional = "", words[0], words[1:]
    call_args, call_kwargs = _arguments(args.payload, positional)
    if args.url is not None:
        result = _invoke_url(args.url, name, call_args, call_kwargs, args.token if args.token is not None else os.environ.get(TOKEN_ENV))
    else:
        app = load_app(target)
        spec = app.functions.get(name)
        if spec is None:
            raise UnknownFunction(f"app {app.name!r} has no function {name!r}; it has: {', '.join(sorted(app.functions)) or 'none'}")
        try:
            check_arguments(spec, call_args, call_kwargs)
        except ValueError as exc:
            raise UsageError(f"{name}: {exc}") from None
        result = anyio.run(_invoke_once, app, name, call_args, call_kwargs, backend="asyncio")
    try:
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{name}: the result is not JSON: {exc}") from None
    print(text)
    return 0


def _arguments(payload: str | None, positional: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """The call's arguments: ``--json`` (``-``: stdin), or each ARG read as JSON, else as a string."""
    if payload is not None:
        if positional:
            raise UsageError(f"give the arguments as ARGs or as --json, not both (got ARGs {' '.join(positional)})")
        raw = sys.stdin.read() if payload == "-" else payload
        try:
            return parse_invoke_body(raw.encode("utf-8"))
        except ValueError as exc:
            raise UsageError(f"--json: {exc}") from None
    values: list[Any] = []
    for word in positional:
        try:
            values.append(json.loads(word))
        except ValueError:
            values.append(word)
    return values, {}


async def _invoke_once(app: App, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    async with app.run() as faas:
        return await faas.invoke(name, *args, **kwargs)


def _invoke_url(url: str, name: str, args: list[Any], kwargs: dict[str, Any], token: str | None) -> Any:
    """Call ``name`` through the invoke API at ``url``; its result, or the error the server answered."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--url must be an http:// or https:// address, such as http://127.0.0.1:8000; got {url!r}")
    endpoint = f"{url.rstrip('/')}/v1/functions/{urllib.parse.quote(name, safe='')}/invoke"
    headers = {"content-type": "application/json", "accept": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(endpoint, data=json.dumps({"args": args, "kwargs": kwargs}).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise CommandFailed(f"cannot reach {url}: {reason}; is `microfaas serve MODULE:APP --invoke-api` running there?") from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or ("result" not in answer and "error" not in answer):
        raise CommandFailed(f"{url} answered {status} without a microfaas invoke API reply; is it a `microfaas serve --invoke-api`?")
    if status == 200 and "result" in answer:
        return answer["result"]
    error = answer.get("error")
    if status == 401:
        fix = "the token was refused; check --token or $" + TOKEN_ENV if token else f"pass --token or set ${TOKEN_ENV}"
        raise UsageError(f"{url}'s invoke API needs a bearer token: {fix}")
    if status == 404 and error == "NotFound":
        raise UsageError(f"{url} does not serve the invoke API; start the server with --invoke-api")
    if status == 400:
        raise UsageError(str(answer.get("message", "the server refused the arguments")))
    raise _RemoteError(answer)


class _RemoteError(CommandFailed):
    """An error the server answered: its JSON body goes to stderr as a local ``FaaSError``'s would."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(json.dumps(answer))


# -- demo ----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    anyio.run(demo.run, backend="asyncio")
    return 0


# -- replay --------------------------------------------------------------------------------------


def _replay(args: argparse.Namespace) -> int:
    from . import replaycli

    try:
        return replaycli.run(args)
    except ValueError as exc:  # bad policy spec, sweep or trace file
        raise UsageError(str(exc)) from None
