"""A uvicorn worker process that ends with its supervisor.

uvicorn's workers outlive a supervisor killed with SIGKILL and keep serving on their SO_REUSEPORT sockets, next to
whatever is started on the port afterwards. On Linux the kernel sends each worker SIGTERM (a graceful shutdown)
when the supervisor dies (``PR_SET_PDEATHSIG``); elsewhere a thread watches the parent process id.

Workers unpickle this module before they answer the supervisor's health pings: keep its imports light.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time

from uvicorn.config import Config
from uvicorn.supervisors.multiprocess import Process

_PR_SET_PDEATHSIG = 1
_WATCH_INTERVAL_S = 1.0


class Worker(Process):
    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self._supervisor = os.getpid()

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # runs in the worker process
        _end_with_parent(self._supervisor)
        for sock in sockets or []:
            sock.set_inheritable(False)  # a process this worker starts gets no listening socket
        super().target(sockets)


def _end_with_parent(parent: int) -> None:
    if not _death_signal(signal.SIGTERM):
        threading.Thread(target=_watch_parent, args=(parent,), name="aigw-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _death_signal(signum: int) -> bool:
    """Ask the kernel for ``signum`` when the parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_WATCH_INTERVAL_S)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return
