"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import contextlib
import signal
import sys

#: prctl(2) option: the signal the calling process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in the child, before exec (Popen's `preexec_fn`): on Linux, ask for SIGTERM when the
    parent dies, even by SIGKILL, so that no orphaned web, worker or Redis goes on alone after
    `pdbridge run` is gone. Elsewhere it does nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
