"""A seccomp filter that leaves a process only UNIX sockets (standard library only).

Landlock (:mod:`monai_ext.sharing.landlock`) stops classic TCP, but not UDP, Multipath TCP, raw or packet sockets,
nor sockets created through io_uring. This filter closes those: ``socket()`` of any family but ``AF_UNIX`` fails
with ``EACCES``, whatever the protocol, and so does ``io_uring_setup``. UNIX sockets stay, because Python's
multiprocessing and PyTorch's DataLoader workers pass tensors over them. The filter holds for the process and every
process it forks, and nothing can remove it.

What it cannot do: a UNIX socket may still connect to a named socket of a local service (``/run/docker.sock``, an
ssh-agent) or send to one (``/dev/log``). Seccomp sees only the system call's numbers, never the path, and Landlock
restricts connecting to a named socket only from ABI 9 on (``LANDLOCK_ACCESS_FS_RESOLVE_UNIX``).
:mod:`monai_ext.sharing.audit` therefore reports every use of sockets in a bundle's configs as not contained.

Like the Landlock module, this one imports nothing outside the standard library, so the confined process applies it
before it imports torch or monai.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

__all__ = ["SeccompUnavailableError", "deny_network_sockets"]

# per architecture: the AUDIT_ARCH value the kernel reports, and the numbers of socket and io_uring_setup
_ARCHITECTURES = {
    "x86_64": (0xC000003E, 41, 425),
    "aarch64": (0xC00000B7, 198, 425),
    "riscv64": (0xC00000F3, 198, 425),
}
_X32_SYSCALL_BIT = 0x40000000  # x86_64 also accepts the x32 ABI's numbers, which this filter must not let through
_AF_UNIX = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
# classic BPF opcodes
_LOAD_WORD = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JUMP_EQUAL = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JUMP_AT_LEAST = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RETURN = 0x06  # BPF_RET | BPF_K
# offsets in struct seccomp_data: nr, arch, then the low half of args[0] (little-endian machines only)
_NR, _ARCH, _FIRST_ARGUMENT_LOW = 0, 4, 16


class SeccompUnavailableError(OSError):
    """The filter cannot be installed here (not Linux, an unknown architecture, or the kernel refused it)."""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _program(arch: int, socket_nr: int, io_uring_setup_nr: int) -> bytes:
    refuse = _RET_ERRNO | errno.EACCES
    # (code, jump if true, jump if false, constant); jumps count the instructions skipped
    instructions = [
        (_LOAD_WORD, 0, 0, _ARCH),
        (_JUMP_EQUAL, 1, 0, arch),
        (_RETURN, 0, 0, _RET_KILL_PROCESS),  # a system call of another ABI (int 0x80 on x86_64): never ours
        (_LOAD_WORD, 0, 0, _NR),
        (_JUMP_AT_LEAST, 5, 0, _X32_SYSCALL_BIT),
        (_JUMP_EQUAL, 4, 0, io_uring_setup_nr),
        (_JUMP_EQUAL, 1, 0, socket_nr),
        (_RETURN, 0, 0, _RET_ALLOW),
        (_LOAD_WORD, 0, 0, _FIRST_ARGUMENT_LOW),
        (_JUMP_EQUAL, 1, 0, _AF_UNIX),
        (_RETURN, 0, 0, refuse),
        (_RETURN, 0, 0, _RET_ALLOW),
    ]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in instructions)


def deny_network_sockets() -> str:
    """Install the filter on this process and its future children, for good.

    Returns:
        One line for the run's log saying what is in force.

    Raises:
        SeccompUnavailableError: not Linux, an architecture this module has no numbers for, or the kernel refused the
            filter (the process is then unchanged).
    """
    machine = platform.machine()
    if platform.system() != "Linux" or machine not in _ARCHITECTURES:
        raise SeccompUnavailableError(f"no seccomp filter for {platform.system()} on {machine}")
    program = _program(*_ARCHITECTURES[machine])
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SeccompUnavailableError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise SeccompUnavailableError(code, f"the kernel refused the seccomp filter: {errno.errorcode.get(code, code)}")
    return "no sockets but UNIX ones (seccomp): no UDP, Multipath TCP, raw or packet sockets, no io_uring"
