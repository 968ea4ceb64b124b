"""The audit's lookup table: which exact objects a bundle from another lab may name or call, which writers take a
path, and what a bundle has no honest use for (what the sandbox of ``monai_ext run`` stops, and what reaches past
it). The kernel enforces (:mod:`monai_ext.sharing.sandbox`); this table tells a reviewer what a config does.

A blocklist cannot be sound against ``eval``: allowed roots reach everything (``torch.os.system``), and names can be
rebound. So :mod:`monai_ext.sharing.expressions` resolves every object an expression names or calls to one Python
object, and it is accepted only when it is on the list below. The same table serves the static audit
(:mod:`monai_ext.sharing.audit`) and the run's notes (:mod:`monai_ext.sharing.safe_run`).
"""

from __future__ import annotations

import builtins
import enum
import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "IMPORTABLE_ROOTS", "REACHES_LOCAL_SERVICES", "SANDBOX_STOPS", "WRITERS", "Allowlist", "canonical_name",
    "component_problems", "qualified_name", "reaches_local_services", "resolve_dotted", "sandbox_stops",
]  # fmt: skip

# Top-level packages whose modules may be imported or named. Nothing outside them is ever imported by a check.
IMPORTABLE_ROOTS = frozenset(
    {"monai", "monai_ext", "torch", "numpy", "ignite", "os", "posixpath", "math", "glob", "logging"}
)
# Modules whose public classes and functions are allowed (prefix match on the object's defining module).
ALLOWED_MODULE_PREFIXES = (
    "monai.transforms", "monai.networks", "monai.losses", "monai.metrics", "monai.inferers", "monai.engines",
    "monai.handlers", "monai.data", "monai.optimizers",
    "torch.nn", "torch.optim", "torch.utils.data",
    "ignite.handlers", "ignite.metrics", "ignite.engine", "ignite.contrib.handlers",
    "monai_ext.networks", "monai_ext.bundle", "monai_ext.legacy", "monai_ext.sharing.checkpoint",
    "monai_ext.sharing.hashes",
    "math",
)  # fmt: skip
# Objects allowed by exact qualified name, outside the prefixes above.
ALLOWED_NAMES = frozenset(
    {
        "torch.device", "torch.tensor", "torch.as_tensor", "torch.zeros", "torch.ones", "torch.manual_seed",
        "torch.set_num_threads", "torch.cuda.is_available", "torch.cuda.device_count", "torch.cuda.set_device",
        "torch.distributed.is_available", "torch.distributed.distributed_c10d.is_initialized",
        "torch.distributed.distributed_c10d.init_process_group",
        "torch.distributed.distributed_c10d.destroy_process_group", "torch.distributed.distributed_c10d.get_rank",
        "torch.distributed.distributed_c10d.get_world_size", "torch.distributed.distributed_c10d.barrier",
        "posixpath.join", "posixpath.exists", "genericpath.exists", "genericpath.isfile", "genericpath.isdir",
        "posixpath.basename", "posixpath.dirname", "posixpath.splitext", "posixpath.abspath", "posixpath.realpath",
        "posixpath.normpath", "os.getcwd", "os.cpu_count", "os.makedirs", "glob.glob",
        "_collections_abc.Mapping.get", "os._Environ.get",
        "monai.utils.misc.set_determinism", "monai.utils.misc.first", "monai.utils.misc.ensure_tuple",
        "numpy.array", "numpy.asarray", "numpy.zeros", "numpy.ones", "numpy.arange",
        "logging.getLogger", "logging.Logger",
    }
)  # fmt: skip
# Refused even under an allowed prefix: datasets that unpickle a cache, and handlers that send data off the machine.
# (MONAI's CheckpointLoader and PersistentDataset are allowed: they load weights only, see WEIGHTS_ONLY_LOADERS.)
DENIED_NAMES = frozenset(
    {
        "monai.data.dataset.LMDBDataset", "monai.data.dataset.GDSDataset",
        "monai.handlers.mlflow_handler.MLFlowHandler", "monai.handlers.clearml_handlers.ClearMLHandler",
        "monai.handlers.clearml_handlers.ClearMLStatsHandler", "monai.handlers.clearml_handlers.ClearMLImageHandler",
        "monai.networks.utils.convert_to_torchscript", "monai.networks.utils.convert_to_onnx",
        "monai.networks.utils.convert_to_trt",
    }
)  # fmt: skip
# Whole modules refused under an allowed prefix: writers of arbitrary files reached by method calls, and loggers
# that send data to remote services.
DENIED_MODULE_PREFIXES = (
    "monai.data.image_writer", "monai.data.torchscript_utils",
    "ignite.handlers.mlflow_logger", "ignite.handlers.neptune_logger", "ignite.handlers.wandb_logger",
    "ignite.handlers.clearml_logger", "ignite.handlers.polyaxon_logger", "ignite.handlers.visdom_logger",
)  # fmt: skip
TENSOR_FUNCTIONS_DENIED = frozenset({"from_file"})
SAFE_BUILTINS = frozenset(
    {
        "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int",
        "isinstance", "issubclass", "len", "list", "map", "max", "min", "print", "range", "reversed", "round", "set",
        "slice", "sorted", "str", "sum", "tuple", "zip", "None", "True", "False",
    }
)  # fmt: skip
SAFE_BUILTIN_TYPES = (str, list, dict, tuple, set, frozenset, int, float, bool, range)
# Methods of plain data refused: str.format reaches attributes through its format string ("{0.__globals__}").
UNSAFE_DATA_METHODS = frozenset({"format", "format_map"})
# Module methods that return the module itself, so the result keeps its type (``@network_def.to(@device)``).
SELF_RETURNING_METHODS = frozenset({"to", "cuda", "cpu", "train", "eval", "float", "double", "half", "requires_grad_"})
# Writers and the argument holding the path they write to: (keyword, position).
WRITERS = {
    "os.makedirs": ("name", 0),
    "monai_ext.sharing.checkpoint.save_checkpoint": ("path", 1),
    "monai_ext.sharing.checkpoint.atomic_torch_save": ("path", 1),
    "monai_ext.sharing.hashes.record_sha256": ("path", 0),
    "monai_ext.sharing.hashes.atomic_write": ("path", 0),
    "monai_ext.bundle.previews.save_slice_preview": ("filepath", 3),
    "monai.networks.utils.save_state": ("path", 1),
    "monai.handlers.utils.write_metrics_reports": ("save_dir", 0),
    "monai.data.csv_saver.CSVSaver": ("output_dir", 0),
    "ignite.handlers.checkpoint.Checkpoint": ("save_handler", 1),
    "ignite.handlers.tensorboard_logger.TensorboardLogger": ("log_dir", 0),
    "monai_ext.bundle.synthetic.ensure_synthetic_msd": ("root", 0),
    "monai_ext.bundle.synthetic.write_synthetic_msd": ("root", 0),
    "monai_ext.bundle.standins.write_standin": ("dataset_dir", 1),
    "monai_ext.bundle.planning.fingerprint.fingerprint": ("output", 1),
    "monai_ext.bundle.model_record.describe_in_metadata": ("meta_file", 0),
    "monai_ext.bundle.model_record.MetadataUpdater": ("meta_file", 0),
    "monai.transforms.io.dictionary.SaveImaged": ("output_dir", None),
    "monai.transforms.io.array.SaveImage": ("output_dir", None),
    "monai.handlers.metrics_saver.MetricsSaver": ("save_dir", 0),
    "monai.handlers.tensorboard_handlers.TensorBoardStatsHandler": ("log_dir", None),
    "monai.handlers.tensorboard_handlers.TensorBoardImageHandler": ("log_dir", None),
    "monai.handlers.checkpoint_saver.CheckpointSaver": ("save_dir", 0),
    "monai.data.dataset.PersistentDataset": ("cache_dir", 2),
    "monai.data.dataset.CacheNTransDataset": ("cache_dir", 3),
    "monai.handlers.classification_saver.ClassificationSaver": ("output_dir", None),
    "monai.handlers.probability_maps.ProbMapProducer": ("output_dir", None),
    "monai_ext.sharing.checkpoint.AtomicCheckpointSaver": ("save_dir", 0),
    "monai_ext.sharing.checkpoint.AtomicDiskSaver": ("dirname", 0),
    "monai_ext.bundle.resume.ResumableCheckpointer": ("save_dir", 0),
    "monai_ext.bundle.previews.SlicePreviewSaver": ("output_dir", 0),
    "ignite.handlers.checkpoint.DiskSaver": ("dirname", 0),
    "ignite.handlers.checkpoint.ModelCheckpoint": ("dirname", 0),
}
# (module, class, attribute) -> (module, class) of attributes set in __init__, which the checker cannot see on the
# class: the Zoo's configs call `@trainer.logger.setLevel(...)`.
INSTANCE_ATTRIBUTES = {("ignite.engine.engine", "Engine", "logger"): ("logging", "Logger")}
# How MONAI may invoke a component: "debug" would open a debugger on the bundle's command.
COMPONENT_MODES = ("default", "callable")
CHECKED_LOADER = "monai_ext.sharing.checkpoint.CheckedCheckpointLoader"
# Components that call torch.load weights-only unless an argument switches it off.
WEIGHTS_ONLY_LOADERS = frozenset({"monai.data.dataset.PersistentDataset", "monai.data.dataset.CacheNTransDataset"})
# What a bundle has no honest use for and the sandbox of ``monai_ext run`` stops, by the qualified name of the resolved
# object (or, where the audit cannot import it, the dotted name it resolves to). A name matches an entry equal to it,
# under it (``subprocess`` covers ``subprocess.run``), or, for an entry ending in ``*``, starting with it.
SANDBOX_STOPS = {
    "starts programs": (
        "subprocess", "pty", "os.system", "os.popen", "os.exec*", "os.spawn*", "os.posix_spawn*", "os.fork*",
        "asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell", "multiprocessing.Process",
        "monai.utils.misc.run_cmd",
    ),
    "runs code it builds": (
        "builtins.exec", "builtins.eval", "builtins.compile", "runpy", "code", "codeop", "pickle", "marshal", "pdb",
        "types.FunctionType", "types.CodeType", "torch.serialization.add_safe_globals",
        "torch.serialization.safe_globals", "torch.package", "monai.bundle.config_parser.ConfigParser",
    ),
    "names what it runs only at run time": (
        "builtins.__import__", "builtins.getattr", "builtins.globals", "builtins.vars", "importlib", "pydoc.locate",
        "operator.attrgetter", "operator.methodcaller", "monai.utils.module.optional_import",
        "monai.utils.module.instantiate", "monai.utils.module.locate",
    ),
    "writes or deletes files by its own path": (
        "builtins.open", "io.open", "os.open", "os.remove", "os.unlink", "os.rename", "os.renames", "os.replace",
        "os.rmdir", "os.removedirs", "os.symlink", "os.link", "os.chmod", "os.chown", "os.mknod", "os.mkfifo",
        "os.truncate", "os.write", "shutil", "pathlib.Path.write_text", "pathlib.Path.write_bytes",
        "pathlib.Path.open", "pathlib.Path.unlink", "pathlib.Path.rename", "pathlib.Path.replace",
        "pathlib.Path.rmdir", "pathlib.Path.touch", "pathlib.Path.symlink_to", "pathlib.Path.hardlink_to",
        "pathlib.Path.chmod",
    ),
    "uses the network": (
        "socket", "ssl", "urllib", "http", "ftplib", "smtplib", "poplib", "imaplib", "telnetlib", "xmlrpc",
        "socketserver", "asyncio", "requests", "urllib3", "httpx", "aiohttp", "syslog", "multiprocessing.connection",
        "multiprocessing.managers", "logging.handlers.SocketHandler", "logging.handlers.DatagramHandler",
        "logging.handlers.SysLogHandler", "logging.handlers.HTTPHandler", "logging.handlers.SMTPHandler",
        "torch.hub", "monai.apps.utils.download_url", "monai.apps.utils.download_and_extract",
    ),
    "loads native code": (
        "ctypes", "cffi", "torch.ops.load_library", "torch._ops._Ops.load_library", "torch.classes.load_library",
        "torch.utils.cpp_extension",
    ),
}  # fmt: skip
# Of those, what can reach a local service through a UNIX socket by path, which the sandbox allows (seccomp does not
# see the path, and Landlock restricts it only from ABI 9 on): not contained.
REACHES_LOCAL_SERVICES = (
    "socket", "asyncio", "syslog", "multiprocessing.connection", "multiprocessing.managers",
    "logging.handlers.SocketHandler", "logging.handlers.DatagramHandler", "logging.handlers.SysLogHandler",
)  # fmt: skip
# the modules that define what another name exports: os.system is posix.system, socket.socket is _socket.socket
_CANONICAL_MODULES = {"posix": "os", "_socket": "socket", "_io": "io", "_pickle": "pickle", "_ctypes": "ctypes"}


def qualified_name(obj: Any) -> str | None:
    """``module.Qualname`` of a class, function or method, as the allow-list names it."""
    if inspect.ismodule(obj):
        return obj.__name__
    owner = getattr(obj, "__objclass__", None)
    if owner is not None and hasattr(obj, "__name__"):
        return f"{owner.__module__}.{owner.__qualname__}.{obj.__name__}"
    bound_to = getattr(obj, "__self__", None)
    if inspect.isbuiltin(obj) and bound_to is not None and not inspect.ismodule(bound_to):
        owner = type(bound_to)
        return f"{owner.__module__}.{owner.__qualname__}.{obj.__name__}"
    if inspect.ismethod(obj):
        return qualified_name(obj.__func__)
    module = getattr(obj, "__module__", None)
    short = getattr(obj, "__name__", None)
    if module and short and getattr(sys.modules.get(module), short, None) is obj:
        return f"{module}.{short}"  # what the module calls it: torch.zeros, not torch._VariableFunctionsClass.zeros
    name = getattr(obj, "__qualname__", None) or short
    return f"{module}.{name}" if module and name else None


@dataclass
class Allowlist:
    """The curated list plus a user's additions (``--allow NAME``, exact qualified names or module prefixes)."""

    extra: frozenset[str] = frozenset()

    def allows_module(self, name: str) -> bool:
        return name.split(".")[0] in IMPORTABLE_ROOTS or any(under(name, extra) for extra in self.extra)

    def reason(self, obj: Any) -> str | None:
        """``None`` when ``obj`` may be named or called, else why not."""
        name = qualified_name(obj)
        if inspect.ismodule(obj):
            return None if self.allows_module(obj.__name__) else f"module {obj.__name__} is not on the allow-list"
        if name is None:
            return f"{obj!r:.60} cannot be resolved to a qualified name"
        if any(under(name, extra) for extra in self.extra):
            return None
        if name in DENIED_NAMES or any(under(name, prefix) for prefix in DENIED_MODULE_PREFIXES):
            return f"{name} is refused: it unpickles files or sends data off the machine (allowlist.DENIED_NAMES)"
        if name.startswith("builtins."):
            short = name.removeprefix("builtins.")
            owner = short.split(".")[0]
            if short in SAFE_BUILTINS:
                return None
            if any(owner == t.__name__ for t in SAFE_BUILTIN_TYPES) and short.split(".")[-1] not in UNSAFE_DATA_METHODS:
                return None
            return f"{name} is not an allowed builtin"
        if name in ALLOWED_NAMES or _is_numpy_scalar_type(obj) or _is_library_enum(obj) or _is_tensor_function(obj):
            return None
        if any(under(name, prefix) for prefix in ALLOWED_MODULE_PREFIXES) and not is_private(name):
            return None
        return f"{name} is not on the allow-list"


def canonical_name(name: str) -> str:
    """``name`` as the public module spells it (``posix.system`` is ``os.system``), without call parentheses
    (``pathlib.Path().write_text`` is ``pathlib.Path.write_text``)."""
    name = name.replace("()", "")
    root, _, rest = name.partition(".")
    return f"{_CANONICAL_MODULES.get(root, root)}.{rest}" if rest else _CANONICAL_MODULES.get(root, root)


def _matches(name: str, entry: str) -> bool:
    return name.startswith(entry[:-1]) if entry.endswith("*") else under(name, entry)


def sandbox_stops(name: str) -> tuple[str, ...]:
    """What of :data:`SANDBOX_STOPS` the object named ``name`` (a qualified or dotted name) tries, if anything."""
    name = canonical_name(name)
    return tuple(what for what, entries in SANDBOX_STOPS.items() if any(_matches(name, e) for e in entries))


def reaches_local_services(name: str) -> bool:
    """Whether the object named ``name`` can open a UNIX socket by path (:data:`REACHES_LOCAL_SERVICES`)."""
    return any(under(canonical_name(name), entry) for entry in REACHES_LOCAL_SERVICES)


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_private(name: str) -> bool:
    return any(part.startswith("_") and part != "__init__" for part in name.split("."))


def is_definition(obj: Any) -> bool:
    """A function, method, class or module: named by the allow-list (instances are judged by their class)."""
    return inspect.isroutine(obj) or inspect.isclass(obj) or inspect.ismodule(obj)


def _is_numpy_scalar_type(obj: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, type) and issubclass(obj, numpy.generic)


def _is_tensor_function(obj: Any) -> bool:
    """A public tensor operation of torch's C core (``torch.where``, ``torch.randn``): pure computation, except
    ``from_file``, which maps a file."""
    torch = sys.modules.get("torch")
    name = getattr(obj, "__name__", "")
    if torch is None or not inspect.isbuiltin(obj) or name.startswith("_") or name in TENSOR_FUNCTIONS_DENIED:
        return False
    return getattr(torch._C._VariableFunctions, name, None) is obj


def _is_library_enum(obj: Any) -> bool:
    return isinstance(obj, enum.EnumMeta) and str(obj.__module__).split(".")[0] in {"monai", "ignite", "monai_ext"}


def module_attribute(module: Any, attr: str, allowlist: Allowlist) -> Any:
    """``module.attr`` as ``pydoc.locate`` finds it, importing a submodule only inside the importable roots."""
    if hasattr(module, attr):
        return getattr(module, attr)
    submodule = f"{module.__name__}.{attr}"
    if allowlist.allows_module(submodule):
        try:
            return importlib.import_module(submodule)
        except ImportError:
            return None
    return None


def resolve_dotted(path: str, allowlist: Allowlist) -> tuple[Any, str | None]:
    """The object a dotted ``_target_`` names, resolved as MONAI's ``locate`` would, importing only allowed modules.

    Returns:
        ``(object, None)``, or ``(None, reason)`` when the path leaves the importable roots or names nothing.
    """
    parts = path.split(".")
    if not allowlist.allows_module(parts[0]):
        if len(parts) == 1 and parts[0] in dir(builtins):
            return getattr(builtins, parts[0]), None
        return None, f"{path} lies outside the importable packages ({', '.join(sorted(IMPORTABLE_ROOTS))})"
    try:
        obj = importlib.import_module(parts[0])
    except ImportError:
        return None, f"{path}: package {parts[0]} is not installed"
    for depth, part in enumerate(parts[1:], start=1):
        if part.startswith("_"):
            return None, f"{path}: {part} is private"
        obj = module_attribute(obj, part, allowlist) if inspect.ismodule(obj) else getattr(obj, part, None)
        if obj is None:
            return None, f"{path}: {'.'.join(parts[: depth + 1])} does not exist"
    return obj, None


def component_problems(
    config: dict, target: Any, allowlist: Allowlist, path_allowed: Callable[[Any], bool]
) -> list[str]:
    """Why a component may not be built: its invocation mode, its resolved ``target`` (``None`` when it did not
    resolve), a switched-off checkpoint check, or a writer's path argument that ``path_allowed`` rejects.

    The audit judges paths from the config (provably inside the bundle), the safe runner from their values (inside
    the bundle or a folder named on the command line); everything else is judged alike.
    """
    problems = []
    mode = config.get("_mode_", "default")
    if mode not in COMPONENT_MODES:
        problems.append(f"_mode_ {mode!r} is refused (only {', '.join(COMPONENT_MODES)}; 'debug' opens a debugger)")
    if "_debug_" in config:
        problems.append("_debug_ opens a debugger")
    if target is None:
        return problems
    reason = allowlist.reason(target)
    if reason:
        problems.append(reason)
    name = qualified_name(target)
    if name in WEIGHTS_ONLY_LOADERS and config.get("weights_only", True) is not True:
        problems.append("weights_only must stay true: with it off, loading the cache unpickles code")
    if name == CHECKED_LOADER and config.get("verify", True) is not True:
        problems.append("verify must stay true: checkpoint verification cannot be switched off")
    if name in WRITERS and WRITERS[name][0] in config and not path_allowed(config[WRITERS[name][0]]):
        problems.append(f"{name} writes to {config[WRITERS[name][0]]!r}, not inside the bundle or a folder you named")
    return problems
