"""Landlock, the Linux kernel's unprivileged sandbox, through its three system calls (standard library only).

A process restricts itself, and every process it forks, to the file hierarchies it names. Nothing the process does
afterwards, and no Python code it evaluates, can lift the restriction. Used by ``monai_ext run`` to confine a
received bundle (see :mod:`monai_ext.sharing.sandbox`). This module imports nothing outside the standard library,
so the confined process applies it before it imports torch or monai.

Why our own binding rather than the ``landlock`` or ``py-landlock`` packages: the three calls and four structures
fit in a page that a reviewer can read whole, no dependency enters the trusted path, and we choose per ABI version
which rights to ask for (the packages differ in which ABI features they expose).

What each ABI version adds, and what :func:`restrict` asks for when the kernel has it:

- 1 (Linux 5.13): file access rights; ``execute`` is never granted, so ``execve`` fails everywhere.
- 2: ``refer`` (links and renames across folders). 3: ``truncate``.
- 4: TCP ``bind`` and ``connect``: no rule grants either, so no TCP at all. UDP is not covered by Landlock.
- 5: ``ioctl`` on devices. 6: scoped signals (no signal to a process outside the sandbox) and abstract UNIX sockets.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["LandlockUnavailableError", "Protections", "abi_version", "restrict"]

# system call numbers: the same in the generic table (aarch64, riscv) and on x86_64
_SYSCALLS = {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446}
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

READ = READ_FILE | READ_DIR
# rights that only make sense on a folder; a rule on a single file may carry the others only
# device nodes give raw access to disks and terminals, and a FIFO or named socket left behind is something a later
# unconfined process may open: writable folders grant none of them, and only a folder deleted after the run grants
# named sockets, which PyTorch's DataLoader workers need (multiprocessing's resource sharer listens on one)
SPECIAL_FILES = MAKE_CHAR | MAKE_BLOCK | MAKE_FIFO | MAKE_SOCK
_DIRECTORY_ONLY = READ_DIR | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO
_DIRECTORY_ONLY |= MAKE_BLOCK | MAKE_SYM | REFER


class LandlockUnavailableError(OSError):
    """The kernel cannot confine this process (not Linux, Landlock missing or disabled); the message says which."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi_version() -> int:
    """The Landlock ABI version of the running kernel.

    Raises:
        LandlockUnavailableError: not Linux, an architecture whose system call numbers we do not know, or a kernel
            without Landlock (or with it disabled at boot), with the reason.
    """
    if platform.system() != "Linux":
        raise LandlockUnavailableError(f"Landlock is a Linux feature; this is {platform.system()}")
    if platform.machine() not in ("x86_64", "aarch64", "riscv64"):
        raise LandlockUnavailableError(f"Landlock system call numbers unknown for {platform.machine()}")
    libc = _libc()
    version = libc.syscall(_SYSCALLS["create_ruleset"], None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    if version < 0:
        errno = ctypes.get_errno()
        reason = "disabled at boot (lsm= list)" if errno == 95 else "missing (Linux 5.13 or later has it)"
        raise LandlockUnavailableError(f"Landlock is {reason}: {os.strerror(errno)}")
    return int(version)


def _fs_rights(abi: int) -> int:
    rights = (MAKE_SYM << 1) - 1  # ABI 1: bits 0..12
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


@dataclass(frozen=True)
class Protections:
    """What :func:`restrict` made the kernel enforce, for the run's log."""

    abi: int
    readable: tuple[str, ...]
    writable: tuple[str, ...]
    no_execve: bool
    no_tcp: bool
    scoped_signals_and_sockets: bool

    def describe(self) -> list[str]:
        lines = [f"Landlock ABI {self.abi}: files readable only under {len(self.readable)} paths, writable only under:"]
        lines += [f"  {path}" for path in self.writable]
        lines.append("no program can be started (execve denied everywhere)" if self.no_execve else "")
        lines.append(
            "no TCP connect or bind" if self.no_tcp else "TCP not restricted (Landlock ABI < 4: kernel too old)"
        )
        lines.append(
            "no signals to processes outside, no abstract UNIX sockets"
            if self.scoped_signals_and_sockets
            else "signals and abstract UNIX sockets not scoped (Landlock ABI < 6)"
        )
        return [line for line in lines if line]


def _add_rule(libc: ctypes.CDLL, ruleset: int, path: str, access: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not os.path.isdir(path):
            access &= ~_DIRECTORY_ONLY
        rule = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
        if libc.syscall(_SYSCALLS["add_rule"], ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) < 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def restrict(readable: Iterable[str], writable: Iterable[str], socket_folders: Iterable[str] = ()) -> Protections:
    """Confine this process and its future children for good.

    Files and folders under ``readable`` may be read; under ``writable`` read, written, created and removed, except
    device nodes, FIFOs and named sockets, which cannot be made anywhere but named sockets under ``socket_folders``
    (writable folders that are deleted after the run).
    Nothing anywhere may be executed, and from ABI 4 on no TCP connection made or port bound; from ABI 6 on no signal
    reaches a process outside and no abstract UNIX socket is used. Paths that do not exist are skipped.

    Returns:
        The protections in force.

    Raises:
        LandlockUnavailableError: as :func:`abi_version`.
        OSError: a system call failed (the process is then not confined).
    """
    abi = abi_version()
    libc = _libc()
    handled_fs = _fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=handled_fs)
    size = 8
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset = libc.syscall(_SYSCALLS["create_ruleset"], ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    readable = tuple(dict.fromkeys(p for p in map(os.path.realpath, readable) if os.path.exists(p)))
    writable = tuple(dict.fromkeys(p for p in map(os.path.realpath, writable) if os.path.exists(p)))
    try:
        for path in readable:
            _add_rule(libc, ruleset, path, READ)
        sockets = {os.path.realpath(p) for p in socket_folders}
        for path in writable:
            granted = handled_fs & ~(EXECUTE | SPECIAL_FILES)
            _add_rule(libc, ruleset, path, granted | MAKE_SOCK if path in sockets else granted)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_SYSCALLS["restrict_self"], ruleset, 0) < 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return Protections(abi, readable, writable, True, abi >= 4, abi >= 6)
