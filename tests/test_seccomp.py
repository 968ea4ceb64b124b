"""The seccomp filter alone, in a forked child: which sockets it refuses and which it leaves to multiprocessing."""

import ctypes
import errno
import os
import platform
import socket

import pytest

from monai_ext.sharing import seccomp

if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64", "riscv64"):
    pytest.skip(f"no seccomp filter for {platform.system()} on {platform.machine()}", allow_module_level=True)

IO_URING_SETUP = 425
IPPROTO_MPTCP = 262


def _in_filtered_child(probe):
    """Run ``probe()`` in a forked child after the filter is installed; return what it returned (a short string)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            seccomp.deny_network_sockets()
            os.write(write, probe().encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        return f.read()


def _socket_errno(family, kind, protocol=0):
    try:
        socket.socket(family, kind, protocol).close()
    except OSError as err:
        return err.errno
    return 0


def test_only_unix_sockets_can_be_created_after_the_filter_and_all_can_before():
    families = {
        "udp": (socket.AF_INET, socket.SOCK_DGRAM),
        "udp6": (socket.AF_INET6, socket.SOCK_DGRAM),
        "tcp": (socket.AF_INET, socket.SOCK_STREAM),
        "netlink": (socket.AF_NETLINK, socket.SOCK_RAW),
        "unix": (socket.AF_UNIX, socket.SOCK_STREAM),
        "unix_datagram": (socket.AF_UNIX, socket.SOCK_DGRAM),
    }
    before = {name: _socket_errno(*args) for name, args in families.items()}
    after = _in_filtered_child(lambda: ",".join(f"{n}={_socket_errno(*a)}" for n, a in families.items()))
    assert before == dict.fromkeys(families, 0)
    denied = errno.EACCES
    assert after == f"udp={denied},udp6={denied},tcp={denied},netlink={denied},unix=0,unix_datagram=0"


def test_multipath_tcp_which_landlock_does_not_cover_is_refused_too():
    # before the filter it depends on the kernel (MPTCP may be off); after it, the family alone decides
    assert _in_filtered_child(lambda: str(_socket_errno(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP))) == str(
        errno.EACCES
    )


def test_a_socket_pair_still_carries_data_and_io_uring_is_refused():
    def probe():
        left, right = socket.socketpair()
        left.sendall(b"tensor")
        libc = ctypes.CDLL(None, use_errno=True)
        refused = libc.syscall(IO_URING_SETUP, 1, None) == -1 and ctypes.get_errno() == errno.EACCES
        return f"{right.recv(6).decode()} io_uring refused={refused}"

    assert _in_filtered_child(probe) == "tensor io_uring refused=True"


def test_the_filter_outlives_a_second_call_and_reaches_forked_grandchildren():
    def probe():
        seccomp.deny_network_sockets()  # stacking a second filter is allowed and changes nothing
        read, write = os.pipe()
        if os.fork() == 0:
            os.write(write, str(_socket_errno(socket.AF_INET, socket.SOCK_DGRAM)).encode())
            os._exit(0)
        os.close(write)
        os.wait()
        return os.read(read, 8).decode()

    assert _in_filtered_child(probe) == str(errno.EACCES)
