"""The zygote: a warm process on each local node that forks one container per cold start.

The platform starts it as a fresh interpreter (``microfaas.nodes.zygote.main`` with ``--fd N``),
never by forking the event-loop process. It imports microfaas and cloudpickle,
takes the platform's ``sys.path`` and working directory, pre-imports the modules
that define the app's functions (so a container does not import them again), then
waits on its control socket:

    SetupRequest(sys_path, cwd, modules)          -> SetupDone(failures, refused, preloaded, ...)
    PreloadRequest(modules, memory_mb)            -> SetupDone(...)       (learned modules)
    ForkRequest(container_id, busy_poll_s, bundle), with 1 fd
                                                  -> Forked(container_id, pid)
    SpareRequest(spare_id), with 1 fd             -> Forked(spare_id, pid)
                                                     ChildExited(pid, returncode)   when a child is reaped

(``protocol.py`` frames, decoded by the same ``FrameDecoder`` as the platform's.)

Modules are preloaded by ``nodes/preloading.py``, which refuses the unsafe ones.

A spare. A ``SpareRequest`` forks a child that does at once what every new
container does first (closes the zygote's files, sets its signals, reseeds its
generators) and then waits on its socket for its ``ForkRequest``, which the
platform sends it directly when a cold start needs a container (``pool.py``
keeps one spare per node). The zygote never forks while it has more than one
thread, and rehearses a container's start and calls before its first fork
(``nodes/forking.py``), so that its children find that code already specialised.

The passed fd is the container's end of a socketpair; the child serves on it.
When the control socket closes, or on SIGTERM, the zygote asks every child to
stop (SIGTERM), gives them ``--stop-grace`` seconds, kills those left (SIGKILL),
and reaps them all before it exits.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import os
import select
import signal
import socket
import sys
import time
import traceback

from .. import protocol, worker
from . import forking, preloading


class Zygote:
    def __init__(self, ctrl: socket.socket, *, stop_grace: float = 1.0) -> None:
        self.ctrl = ctrl
        self.stop_grace = stop_grace
        self.children: set[int] = set()
        self.decoder = protocol.FrameDecoder()
        self.fds: collections.deque[int] = collections.deque()
        self.preloaded: list[str] = []
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def run(self) -> None:
        watched: list[socket.socket | int] = [self.ctrl, self.wake_r]
        try:
            while True:
                readable, _, _ = select.select(watched, [], [])
                if self.wake_r in readable:
                    self._drain_wakeups()
                    self._reap()
                if self.ctrl in readable and not self._read_control():
                    return
        finally:
            self._stop_children()

    def _read_control(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.ctrl, protocol.READ_SIZE, 64)
        except (ConnectionResetError, BrokenPipeError):
            return False  # the platform is gone: stop as on end-of-file
        self.fds.extend(fds)
        if not data:
            return False
        self.decoder.feed(data)
        while (message := self.decoder.next_message()) is not None:
            if type(message) is protocol.ForkRequest or type(message) is protocol.SpareRequest:
                self._fork(message)
            elif type(message) is protocol.SetupRequest:
                worker.adopt_environment(message.sys_path, message.cwd)
                self._preload(message.modules, None)
            elif type(message) is protocol.PreloadRequest:
                self._preload(message.modules, message.memory_mb)
            else:
                raise protocol.ProtocolError(f"zygote got unexpected message {type(message).__name__}")
        return True

    def _send(self, message: protocol.Message) -> None:
        try:
            self.ctrl.sendmsg(protocol.encode(message))
        except (ConnectionResetError, BrokenPipeError):
            pass  # the platform is gone; run() sees end-of-file next

    def _preload(self, modules: tuple[str, ...], memory_mb: float | None) -> None:
        done = preloading.preload(modules, memory_mb=memory_mb)
        self.preloaded += [name for name in done.imported if name not in self.preloaded]
        forking.rehearse()
        # Objects alive now are shared copy-on-write with every child; keep the
        # collector from touching (and so copying) them.
        gc.collect()
        gc.freeze()
        self._send(
            protocol.SetupDone(
                failures=done.failures,
                refused=done.refused,
                preloaded=tuple(self.preloaded),
                import_s=done.import_s,
                rss_mb=preloading.resident_mb(),
                threads=preloading.thread_count(),
            )
        )

    def _fork(self, request: protocol.ForkRequest | protocol.SpareRequest) -> None:
        fd = self.fds.popleft()
        if preloading.thread_count() > 1:
            raise RuntimeError("the zygote has more than one thread: it must not fork")
        zygote_pid = os.getpid()
        # Hold SIGTERM until the child has its own handlers in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
        if pid == 0:
            self._become_container(fd, zygote_pid, request if isinstance(request, protocol.ForkRequest) else None)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.close(fd)
        self.children.add(pid)
        reply_id = request.container_id if isinstance(request, protocol.ForkRequest) else request.spare_id
        self._send(protocol.Forked(container_id=reply_id, pid=pid))

    def _become_container(self, fd: int, zygote_pid: int, fork: protocol.ForkRequest | None) -> None:
        """The child: serve ``fork``, or (a spare) wait for one on ``fd`` first."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.ctrl.close()
            for other in self.fds:
                os.close(other)
            worker.prepare_process()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            if os.getppid() != zygote_pid:  # the zygote died before the death signal was set
                os._exit(1)
            forking.refresh_after_fork()
            known = len(sys.modules)
            sock = socket.socket(fileno=fd)
            if fork is None:
                fork = _take_request(sock)
                if fork is None:
                    os._exit(0)  # a spare the platform let go before it was needed
            first = forking.report_imports(known) if fork.report_imports else None
            worker.serve(sock, fork.container_id, fork.bundle, busy_poll_s=fork.busy_poll_s, after_first_reply=first)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - print it; the platform sees the exit code
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError, AttributeError):
                    pass
            os._exit(code)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                self._send(protocol.ChildExited(pid=pid, returncode=os.waitstatus_to_exitcode(status)))

    def _stop_children(self) -> None:
        """SIGTERM every child, give them ``stop_grace`` seconds, SIGKILL the rest, reap them all."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        while self.children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.005)
            self.children.discard(pid)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()


def _take_request(sock: socket.socket) -> protocol.ForkRequest | None:
    """A spare's wait: the ``ForkRequest`` the platform sends on its socket, or None at end-of-file."""
    decoder = protocol.FrameDecoder()
    while (message := decoder.next_message()) is None:
        data = sock.recv(protocol.READ_SIZE)
        if not data:
            return None
        decoder.feed(data)
    if type(message) is not protocol.ForkRequest:
        raise protocol.ProtocolError(f"a spare got {type(message).__name__}, not a ForkRequest")
    return message


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="microfaas-zygote", description="A microfaas node's zygote.")
    parser.add_argument("--fd", type=int, required=True, help="file descriptor of the control socket")
    parser.add_argument("--stop-grace", type=float, default=1.0, help="seconds children get between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    worker.prepare_process()
    ctrl = socket.socket(fileno=args.fd)
    ctrl.setblocking(True)
    try:
        Zygote(ctrl, stop_grace=args.stop_grace).run()
    except SystemExit:
        pass


if __name__ == "__main__":
    main()
