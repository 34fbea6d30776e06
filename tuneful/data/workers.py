"""Worker processes that prepare data end with the process that started them.

``datasets.map(num_proc=N)`` and a ``ProcessPoolExecutor`` start workers that outlive a parent killed
with SIGKILL: a pool worker waits on a task pipe whose write end the other workers hold too, so it never
sees the end of it (45 s and more was measured, and an idle worker waits for ever). On Linux a worker
asks the kernel to SIGKILL it when its parent dies (``prctl(PR_SET_PDEATHSIG)``), and leaves at once if
the parent died before it asked. ``datasets.map`` takes no pool initializer, so a process forked inside
:func:`workers_die_with_parent` asks as it starts (a fork hook); the function a pool runs may also call
:func:`die_with_parent` first (the first call in each process asks, the others cost a comparison), which
covers workers that were not forked (spawn, forkserver). Elsewhere (macOS, Windows) both do nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from contextlib import contextmanager
from typing import Iterator

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_armed_in: int | None = None  # the process that already asked
_forking_for: int | None = None  # inside workers_die_with_parent: the process whose forked children ask
_hooked = False


def die_with_parent(parent_pid: int) -> None:
    """Call in a worker process started by ``parent_pid``; a no-op in the parent itself and after the first call."""
    global _armed_in
    pid = os.getpid()
    if pid in (_armed_in, parent_pid) or not sys.platform.startswith("linux"):
        return
    _armed_in = pid
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # refused (a sandbox without prctl): the worker ends as it did before, when its pipe closes
    if os.getppid() != parent_pid:  # the parent died before the request, so the kernel will not send the signal
        os._exit(1)


def _forked_child() -> None:
    if _forking_for is not None:
        die_with_parent(_forking_for)


@contextmanager
def workers_die_with_parent() -> Iterator[None]:
    """Every process this one forks inside the block (its thread, or another) is SIGKILLed when this one dies."""
    global _forking_for, _hooked
    if not _hooked and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forked_child)
        _hooked = True
    previous, _forking_for = _forking_for, os.getpid()
    try:
        yield
    finally:
        _forking_for = previous
