"""The zygote: a warm process on each local node that forks one container per cold start.

The platform starts it as a fresh interpreter (``microfaas.nodes.zygote.main`` with ``--fd N``),
never by forking the event-loop process. It imports microfaas and cloudpickle,
takes the platform's ``sys.path`` and working directory, pre-imports the modules
that define the app's functions (so a container does not import them again), then
waits on its control socket:

    SetupRequest(sys_path, cwd, modules)          -> SetupDone(failures={module: error})
    ForkRequest(container_id, busy_poll_s, bundle), with 1 fd
                                                  -> Forked(container_id, pid)
                                                     ChildExited(pid, returncode)   when a child is reaped

(``protocol.py`` frames, decoded by the same ``FrameDecoder`` as the platform's.)

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
        while (message := self.decoder.next_message()) is not None:
            if type(message) is protocol.ForkRequest:
                self._fork(message)
            elif type(message) is protocol.SetupRequest:
                self._setup(message)
            else:
                raise protocol.ProtocolError(f"zygote got unexpected message {type(message).__name__}")
        return True

    def _send(self, message: protocol.Message) -> None:
        try:
            self.ctrl.sendmsg(protocol.encode(message))
        except (ConnectionResetError, BrokenPipeError):
            pass  # the platform is gone; run() sees end-of-file next

    def _setup(self, setup: protocol.SetupRequest) -> None:
        worker.adopt_environment(setup.sys_path, setup.cwd)
        failures: dict[str, str] = {}
        for name in setup.modules:
            try:
                importlib.import_module(name)
            except BaseException as exc:  # noqa: BLE001 - report it; the platform ships by value
                failures[name] = repr(exc)
        # Objects alive now are shared copy-on-write with every child; keep the
        # collector from touching (and so copying) them.
        gc.collect()
        gc.freeze()
        self._send(protocol.SetupDone(failures=failures))

    def _fork(self, fork: protocol.ForkRequest) -> None:
        fd = self.fds.popleft()
        zygote_pid = os.getpid()
        # Hold SIGTERM until the child has its own handlers in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
        if pid == 0:
            self._become_container(fd, fork, zygote_pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.close(fd)
        self.children.add(pid)
        self._send(protocol.Forked(container_id=fork.container_id, pid=pid))

    def _become_container(self, fd: int, fork: protocol.ForkRequest, zygote_pid: int) -> None:
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
            worker.serve(socket.socket(fileno=fd), fork.container_id, fork.bundle, busy_poll_s=fork.busy_poll_s)
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
            self._send(protocol.ChildExited(pid=pid, returncode=os.waitstatus_to_exitcode(status)))

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
