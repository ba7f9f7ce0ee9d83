"""The ``microfaas`` command (also ``python -m microfaas``).

::

    microfaas serve module:app [--host 127.0.0.1] [--port 8000] [--invoke-api] [--token T]
    microfaas invoke module:app NAME --json '{"args": [1, 2]}'
    microfaas demo
    microfaas replay TRACE [--policy hybrid] [--compare fixed:600] [--sweep 60..7200] [--plot out.png] [--json out.json]

Exit status: 0 when it worked, 1 when the platform raised a ``FaaSError`` (its
``{"error", "message"}`` goes to stderr as JSON), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from .app import App
from .errors import FaaSError, UnknownFunction
from .http import DEFAULT_MAX_BODY, check_arguments, error_payload, parse_invoke_body

__all__ = ["build_parser", "load_app", "main"]

TOKEN_ENV = "MICROFAAS_TOKEN"


class UsageError(Exception):
    """A command line that cannot work: exit status 2."""


def load_app(target: str) -> App:
    """The ``mf.App`` named by ``module:attribute`` (``module`` alone means ``module:app``).

    The current directory is put on ``sys.path`` first, as ``python -m`` does.

    :raises UsageError: the module or attribute is missing, or is not an ``mf.App``.
    """
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise UsageError(f"expected module:app, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(f"no module named {module_name!r} (looked in the current directory and on sys.path)") from None
        raise
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(obj, App):
        raise UsageError(f"{target} is a {type(obj).__name__}, not a microfaas App (mf.App)")
    return obj


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microfaas",
        description="microfaas: a Function-as-a-Service runtime inside your Python program.",
        epilog="Exit status: 0 ok, 1 when the platform raised an error (JSON on stderr), 2 on a usage error.",
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
    serve.add_argument("target", metavar="MODULE:APP", help="the mf.App to run, e.g. shop:app (the current directory is importable)")
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
        help="run an app, invoke one function, print its result as JSON",
        description=(
            "Start the app's platform, invoke function NAME once in a container, print the result as JSON on stdout "
            'and stop. On a platform error, print {"error": ..., "message": ...} on stderr and exit 1.'
        ),
        epilog="example:\n  microfaas invoke shop:app add --json '{\"args\": [2, 3]}'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    invoke.add_argument("target", metavar="MODULE:APP", help="the mf.App to run, e.g. shop:app")
    invoke.add_argument("name", metavar="NAME", help="the function to invoke")
    invoke.add_argument(
        "--json",
        dest="payload",
        default="{}",
        metavar="JSON",
        help='the arguments, {"args": [...], "kwargs": {...}}; "-" reads them from stdin (default: no arguments)',
    )
    invoke.add_argument("--debug", action="store_true", help="include the remote traceback when the function raises")
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
            "Replay a trace through the real scheduler on simulated nodes in virtual time, under --policy and "
            "each --compare policy (and a fixed-TTL --sweep), and print a table: cold-start ratio, p75 per-app "
            "cold-start ratio, idle memory (MB·s), node-seconds, wait. PATH is an Azure 2019 N_inv.csv (with "
            "N_run.csv and N_mem.csv beside it) or a CSV with columns time_s,function,duration_s,memory_mb. "
            "Policies: fixed:TTL, hybrid, greedydual, adaptive[:VALUE_S], never."
        ),
        epilog=(
            "example:\n  microfaas replay data/50_inv.csv --policy hybrid --compare fixed:600 --compare adaptive "
            "--sweep 60..7200 --plot out.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("path", metavar="PATH", help="the trace: N_inv.csv (Azure 2019) or a calls CSV")
    replay.add_argument("--policy", default="hybrid", help="the policy to replay (default: %(default)s)")
    replay.add_argument("--compare", action="append", default=[], metavar="POLICY", help="another policy; repeat for several")
    replay.add_argument("--sweep", metavar="LO..HI", help="also replay fixed TTLs from LO to HI seconds (log-spaced)")
    replay.add_argument("--sweep-points", type=int, default=8, metavar="N", help="TTLs in the sweep (default: %(default)s)")
    replay.add_argument("--seed", type=int, default=0, help="seed for arrivals, durations and memory (default: %(default)s)")
    replay.add_argument("--arrivals", choices=["uniform", "poisson"], default="uniform", help="spreading within a minute")
    replay.add_argument("--minutes", type=int, metavar="N", help="replay only the first N minutes of an Azure trace")
    replay.add_argument("--node-memory-mb", type=int, metavar="MB", help="node capacity (default: the replay's, no pressure)")
    replay.add_argument("--max-nodes", type=int, metavar="N", help="nodes that may be held (default: the replay's)")
    replay.add_argument("--plot", metavar="PNG", help="draw cold-start ratio against idle memory (needs matplotlib)")
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
    except UsageError as exc:
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except FaaSError as exc:
        _, payload, _ = error_payload(exc, debug=getattr(args, "debug", False))
        print(json.dumps(payload), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # stdout was closed early (`microfaas demo | head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


# -- serve ---------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    if args.token is not None and not args.invoke_api:
        raise UsageError("--token protects the invoke API; add --invoke-api")
    if args.expose and not args.invoke_api:
        raise UsageError("--expose names functions for the invoke API; add --invoke-api")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")
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
    anyio.run(_serve_until_signal, app, args.host, args.port, options, backend="asyncio")
    return 0


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
    raw = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        call_args, call_kwargs = parse_invoke_body(raw.encode("utf-8"))
    except ValueError as exc:
        raise UsageError(f"--json: {exc}") from None
    app = load_app(args.target)
    spec = app.functions.get(args.name)
    if spec is None:
        raise UnknownFunction(f"app {app.name!r} has no function {args.name!r}; it has: {', '.join(sorted(app.functions)) or 'none'}")
    try:
        check_arguments(spec, call_args, call_kwargs)
    except ValueError as exc:
        raise UsageError(f"--json: {exc}") from None
    result = anyio.run(_invoke_once, app, args.name, call_args, call_kwargs, backend="asyncio")
    try:
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        from .errors import SerializationError

        raise SerializationError(f"{args.name}: the result is not JSON: {exc}") from None
    print(text)
    return 0


async def _invoke_once(app: App, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    async with app.run() as faas:
        return await faas.invoke(name, *args, **kwargs)


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
