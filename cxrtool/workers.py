"""Worker processes that end with the run that started them: no stray decoders after a ``kill -9``.

A run killed with SIGKILL cannot tell its workers to stop, and a pool worker blocked on its task
queue never notices (it holds both ends of the queue's pipe itself).  So every worker calls
:func:`die_with` first thing; it ends the worker as soon as the run's process is gone:

* ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux): the kernel kills the worker when its *parent*
  exits.  Right for workers the run forks or spawns itself (DataLoader, ``prep`` pools).  Strictly
  it follows the parent *thread* that started the worker, so pools must be started from a thread
  that outlives them (the pools here start workers from the thread that submits the work).
* a watcher thread on a pidfd of the run (Linux >= 5.3), or polling elsewhere: a forkserver's
  workers have the forkserver as parent, not the run, so the parent-death signal alone would only
  fire when the forkserver goes.

multiprocessing's forkserver and resource tracker end by themselves once the run and its workers
are gone (each waits for EOF on a pipe only those hold).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import signal
import sys
import threading

#: from <linux/prctl.h>
PR_SET_PDEATHSIG = 1
#: how often the portable watcher checks the run (only where pidfd is missing)
POLL_S = 0.5


def die_with(owner_pid: int) -> None:
    """End this process (SIGKILL, no cleanup: it only ever holds a worker's scratch) when ``owner_pid`` exits.

    Call it from a pool's ``initializer`` or a DataLoader's ``worker_init_fn`` with the run's pid,
    read in the run (``os.getpid()`` at pool creation), not in the worker.
    """
    if os.getppid() == owner_pid and sys.platform.startswith("linux"):
        _set_parent_death_signal()
    _watch(owner_pid)
    if not pid_alive(owner_pid):  # the run died before the signal or the watcher was in place
        os._exit(1)


def _set_parent_death_signal() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no libc prctl (musl variants, sandboxes): the watcher thread still covers it


def _watch(owner_pid: int) -> None:
    """A daemon thread that kills this process when ``owner_pid`` ends."""
    try:
        fd = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): poll
        fd = None

    def wait_then_die() -> None:
        if fd is not None:
            select.select([fd], [], [])  # a pidfd turns readable when its process exits
        else:
            while pid_alive(owner_pid):
                threading.Event().wait(POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait_then_die, name="cxrtool-die-with-owner", daemon=True).start()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (or is another user's process); False once it is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
