"""The seccomp filter alone, in a forked child: which sockets it refuses and which it leaves to multiprocessing."""

import ctypes
import errno
import fcntl
import os
import platform
import signal
import socket
import termios

import pytest

from monai_ext.sharing.sandbox import seccomp

if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64", "riscv64"):
    pytest.skip(f"no seccomp filter for {platform.system()} on {platform.machine()}", allow_module_level=True)

IO_URING_SETUP = 425
IPPROTO_MPTCP = 262


NOBODY = 65534
# root, as this machine and most containers run; and an unprivileged user, where the tests run as root to become one
USERS = ["as_started", pytest.param("unprivileged", marks=pytest.mark.skipif(os.geteuid() != 0, reason="needs root"))]


def _in_filtered_child(probe, user="as_started", filtered=True):
    """Run ``probe()`` in a forked child, as ``user``, after the filter is installed (unless not ``filtered``);
    return what it returned (a short string)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if user == "unprivileged":
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
            if filtered:
                seccomp.restrict_system_calls()
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


@pytest.mark.parametrize("user", USERS)
def test_only_unix_sockets_can_be_created_after_the_filter_and_all_can_before(user):
    families = {
        "udp": (socket.AF_INET, socket.SOCK_DGRAM),
        "udp6": (socket.AF_INET6, socket.SOCK_DGRAM),
        "tcp": (socket.AF_INET, socket.SOCK_STREAM),
        "netlink": (socket.AF_NETLINK, socket.SOCK_RAW),
        "unix": (socket.AF_UNIX, socket.SOCK_STREAM),
        "unix_datagram": (socket.AF_UNIX, socket.SOCK_DGRAM),
    }

    def probe():
        return ",".join(f"{n}={_socket_errno(*a)}" for n, a in families.items())

    before, after = _in_filtered_child(probe, user, filtered=False), _in_filtered_child(probe, user)
    assert before == ",".join(f"{name}=0" for name in families)
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
        seccomp.restrict_system_calls()  # stacking a second filter is allowed and changes nothing
        read, write = os.pipe()
        if os.fork() == 0:
            os.write(write, str(_socket_errno(socket.AF_INET, socket.SOCK_DGRAM)).encode())
            os._exit(0)
        os.close(write)
        os.wait()
        return os.read(read, 8).decode()

    assert _in_filtered_child(probe) == str(errno.EACCES)


NUMBERS = seccomp._ARCHITECTURES[platform.machine()][1]


def _program_from_memory_errno(target):
    """Start /usr/bin/touch from an anonymous memfd copy of it (what Landlock's execute rule does not see)."""
    fd = os.memfd_create("payload")
    with open("/usr/bin/touch", "rb") as program:
        os.write(fd, program.read())
    try:
        os.waitpid(os.posix_spawn(f"/proc/self/fd/{fd}", ["touch", target], {}), 0)
    except OSError as err:
        return err.errno
    finally:
        os.close(fd)
    return 0


@pytest.mark.parametrize("user", USERS)
def test_no_program_starts_after_the_filter_not_even_from_memory(open_tmp_path, user):
    tmp_path = open_tmp_path
    before = int(_in_filtered_child(lambda: str(_program_from_memory_errno(str(tmp_path / "before"))), user, False))
    assert before == 0 and (tmp_path / "before").exists()
    after = _in_filtered_child(lambda: str(_program_from_memory_errno(str(tmp_path / "after"))), user)
    assert after == str(errno.EACCES) and not (tmp_path / "after").exists()


def _add_key_errno():
    libc = ctypes.CDLL(None, use_errno=True)
    process_keyring = -2  # KEY_SPEC_PROCESS_KEYRING: gone with the process, so the test leaves no key behind
    serial = libc.syscall(NUMBERS["add_key"], b"user", b"monai_ext_test", b"secret", 6, process_keyring)
    return 0 if serial > 0 else ctypes.get_errno()


@pytest.mark.parametrize("user", USERS)
def test_keyrings_are_unreachable_after_the_filter(user):
    before = int(_in_filtered_child(lambda: str(_add_key_errno()), user, filtered=False))
    if before:
        pytest.skip(f"keyrings are unavailable here before any filter: {errno.errorcode.get(before, before)}")
    assert _in_filtered_child(lambda: str(_add_key_errno()), user) == str(errno.EPERM)


def _typing_into_a_terminal_errno():
    controller, terminal = os.openpty()
    try:
        os.setsid()  # the pty becomes this process's controlling terminal: typing into it needs no privilege then
        fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # sent when the pty closes below
        fcntl.ioctl(terminal, termios.TIOCSTI, b"x")
    except OSError as err:
        return err.errno
    finally:
        os.close(controller)
        os.close(terminal)
    return 0


@pytest.mark.parametrize("user", USERS)
def test_typing_into_a_terminal_is_refused_after_the_filter(user):
    before = int(_in_filtered_child(lambda: str(_typing_into_a_terminal_errno()), user, filtered=False))
    if before:
        pytest.skip(f"TIOCSTI is refused here before any filter (dev.tty.legacy_tiocsti = 0?): {before}")
    assert _in_filtered_child(lambda: str(_typing_into_a_terminal_errno()), user) == str(errno.EPERM)


def test_bpf_is_refused_after_the_filter():
    def bpf_errno():
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(NUMBERS["bpf"], 0, None, 0) == -1 and ctypes.get_errno()

    before = bpf_errno()
    if before == errno.EPERM:
        pytest.skip("bpf is refused here before any filter")
    assert _in_filtered_child(lambda: str(bpf_errno())) == str(errno.EPERM)
