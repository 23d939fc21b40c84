"""Keep the daemon's memory out of core dumps.

The lane daemon holds clear templates (the matcher's rows, decrypted candidates), the template
key and its CURVE secret in memory; a crash dump written to disk would hold them all, where
nothing seals them (found by attacking a lane: a core file held clear templates). So at start
the daemon makes itself non-dumpable (prctl PR_SET_DUMPABLE 0: no core file, no ptrace attach by
other processes of the same user, /proc/PID files owned by root) and sets RLIMIT_CORE to 0,
which children inherit. systemd's LimitCORE=0 does the same from outside (systemd/gated@.service);
both are kept so a daemon started by hand is covered too.
"""
from __future__ import annotations

import ctypes
import logging
import resource

log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    result = libc.prctl(option, arg, 0, 0, 0)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed")
    return result


def disable_core_dumps() -> None:
    """No core file from this process or its children; raises OSError if the kernel refuses."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(_PR_SET_DUMPABLE, 0)
    log.debug("core dumps disabled (RLIMIT_CORE 0, not dumpable)")


def is_dumpable() -> bool:
    return _prctl(_PR_GET_DUMPABLE) != 0
