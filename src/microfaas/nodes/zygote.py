"""The zygote: a warm process on each local node that forks one container per cold start.

The platform starts it as a fresh interpreter (``microfaas.nodes.zygote.main`` with ``--fd N``),
never by forking the event-loop process. It imports microfaas and cloudpickle,
takes the platform's ``sys.path`` and working directory, pre-imports the modules
that define the app's functions (so a container does not import them again), then
waits on its control socket:

    ("setup", sys_path, cwd, modules)        -> ("setup_done", {module: error})
    ("fork", container_id, busy_poll_s) + bundle, 1 fd
                                             -> ("forked", container_id, pid)
                                               ("exited", pid, returncode)   when a child is reaped

The passed fd is the container's end of a socketpair; the child serves on it.
When the control socket closes, or on SIGTERM, the zygote kills and reaps every
child before it exits.
"""

from __future__ import annotations

import argparse
import collections
import gc
import importlib
import os
import select
import signal
import socket
import sys
import traceback

from .. import protocol, worker


class Zygote:
    def __init__(self, ctrl: socket.socket) -> None:
        self.ctrl = ctrl
        self.children: set[int] = set()
        self.decoder = protocol.FrameDecoder()
        self.fds: collections.deque[int] = collections.deque()
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
            self._kill_children()

    def _read_control(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.ctrl, protocol.READ_SIZE, 64)
        except (ConnectionResetError, BrokenPipeError):
            return False  # the platform is gone: stop as on end-of-file
        self.fds.extend(fds)
        if not data:
            return False
        self.decoder.feed(data)
        while (frame := self.decoder.next_frame()) is not None:
            meta, blob = frame
            if meta[0] == "fork":
                self._fork(str(meta[1]), float(meta[2]), blob)  # type: ignore[arg-type]
            elif meta[0] == "setup":
                self._setup(meta[1], meta[2], meta[3])  # type: ignore[arg-type]
            else:
                raise protocol.ProtocolError(f"zygote got unexpected message {meta[0]!r}")
        return True

    def _send(self, meta: tuple[object, ...]) -> None:
        try:
            self.ctrl.sendmsg(protocol.encode(meta))
        except (ConnectionResetError, BrokenPipeError):
            pass  # the platform is gone; run() sees end-of-file next

    def _setup(self, sys_path: list[str], cwd: str, modules: list[str]) -> None:
        worker.adopt_environment(sys_path, cwd)
        failures: dict[str, str] = {}
        for name in modules:
            try:
                importlib.import_module(name)
            except BaseException as exc:  # noqa: BLE001 - report it; the platform ships by value
                failures[name] = repr(exc)
        # Objects alive now are shared copy-on-write with every child; keep the
        # collector from touching (and so copying) them.
        gc.collect()
        gc.freeze()
        self._send(("setup_done", failures))

    def _fork(self, container_id: str, busy_poll_s: float, bundle_blob: bytes | bytearray) -> None:
        fd = self.fds.popleft()
        zygote_pid = os.getpid()
        # Hold SIGTERM until the child has its own handlers in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
        if pid == 0:
            self._become_container(fd, container_id, busy_poll_s, bundle_blob, zygote_pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.close(fd)
        self.children.add(pid)
        self._send(("forked", container_id, pid))

    def _become_container(self, fd: int, container_id: str, busy_poll_s: float, bundle_blob: bytes | bytearray, zygote_pid: int) -> None:
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
            worker.serve(socket.socket(fileno=fd), container_id, bundle_blob, busy_poll_s=busy_poll_s)
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
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self._send(("exited", pid, os.waitstatus_to_exitcode(status)))

    def _kill_children(self) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="microfaas-zygote", description="A microfaas node's zygote.")
    parser.add_argument("--fd", type=int, required=True, help="file descriptor of the control socket")
    args = parser.parse_args(argv)
    worker.prepare_process()
    ctrl = socket.socket(fileno=args.fd)
    ctrl.setblocking(True)
    try:
        Zygote(ctrl).run()
    except SystemExit:
        pass


if __name__ == "__main__":
    main()
