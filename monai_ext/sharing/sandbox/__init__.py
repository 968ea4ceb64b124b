"""Running a received bundle in a child process that the kernel confines before it imports torch or monai.

``monai_ext run`` (:func:`monai_ext.sharing.safe_run.run`) calls :func:`.supervisor.run_confined`. The parent
(:mod:`.supervisor`) decides what the run may read and write (:mod:`.rules`, :mod:`.layout`), creates the bundle's
output folders and a private temporary folder, and starts ``python -I -B bootstrap.py SPEC`` with no terminal
(``/dev/null`` as input, a session of its own, output relayed through pipes), as a subreaper that kills whatever the
run leaves running. The child (:mod:`.bootstrap`) loads the kernel layers by file path (so nothing but the standard
library is imported): it drops every capability (:mod:`.capabilities`), restricts its files (:mod:`.landlock`) and
system calls (:mod:`.seccomp`), logs what is in force, and only then imports monai_ext and runs the workflow.
Everything the workflow evaluates, the bundle's own Python files included, runs under these rules:

- read: the Python environment, system libraries and settings (``/usr``, ``/lib*``, a few ``/etc`` files without
  secrets, ``/proc``, ``/sys``), the bundle, and the folders named on the command line;
- write: the bundle's output folders (``models``, ``eval``, ``outputs``, ``dataset``, ``logs``, and ``output`` or
  ``runs`` where the audit finds the configs writing there, as the Model Zoo's do; never an import name, a dotfile or
  ``__pycache__``, whatever the configs write to), the folders given as ``output_dir``, ``ckpt_dir`` or ``log_dir``
  overrides, and a private temporary folder, the run's ``HOME`` and ``TMPDIR``, deleted afterwards; and ``/dev/shm``,
  the shared-memory folder where Python's multiprocessing locks (MONAI's CacheDataset takes one even without workers)
  and PyTorch's shared tensors live, which a bundle can therefore leave files in until the next reboot; and the
  ``/dev/nvidia*`` device files, where a GPU driver has them;
- no ``execve`` (no shell, no subprocess), no TCP, no signals to outside processes, no device nodes, FIFOs or named
  sockets (see the Landlock module); no capabilities, even as root (see the capabilities module);
- no socket but UNIX ones: no UDP, Multipath TCP, raw or packet sockets, no io_uring; no program started from memory,
  no keyrings, no ``bpf``, no typing into a terminal (see the seccomp module). A UNIX socket may still connect to a
  local service's named socket, which seccomp cannot see and Landlock restricts only from ABI 9 on.

The run's working directory is the bundle root, as the Model Zoo's commands assume (``"bundle_root": "."``, macros
like ``%configs/train.json#x``); it is readable, not writable. An output folder that is a link leading out of the
bundle is refused: the kernel would follow it.
"""
