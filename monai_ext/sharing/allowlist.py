"""What a bundle from another lab may run: a curated allow-list of exact objects, and a checker that resolves every
name, attribute, reference and call of a config expression to one of them, the way MONAI will evaluate it.

A blocklist cannot be sound against ``eval``: allowed roots reach everything (``torch.os.system``), and names can be
rebound. So every object an expression names or calls is resolved to one Python object and accepted only when it is
on the list below; attributes starting with ``_`` are refused outright, as are assignment expressions, lambda
parameters and comprehension variables that rebind a name in use, and calls on objects whose type is not known.
Paths given to known writers must be provably inside the bundle.

The same checker serves the static audit (:mod:`monai_ext.sharing.audit`: references are typed from the config,
e.g. a component's class) and the safe runner (:mod:`monai_ext.sharing.safe_run`: references are the objects MONAI
resolved, checked the moment before MONAI evaluates the expression). Neither is the enforcement: an in-process check
of ``eval``'d Python can be routed around, so ``monai_ext run`` relies on the kernel (:mod:`.confined`), and this
checker tells a reviewer what the allow-list could not vouch for.
"""

from __future__ import annotations

import ast
import builtins
import enum
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IMPORTABLE_ROOTS",
    "Allowlist",
    "Check",
    "Namespace",
    "Value",
    "check_code",
    "component_problems",
    "rewrite_like_monai",
]

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
    "monai_ext.sharing.checkpoint.record_sha256": ("path", 0),
    "monai_ext.sharing.checkpoint.atomic_write": ("path", 0),
    "monai_ext.bundle.previews.save_slice_preview": ("filepath", 3),
    "monai.networks.utils.save_state": ("path", 1),
    "monai.handlers.utils.write_metrics_reports": ("save_dir", 0),
    "monai.data.csv_saver.CSVSaver": ("output_dir", 0),
    "ignite.handlers.checkpoint.Checkpoint": ("save_handler", 1),
    "ignite.handlers.tensorboard_logger.TensorboardLogger": ("log_dir", 0),
    "monai_ext.bundle.synthetic.ensure_synthetic_msd": ("root", 0),
    "monai_ext.bundle.synthetic.write_synthetic_msd": ("root", 0),
    "monai_ext.bundle.standins.write_standin": ("dataset_dir", 1),
    "monai_ext.bundle.fingerprint.fingerprint": ("output", 1),
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
    ),
    "runs code it builds": (
        "builtins.exec", "builtins.eval", "builtins.compile", "runpy", "code", "codeop", "pickle", "marshal", "pdb",
        "types.FunctionType", "types.CodeType", "torch.serialization.add_safe_globals",
        "torch.serialization.safe_globals",
    ),
    "names what it runs only at run time": (
        "builtins.__import__", "builtins.getattr", "builtins.globals", "builtins.vars", "importlib", "pydoc.locate",
        "operator.attrgetter", "operator.methodcaller",
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
        "ctypes", "cffi", "torch.ops.load_library", "torch.classes.load_library", "torch.utils.cpp_extension",
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
REFS = "__local_refs"  # the name MONAI gives the resolved references inside an evaluated expression
_REF_MATCH = re.compile(r"@(?:\w*)(?:::\w*)*")


def rewrite_like_monai(code: str, known_ids: Iterable[str] | None = None) -> str:
    """The code MONAI evaluates for a ``$`` expression (without the ``$``): every ``#`` becomes ``::`` (MONAI's
    id separator, also inside strings and comments) and every ``@id`` becomes ``__local_refs['id']``.
    ``known_ids`` limits the rewriting to ids that exist, as MONAI's resolver does; ``None`` rewrites all."""
    code = code.replace("#", "::")
    # a config's ids come as a dict or set: copying them per expression made auditing quadratic in config size
    known = known_ids if known_ids is None or isinstance(known_ids, Set | Mapping) else set(known_ids)
    for item in sorted(_REF_MATCH.findall(code), key=len, reverse=True):
        ref_id = item[1:]
        if known is None or ref_id in known:
            code = code.replace(item, f"{REFS}['{ref_id}']")
    return code


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
        return name.split(".")[0] in IMPORTABLE_ROOTS or any(_under(name, extra) for extra in self.extra)

    def reason(self, obj: Any) -> str | None:
        """``None`` when ``obj`` may be named or called, else why not."""
        name = qualified_name(obj)
        if inspect.ismodule(obj):
            return None if self.allows_module(obj.__name__) else f"module {obj.__name__} is not on the allow-list"
        if name is None:
            return f"{obj!r:.60} cannot be resolved to a qualified name"
        if any(_under(name, extra) for extra in self.extra):
            return None
        if name in DENIED_NAMES or any(_under(name, prefix) for prefix in DENIED_MODULE_PREFIXES):
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
        if any(_under(name, prefix) for prefix in ALLOWED_MODULE_PREFIXES) and not _private(name):
            return None
        return f"{name} is not on the allow-list"


def canonical_name(name: str) -> str:
    """``name`` as the public module spells it (``posix.system`` is ``os.system``), without call parentheses
    (``pathlib.Path().write_text`` is ``pathlib.Path.write_text``)."""
    name = name.replace("()", "")
    root, _, rest = name.partition(".")
    return f"{_CANONICAL_MODULES.get(root, root)}.{rest}" if rest else _CANONICAL_MODULES.get(root, root)


def _matches(name: str, entry: str) -> bool:
    return name.startswith(entry[:-1]) if entry.endswith("*") else _under(name, entry)


def sandbox_stops(name: str) -> tuple[str, ...]:
    """What of :data:`SANDBOX_STOPS` the object named ``name`` (a qualified or dotted name) tries, if anything."""
    name = canonical_name(name)
    return tuple(what for what, entries in SANDBOX_STOPS.items() if any(_matches(name, e) for e in entries))


def reaches_local_services(name: str) -> bool:
    """Whether the object named ``name`` can open a UNIX socket by path (:data:`REACHES_LOCAL_SERVICES`)."""
    return any(_under(canonical_name(name), entry) for entry in REACHES_LOCAL_SERVICES)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _private(name: str) -> bool:
    return any(part.startswith("_") and part != "__init__" for part in name.split("."))


def _is_definition(obj: Any) -> bool:
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


@dataclass(frozen=True)
class Value:
    """What the checker knows of a sub-expression: a concrete object, an instance of a class, or nothing."""

    obj: Any = None
    cls: type | None = None
    known: bool = False  # ``obj`` is the concrete object
    provable_path: bool = False  # a path provably inside the bundle (static checks)
    symbol: str | None = None  # the dotted name of what the check may not import (``subprocess.run``), if that

    @staticmethod
    def of(obj: Any) -> Value:
        return Value(obj=obj, known=True)

    @staticmethod
    def instance(cls: type | None) -> Value:
        return Value(cls=cls)


UNKNOWN = Value()


@dataclass
class Namespace:
    """Where names and references come from.

    Attributes:
        globals: name -> Value, the names the config's imports and MONAI's defaults bind.
        ref: ``id -> Value`` for ``@id`` references (``__local_refs['id']``).
        path_allowed: at run time, whether a concrete path is inside the allowed folders; ``None`` for static
            checks, which rely on ``Value.provable_path``.
    """

    globals: dict[str, Value]
    ref: Callable[[str], Value]
    path_allowed: Callable[[str], bool] | None = None


@dataclass
class Check:
    """What checking one expression found: its problems, its value, what it names (qualified names of the objects,
    dotted names of what it may not import) and where it writes."""

    problems: list[str] = field(default_factory=list)
    result: Value = UNKNOWN
    names: list[str] = field(default_factory=list)
    writes: list[tuple[str, Value]] = field(default_factory=list)


def _module_attribute(module: Any, attr: str, allowlist: Allowlist) -> Any:
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
        obj = _module_attribute(obj, part, allowlist) if inspect.ismodule(obj) else getattr(obj, part, None)
        if obj is None:
            return None, f"{path}: {'.'.join(parts[: depth + 1])} does not exist"
    return obj, None


class _Checker:
    def __init__(self, namespace: Namespace, allowlist: Allowlist) -> None:
        self.namespace = namespace
        self.allowlist = allowlist
        self.problems: list[str] = []
        self.names: list[str] = []  # qualified names of the functions and classes named, allowed or not
        self.writes: list[tuple[str, Value]] = []  # (writer, the path it writes to)

    def flag(self, message: str) -> Value:
        self.problems.append(message)
        return UNKNOWN

    def symbol(self, name: str) -> Value:
        """What the expression names but the check may not import: known by its dotted name only."""
        self.names.append(name)
        return Value(symbol=name)

    def named(self, value: Value, shown: str) -> Value:
        """A function, class or module that an expression names must be allowed even when it is not called."""
        if value.symbol is not None:
            self.names.append(value.symbol)
        if value.known and _is_definition(value.obj):
            self.names.append(qualified_name(value.obj) or shown)
            reason = self.allowlist.reason(value.obj)
            if reason:
                return self.flag(f"{shown}: {reason}")
        return value

    def visit(self, node: ast.AST, local: frozenset[str]) -> Value:
        method = getattr(self, f"_on_{type(node).__name__.lower()}", None)
        if method is None:
            return self.flag(f"{type(node).__name__} is not allowed in a config expression")
        return method(node, local)

    def _on_expression(self, node: ast.Expression, local: frozenset[str]) -> Value:
        return self.visit(node.body, local)

    def _on_constant(self, node: ast.Constant, local: frozenset[str]) -> Value:
        value = Value.of(node.value)
        if isinstance(node.value, str):
            path = node.value
            outside = os.path.isabs(path) or path.startswith("~") or ".." in path.replace("\\", "/").split("/")
            return Value(obj=node.value, known=True, provable_path=not outside)
        return value

    def _on_joinedstr(self, node: ast.JoinedStr, local: frozenset[str]) -> Value:
        for part in node.values:
            self.visit(part, local)
        return Value.instance(str)

    def _on_formattedvalue(self, node: ast.FormattedValue, local: frozenset[str]) -> Value:
        self.visit(node.value, local)
        if node.format_spec is not None:
            self.visit(node.format_spec, local)
        return Value.instance(str)

    def _container(self, elements: list[ast.AST], local: frozenset[str], cls: type) -> Value:
        for element in elements:
            if element is not None:
                self.visit(element, local)
        return Value.instance(cls)

    def _on_list(self, node: ast.List, local: frozenset[str]) -> Value:
        return self._container(node.elts, local, list)

    def _on_tuple(self, node: ast.Tuple, local: frozenset[str]) -> Value:
        return self._container(node.elts, local, tuple)

    def _on_set(self, node: ast.Set, local: frozenset[str]) -> Value:
        return self._container(node.elts, local, set)

    def _on_dict(self, node: ast.Dict, local: frozenset[str]) -> Value:
        return self._container([*node.keys, *node.values], local, dict)

    def _on_starred(self, node: ast.Starred, local: frozenset[str]) -> Value:
        return self.visit(node.value, local)

    def _on_slice(self, node: ast.Slice, local: frozenset[str]) -> Value:
        return self._container([node.lower, node.upper, node.step], local, slice)

    def _on_boolop(self, node: ast.BoolOp, local: frozenset[str]) -> Value:
        for operand in node.values:
            self.visit(operand, local)
        return UNKNOWN

    def _on_binop(self, node: ast.BinOp, local: frozenset[str]) -> Value:
        left, right = self.visit(node.left, local), self.visit(node.right, local)
        if not isinstance(node.op, ast.Add) or not (right.known and isinstance(right.obj, str)):
            return UNKNOWN
        if left.known and isinstance(left.obj, str):  # "@bundle_root + '/eval'" with bundle_root "."
            joined = self._on_constant(ast.Constant(left.obj + right.obj), local)
            return joined if left.provable_path else Value.of(joined.obj)
        # a provable folder known only at run time (bundle_root()) extended by a literal without ".."
        return Value(provable_path=left.provable_path and ".." not in right.obj.replace("\\", "/").split("/"))

    def _on_unaryop(self, node: ast.UnaryOp, local: frozenset[str]) -> Value:
        self.visit(node.operand, local)
        return UNKNOWN

    def _on_compare(self, node: ast.Compare, local: frozenset[str]) -> Value:
        for operand in [node.left, *node.comparators]:
            self.visit(operand, local)
        return Value.instance(bool)

    def _on_ifexp(self, node: ast.IfExp, local: frozenset[str]) -> Value:
        self.visit(node.test, local)
        body, orelse = self.visit(node.body, local), self.visit(node.orelse, local)
        return Value(provable_path=body.provable_path and orelse.provable_path)

    def _on_name(self, node: ast.Name, local: frozenset[str]) -> Value:
        name = node.id
        if name in local:
            return UNKNOWN
        if name == REFS:
            return self.flag(f"{REFS} may only be indexed with a reference id")
        if name in self.namespace.globals:
            return self.named(self.namespace.globals[name], name)
        if name in SAFE_BUILTINS:
            return Value.of(getattr(builtins, name))
        if name.startswith("_"):
            self.flag(f"{name}: names starting with _ are refused")
        elif hasattr(builtins, name):
            self.flag(f"{name}: builtins.{name} is not an allowed builtin")
        else:  # a module that another config, or an import this check refused, may bind
            self.flag(f"{name}: not defined by any import of the bundle")
        return self.symbol(f"builtins.{name}" if hasattr(builtins, name) else name)

    def _on_subscript(self, node: ast.Subscript, local: frozenset[str]) -> Value:
        if isinstance(node.value, ast.Name) and node.value.id == REFS and node.value.id not in local:
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                return self.named(self.namespace.ref(node.slice.value), f"@{node.slice.value}")
            return self.flag(f"{REFS} may only be indexed with a reference id")
        self.visit(node.value, local)
        self.visit(node.slice, local)
        return UNKNOWN

    def _on_attribute(self, node: ast.Attribute, local: frozenset[str]) -> Value:
        shown = ast.unparse(node)
        if node.attr.startswith("_"):
            self.visit(node.value, local)
            return self.flag(f"{shown}: attributes starting with _ are refused (they can reach arbitrary code)")
        base = self.visit(node.value, local)
        if base.symbol is not None:
            return self.symbol(f"{base.symbol}.{node.attr}")
        if base.known and inspect.ismodule(base.obj):
            found = _module_attribute(base.obj, node.attr, self.allowlist)
            if found is None:
                return self.flag(f"{shown}: {base.obj.__name__}.{node.attr} does not exist or is not importable")
            return self.named(Value.of(found), shown)
        if base.known and inspect.isclass(base.obj):
            return self.named(Value.of(getattr(base.obj, node.attr, None)), shown)
        if base.known:  # an object, callable or not (a network is callable): its methods come from its class
            return _method(type(base.obj), node.attr)
        if base.cls is not None:
            return _method(base.cls, node.attr)
        return UNKNOWN

    def _on_call(self, node: ast.Call, local: frozenset[str]) -> Value:
        shown = ast.unparse(node.func)
        if shown == "setattr" and "setattr" not in local and "setattr" not in self.namespace.globals:
            return self._setattr([self.visit(arg, local) for arg in node.args], node, local)
        already = len(self.problems)
        function = self.visit(node.func, local)
        arguments = [self.visit(arg, local) for arg in node.args]
        keywords = {kw.arg: self.visit(kw.value, local) for kw in node.keywords}
        if function.known and callable(function.obj) and not _is_definition(function.obj):
            reason = self.allowlist.reason(type(function.obj))  # calling an object: its class's __call__
            return self.flag(f"{shown}: {reason}") if reason else UNKNOWN
        if function.known and callable(function.obj):
            reason = self.allowlist.reason(function.obj)
            if reason:
                return self.flag(f"{shown}: {reason}")
            self.check_write(qualified_name(function.obj), node, arguments, keywords, shown)
            if inspect.isclass(function.obj):
                return Value.instance(function.obj)
            name = qualified_name(function.obj)
            if name == "posixpath.join":
                provable = all(a.provable_path for a in arguments) and bool(arguments)
                if arguments and all(a.known and isinstance(a.obj, str) for a in arguments):
                    return Value(obj=os.path.join(*(a.obj for a in arguments)), known=True, provable_path=provable)
                return Value(provable_path=provable)
            if name == "monai_ext.bundle.paths.bundle_root":
                return Value(provable_path=True)
            if name == "logging.getLogger":
                return Value.instance(sys.modules["logging"].Logger)
            return UNKNOWN
        if isinstance(function.obj, _BoundMethod):
            owner, name, target = function.obj.owner, function.obj.name, function.obj.target
            reason = self.allowlist.reason(target)
            refused = qualified_name(target) in DENIED_NAMES or (
                owner in SAFE_BUILTIN_TYPES and name in UNSAFE_DATA_METHODS
            )
            if reason and not refused and self.allowlist.reason(owner) is None and not _private(name):
                reason = None  # a public method of an allowed class
            if reason:
                return self.flag(f"{shown}: {reason}")
            module = sys.modules.get("torch.nn")
            if name in SELF_RETURNING_METHODS and module is not None and issubclass(owner, module.Module):
                return Value.instance(owner)
            return UNKNOWN
        if function.cls is not None and not function.known:  # an instance of a known class: its __call__
            reason = self.allowlist.reason(function.cls)
            return self.flag(f"{shown}: {reason}") if reason else UNKNOWN
        if function.symbol is not None:
            return self._symbolic_call(function.symbol, node, arguments)
        if len(self.problems) > already:
            return UNKNOWN  # the callee itself was refused; one message is enough
        return self.flag(f"{shown}(...): calls an object of unknown type (only allowed classes and functions, and "
                         "methods of objects of allowed classes, may be called)")  # fmt: skip

    def _symbolic_call(self, callee: str, node: ast.Call, arguments: list[Value]) -> Value:
        """A call of what the check may not import: ``__import__('os')`` is the module ``os``, ``getattr(x, 'y')`` is
        ``x.y``, anything else is the call's result (``pathlib.Path()``); a name computed at run time stays the
        callee's, which :data:`SANDBOX_STOPS` lists."""
        literal = [a.obj if a.known and isinstance(a.obj, str) else None for a in arguments]
        if callee in ("builtins.__import__", "importlib.import_module") and literal and literal[0]:
            return self.symbol(literal[0])
        if callee == "builtins.getattr" and len(literal) >= 2 and literal[1] and arguments[0].symbol is not None:
            return self.symbol(f"{arguments[0].symbol}.{literal[1]}")
        return self.symbol(f"{callee}()")

    def _setattr(self, arguments: list[Value], node: ast.Call, local: frozenset[str]) -> Value:
        """``setattr(torch.backends.cudnn, 'benchmark', True)``, as the Model Zoo writes it, and nothing else: named
        anywhere but as the callee, ``setattr`` stays refused."""
        shown = "setattr"
        for keyword in node.keywords:
            self.visit(keyword.value, local)
        owner = arguments[0] if arguments else UNKNOWN
        attribute = arguments[1] if len(arguments) > 1 else UNKNOWN
        if (
            len(arguments) == 3
            and not node.keywords
            and owner.known
            and inspect.ismodule(owner.obj)
            and _under(owner.obj.__name__, "torch.backends")
            and attribute.known
            and isinstance(attribute.obj, str)
            and not attribute.obj.startswith("_")
        ):
            return UNKNOWN
        return self.flag(f"{shown}: only setattr(torch.backends.<module>, 'name', value) is accepted")

    def check_write(self, name: str | None, node: ast.Call, args: list[Value], keywords: dict, shown: str) -> None:
        if name not in WRITERS:
            return
        keyword, position = WRITERS[name]
        if keyword in keywords:
            path = keywords[keyword]
        elif position is not None and len(args) > position:
            path = args[position]
        else:
            return
        self.writes.append((name, path))
        self.check_path(path, f"{shown} writes to")

    def check_path(self, path: Value, what: str) -> None:
        if self.namespace.path_allowed is not None:
            if not (path.known and isinstance(path.obj, str | os.PathLike)):
                self.flag(f"{what} a path that is only known once it runs (give it as a reference or a literal)")
            elif not self.namespace.path_allowed(os.fspath(path.obj)):
                self.flag(f"{what} {os.fspath(path.obj)!r}, outside the bundle and the folders you named")
        elif not path.provable_path:
            self.flag(f"{what} a path not provably inside the bundle (literal relative paths, @bundle_root and "
                      "os.path.join of those with literal parts are)")  # fmt: skip

    def _comprehension(self, generators: list[ast.comprehension], parts: list[ast.AST], local: frozenset[str]):
        for generator in generators:
            self.visit(generator.iter, local)
            names = [n.id for n in ast.walk(generator.target) if isinstance(n, ast.Name)]
            for name in names:
                if name in self.namespace.globals or hasattr(builtins, name) or name == REFS or name.startswith("_"):
                    self.flag(f"comprehension variable {name!r} rebinds a name the expression could otherwise use")
            local = local | frozenset(names)
            for condition in generator.ifs:
                self.visit(condition, local)
        for part in parts:
            self.visit(part, local)
        return UNKNOWN

    def _on_listcomp(self, node: ast.ListComp, local: frozenset[str]) -> Value:
        return self._comprehension(node.generators, [node.elt], local)

    def _on_setcomp(self, node: ast.SetComp, local: frozenset[str]) -> Value:
        return self._comprehension(node.generators, [node.elt], local)

    def _on_generatorexp(self, node: ast.GeneratorExp, local: frozenset[str]) -> Value:
        return self._comprehension(node.generators, [node.elt], local)

    def _on_dictcomp(self, node: ast.DictComp, local: frozenset[str]) -> Value:
        return self._comprehension(node.generators, [node.key, node.value], local)

    def _on_lambda(self, node: ast.Lambda, local: frozenset[str]) -> Value:
        """The body is checked as written, its parameters of unknown type (``lambda x: x[0]['pred']``)."""
        arguments = node.args
        names = [a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]]
        names += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
        for default in [*arguments.defaults, *arguments.kw_defaults]:
            if default is not None:
                self.visit(default, local)
        for name in names:
            if name in self.namespace.globals or hasattr(builtins, name) or name == REFS or name.startswith("_"):
                self.flag(f"lambda parameter {name!r} rebinds a name the expression could otherwise use")
        self.visit(node.body, local | frozenset(names))
        return UNKNOWN

    def _on_namedexpr(self, node: ast.NamedExpr, local: frozenset[str]) -> Value:
        return self.flag(":= binds a name inside the expression")


@dataclass(frozen=True)
class _BoundMethod:
    owner: type
    name: str
    target: Any


def _instance_attribute(owner: type, name: str) -> type | None:
    """The class of an attribute that a library sets in ``__init__`` (invisible on the class), where it is known."""
    for (module, qualname, attribute), (attribute_module, attribute_class) in INSTANCE_ATTRIBUTES.items():
        if attribute != name or module not in sys.modules or attribute_module not in sys.modules:
            continue
        base = getattr(sys.modules[module], qualname, None)
        if isinstance(base, type) and issubclass(owner, base):
            return getattr(sys.modules[attribute_module], attribute_class)
    return None


def _method(owner: type, name: str) -> Value:
    attribute = _instance_attribute(owner, name)
    if attribute is not None:
        return Value.instance(attribute)
    target = inspect.getattr_static(owner, name, None)
    if isinstance(target, (staticmethod, classmethod)):
        target = target.__func__
    if target is None or not callable(target):
        return UNKNOWN  # a data attribute or property: reading it is allowed
    return Value(obj=_BoundMethod(owner, name, target))


def _import_problems(tree: ast.AST, namespace: Namespace, allowlist: Allowlist) -> Check:
    """Imports bind names in the globals all expressions share, as MONAI's ``_parse_import_string`` does."""
    problems = []
    node = tree.body[0]
    alias = node.names[0]
    if isinstance(node, ast.ImportFrom):
        module, target = node.module or "", f"{node.module}.{alias.name}"
        bound = alias.asname or alias.name
    else:
        module = target = alias.name
        bound = alias.asname or alias.name  # MONAI binds the dotted name itself for `import a.b`
    if node.__class__ is ast.ImportFrom and node.level:
        return Check([f"relative import from {'.' * node.level}{module}: runs bundle-local code"])
    if not allowlist.allows_module(module):
        return Check([f"import of {module}: not on the allow-list"], names=[target])
    obj, reason = resolve_dotted(target, allowlist)
    if reason:
        return Check([f"import of {target}: {reason}"], names=[target])
    reason = allowlist.reason(obj)
    if reason:
        problems.append(f"import of {target}: {reason}")
    else:
        namespace.globals[bound] = Value.of(obj)
    return Check(problems, names=[qualified_name(obj) or target])


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


def check_code(code: str, namespace: Namespace, allowlist: Allowlist) -> Check:
    """Check one expression or import statement exactly as MONAI will evaluate it (already rewritten).

    Returns:
        The problems found (empty when everything it names or calls is allowed) and what the expression evaluates
        to, as far as it is known.
    """
    try:
        return _check_parsed(code, namespace, allowlist)
    except RecursionError:  # a valid expression nested hundreds deep: Python's parser or our walk runs out of stack
        return Check(["nested too deeply to check (Python's recursion limit); refused"])


def _check_parsed(code: str, namespace: Namespace, allowlist: Allowlist) -> Check:
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        try:
            statement = ast.parse(code, mode="exec")
        except SyntaxError as err:
            return Check([f"does not parse as Python ({err.msg}); refused"])
        if len(statement.body) == 1 and isinstance(statement.body[0], ast.Import | ast.ImportFrom):
            return _import_problems(statement, namespace, allowlist)
        return Check(["MONAI evaluates only expressions and single import statements; refused"])
    checker = _Checker(namespace, allowlist)
    result = checker.visit(tree, frozenset())
    return Check(list(dict.fromkeys(checker.problems)), result, checker.names, checker.writes)
