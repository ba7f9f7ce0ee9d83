"""The Lambda context object and the Lambda runtime's environment variables, built from ``mf.context()``.

AWS's Python runtime gives every handler a context whose fields come from the
invocation (the request id, the deadline, the function's ARN) and from environment
variables the runtime sets before the handler's module is imported
(``AWS_LAMBDA_FUNCTION_NAME``, ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``, ...). Here the
invocation is microfaas's: ``aws_request_id`` is the invocation id (the same across
retries of one asynchronous event, as Lambda keeps it; a new one for each retry of a
polled batch), and the remaining time comes from the invocation's deadline. The variables are set in the container on its first
call, so code that reads them at import time sees them only if it is imported later.

Runs inside the container: imports nothing of microfaas's but ``events``.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import sys
import time
from typing import Final

import attrs

from .. import events

__all__ = [
    "MAX_TIMEOUT_MS",
    "LambdaContext",
    "Placement",
    "apply_environment",
    "function_version",
    "lambda_context",
    "lambda_environment",
    "request_id",
]

# Lambda's longest timeout (15 minutes): the time left reported for a function without a timeout.
MAX_TIMEOUT_MS: Final = 900_000


@attrs.frozen(kw_only=True)
class Placement:
    """Where the wrapped function pretends to run: its account and region.

    :param region: the AWS region (``"us-east-1"``).
    :param account: the 12-digit account id (``"123456789012"``).
    """

    region: str = "us-east-1"
    account: str = "123456789012"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.region, str) or not self.region:
            raise ValueError(f"lambda_handler: region must be a non-empty str, got {self.region!r}")
        if not isinstance(self.account, str) or not (len(self.account) == 12 and self.account.isdigit()):
            raise ValueError(f"lambda_handler: account must be a 12-digit str, got {self.account!r}")

    def arn(self, service: str, resource: str) -> str:
        """``arn:aws:<service>:<region>:<account>:<resource>``."""
        return f"arn:aws:{service}:{self.region}:{self.account}:{resource}"


class LambdaContext:
    """What AWS's Python runtime passes as ``context``, with the same attribute names and types.

    ``memory_limit_in_mb`` is a ``str``, as the runtime reads it from
    ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``; ``identity`` and ``client_context`` are None
    (no Cognito identity, no mobile client).
    """

    def __init__(
        self,
        *,
        aws_request_id: str,
        function_name: str,
        function_version: str,
        invoked_function_arn: str,
        memory_limit_in_mb: str,
        log_group_name: str,
        log_stream_name: str,
        deadline: float | None,
    ) -> None:
        self.aws_request_id = aws_request_id
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = memory_limit_in_mb
        self.log_group_name = log_group_name
        self.log_stream_name = log_stream_name
        self.identity: object = None
        self.client_context: object = None
        self.tenant_id: str | None = None
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the invocation's deadline (never negative; 900000 without a timeout)."""
        if self._deadline is None:
            return MAX_TIMEOUT_MS
        return max(0, int((self._deadline - time.time()) * 1000))

    def __repr__(self) -> str:
        return f"<LambdaContext {self.function_name} request {self.aws_request_id}>"


# One log stream name per container, as Lambda names one per execution environment.
_streams: dict[str, str] = {}


def _log_stream(ctx: events.Context, version: str) -> str:
    name = _streams.get(ctx.container_id)
    if name is None:
        day = datetime.datetime.now(datetime.UTC).strftime("%Y/%m/%d")
        token = hashlib.blake2b(f"{ctx.function_name}/{ctx.container_id}".encode(), digest_size=16).hexdigest()
        name = _streams[ctx.container_id] = f"{day}/[{version}]{token}"
    return name


def function_version(ctx: events.Context) -> str:
    """The deployed version of the invocation's function where functions are versioned, else ``"$LATEST"``."""
    version = getattr(ctx, "version", None)
    return "$LATEST" if version is None else str(version)


def request_id(ctx: events.Context, *, polled: bool) -> str:
    """The ``aws_request_id`` of the invocation ``ctx``: its invocation id, kept across the retries of
    an asynchronous event as Lambda keeps it. Where Lambda polls (SQS, Kinesis, DynamoDB) a retry is a
    new invocation with a new request id: attempt ``n > 1`` is ``"<invocation id>/<n>"``."""
    return f"{ctx.invocation_id}/{ctx.attempt}" if polled and ctx.attempt > 1 else ctx.invocation_id


def lambda_context(ctx: events.Context, where: Placement, *, polled: bool = False) -> LambdaContext:
    """The Lambda context of the invocation ``ctx`` (``polled``: see ``request_id``)."""
    version = function_version(ctx)
    return LambdaContext(
        aws_request_id=request_id(ctx, polled=polled),
        function_name=ctx.function_name,
        function_version=version,
        invoked_function_arn=where.arn("lambda", f"function:{ctx.function_name}"),
        memory_limit_in_mb=str(ctx.memory_mb if ctx.memory_mb is not None else 128),
        log_group_name=f"/aws/lambda/{ctx.function_name}",
        log_stream_name=_log_stream(ctx, version),
        deadline=ctx.deadline,
    )


def lambda_environment(context: LambdaContext, where: Placement, handler: str) -> dict[str, str]:
    """The variables Lambda's Python runtime sets for a function (less credentials, tracing and the runtime API)."""
    return {
        "AWS_LAMBDA_FUNCTION_NAME": context.function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": context.memory_limit_in_mb,
        "AWS_LAMBDA_FUNCTION_VERSION": context.function_version,
        "AWS_LAMBDA_LOG_GROUP_NAME": context.log_group_name,
        "AWS_LAMBDA_LOG_STREAM_NAME": context.log_stream_name,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": where.region,
        "AWS_DEFAULT_REGION": where.region,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
        "_HANDLER": handler,
        "LAMBDA_TASK_ROOT": os.getcwd(),
    }


_applied: set[str] = set()


def apply_environment(ctx: events.Context, variables: dict[str, str]) -> None:
    """Set ``variables`` in this process once per container. Not for ``f.local()`` (container ``"local"``):
    that runs in the caller's own process, whose environment is not the function's."""
    if ctx.container_id == "local" or ctx.container_id in _applied:
        return
    os.environ.update(variables)
    _applied.add(ctx.container_id)
