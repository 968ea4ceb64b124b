"""A seccomp filter for a confined run: only UNIX sockets, no programs, no keyrings, no typing into a terminal.

Landlock (:mod:`.landlock`) leaves gaps that only system call filtering closes (standard library
only). The filter holds for the process and every process it forks, and nothing can remove it:

- ``socket()`` of any family but ``AF_UNIX`` fails with ``EACCES``, whatever the protocol, and so does
  ``io_uring_setup``: Landlock stops classic TCP, but not UDP, Multipath TCP, raw or packet sockets, nor sockets
  created through io_uring. UNIX sockets stay, because Python's multiprocessing and PyTorch's DataLoader workers
  pass tensors over them;
- ``execve`` and ``execveat`` fail with ``EACCES``: Landlock refuses to execute files, but not a program written to
  an anonymous ``memfd_create`` file and started from its descriptor;
- ``keyctl``, ``add_key``, ``request_key`` and ``bpf`` fail with ``EPERM``, as in Docker's default profile: the
  kernel keyrings that a process inherits (the session keyring holds a login's keys) are outside Landlock;
- ``ioctl`` with ``TIOCSTI`` or ``TIOCLINUX`` fails with ``EPERM``: with either, a process typed commands into the
  terminal it inherited, which the user's shell then ran outside the sandbox.

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

__all__ = ["SeccompUnavailableError", "restrict_system_calls"]

# per architecture: the AUDIT_ARCH value the kernel reports, and the system call numbers the filter looks at
_ARCHITECTURES = {
    "x86_64": (0xC000003E, {"socket": 41, "ioctl": 16, "io_uring_setup": 425, "execve": 59, "execveat": 322,
                            "add_key": 248, "request_key": 249, "keyctl": 250, "bpf": 321}),
    "aarch64": (0xC00000B7, {"socket": 198, "ioctl": 29, "io_uring_setup": 425, "execve": 221, "execveat": 281,
                             "add_key": 217, "request_key": 218, "keyctl": 219, "bpf": 280}),
}  # fmt: skip
_ARCHITECTURES["riscv64"] = (0xC00000F3, _ARCHITECTURES["aarch64"][1])  # both use the generic system call table
_X32_SYSCALL_BIT = 0x40000000  # x86_64 also accepts the x32 ABI's numbers, which this filter must not let through
_AF_UNIX = 1
# terminal ioctls that act on another process's input: typing into it (TIOCSTI) and the console's TIOCLINUX
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
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
# offsets in struct seccomp_data: nr, arch, then the low halves of args[0] and args[1] (little-endian machines only)
_NR, _ARCH, _FIRST_ARGUMENT_LOW, _SECOND_ARGUMENT_LOW = 0, 4, 16, 24


class SeccompUnavailableError(OSError):
    """The filter cannot be installed here (not Linux, an unknown architecture, or the kernel refused it)."""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _assemble(lines: list[tuple]) -> bytes:
    """Classic BPF from ``(label,)`` markers and ``(code, jump_if_true, jump_if_false, constant)`` instructions whose
    jumps name labels (``None``: the next instruction)."""
    positions, instructions = {}, []
    for line in lines:
        if len(line) == 1:
            positions[line[0]] = len(instructions)
        else:
            instructions.append(line)
    program = []
    for index, (code, if_true, if_false, constant) in enumerate(instructions):
        jumps = [0 if target is None else positions[target] - index - 1 for target in (if_true, if_false)]
        program.append(struct.pack("=HBBI", code, *jumps, constant))
    return b"".join(program)


def _program(arch: int, numbers: dict[str, int]) -> bytes:
    eacces, eperm = _RET_ERRNO | errno.EACCES, _RET_ERRNO | errno.EPERM
    return _assemble([
        (_LOAD_WORD, None, None, _ARCH),
        (_JUMP_EQUAL, "native", None, arch),
        (_RETURN, None, None, _RET_KILL_PROCESS),  # a system call of another ABI (int 0x80 on x86_64): never ours
        ("native",),
        (_LOAD_WORD, None, None, _NR),
        (_JUMP_AT_LEAST, "eacces", None, _X32_SYSCALL_BIT),
        (_JUMP_EQUAL, "socket", None, numbers["socket"]),
        (_JUMP_EQUAL, "ioctl", None, numbers["ioctl"]),
        *[(_JUMP_EQUAL, "eacces", None, numbers[name]) for name in ("io_uring_setup", "execve", "execveat")],
        *[(_JUMP_EQUAL, "eperm", None, numbers[name]) for name in ("add_key", "request_key", "keyctl", "bpf")],
        (_RETURN, None, None, _RET_ALLOW),
        ("socket",),
        (_LOAD_WORD, None, None, _FIRST_ARGUMENT_LOW),
        (_JUMP_EQUAL, "allow", "eacces", _AF_UNIX),
        ("ioctl",),
        (_LOAD_WORD, None, None, _SECOND_ARGUMENT_LOW),
        (_JUMP_EQUAL, "eperm", None, _TIOCSTI),
        (_JUMP_EQUAL, "eperm", "allow", _TIOCLINUX),
        ("allow",),
        (_RETURN, None, None, _RET_ALLOW),
        ("eacces",),
        (_RETURN, None, None, eacces),
        ("eperm",),
        (_RETURN, None, None, eperm),
    ])  # fmt: skip


def restrict_system_calls() -> str:
    """Install the filter on this process and its future children, for good. Install it last: after it, this process
    can start no program.

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
    return (
        "no sockets but UNIX ones (seccomp): no UDP, Multipath TCP, raw or packet sockets, no io_uring; no program "
        "started, not even from memory (execve, execveat); no keyrings (keyctl, add_key, request_key), no bpf; no "
        "typing into a terminal (TIOCSTI, TIOCLINUX)"
    )
