"""Drop every Linux capability of the process for good (standard library only).

A confined run as root (most Docker images, and these machines) otherwise keeps root's powers inside Landlock's
rules: making block devices (``CAP_MKNOD``) in a writable folder gave raw access to a disk, and ``CAP_SYS_PTRACE``
let it read ``/proc/PPID/environ``, the user's whole environment. With no capabilities, the kernel refuses both: a
process may inspect another only if its capabilities include all of the other's, and a root parent holds them all.

The effective, permitted and inheritable sets are emptied with ``capset``, the ambient set cleared, and every
capability dropped from the bounding set, which needs ``CAP_SETPCAP``, so an unprivileged user, who holds none to
begin with, keeps its bounding set. ``no_new_privs`` then stops a set-user-ID program from granting any back. Like the
Landlock and seccomp modules, this one is loaded by path before anything but the standard library is imported.
"""

from __future__ import annotations

import ctypes

__all__ = ["CapabilityError", "capability_sets", "drop_all_capabilities"]

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAPABILITY_VERSION_3 = 0x20080522
_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


class CapabilityError(OSError):
    """A capability could not be dropped; the process must not go on as if it had been."""


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capability_sets() -> dict[str, int]:
    """This process's capability sets (``/proc/self/status``): inheritable, permitted, effective, bounding, ambient."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
    return {name: int(fields[name], 16) for name in _SETS if name in fields}


def drop_all_capabilities() -> str:
    """Drop every capability of this process and its future children, and set ``no_new_privs``.

    Returns:
        One line for the run's log saying what is in force.

    Raises:
        CapabilityError: the effective, permitted, inheritable or ambient set is not empty afterwards.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    with open("/proc/sys/kernel/cap_last_cap") as last:
        last_capability = int(last.read())
    bounding_dropped = all(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 for cap in range(last_capability + 1))
    header, data = _Header(_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise CapabilityError(ctypes.get_errno(), "capset could not empty the capability sets")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise CapabilityError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    left = {name: value for name, value in capability_sets().items() if value and name != "CapBnd"}
    if left:
        raise CapabilityError(f"capabilities left after dropping them all: {left}")
    bounding = "bounding set emptied" if bounding_dropped else "bounding set kept (no CAP_SETPCAP to drop it)"
    return f"no capabilities, not even as root ({bounding}); no_new_privs"
