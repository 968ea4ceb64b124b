"""Checking one config expression the way MONAI will evaluate it: every name, attribute, reference and call resolved
to one Python object (or, where a check may not import it, its dotted name) and judged by the allow-list
(:mod:`monai_ext.sharing.allowlist`). Attributes starting with ``_`` are refused outright, as are assignment
expressions, lambda parameters and comprehension variables that rebind a name in use, and calls on objects whose type
is not known. Paths given to known writers must be provably inside the bundle.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from monai_ext.sharing.allowlist import (
    DENIED_NAMES,
    INSTANCE_ATTRIBUTES,
    SAFE_BUILTIN_TYPES,
    SAFE_BUILTINS,
    SELF_RETURNING_METHODS,
    UNSAFE_DATA_METHODS,
    WRITERS,
    Allowlist,
    canonical_name,
    is_definition,
    is_private,
    module_attribute,
    qualified_name,
    resolve_dotted,
    under,
)

__all__ = ["REFS", "UNKNOWN", "Check", "Namespace", "Value", "check_code", "rewrite_like_monai"]

OPENERS = ("builtins.open", "io.open", "pathlib.Path.open")

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
        if value.known and is_definition(value.obj):
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
            found = module_attribute(base.obj, node.attr, self.allowlist)
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
        already, named_before = len(self.problems), len(self.names)
        function = self.visit(node.func, local)
        arguments = [self.visit(arg, local) for arg in node.args]
        keywords = {kw.arg: self.visit(kw.value, local) for kw in node.keywords}
        if function.known and callable(function.obj) and not is_definition(function.obj):
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
            if reason and not refused and self.allowlist.reason(owner) is None and not is_private(name):
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
            if _reads_only(function.symbol, arguments, keywords):
                del self.names[named_before:]  # ``open(path, 'r')`` only reads: not what the sandbox stops
                return self.symbol(f"{canonical_name(function.symbol)} to read")
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
            and under(owner.obj.__name__, "torch.backends")
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


def _reads_only(callee: str, arguments: list[Value], keywords: dict[str | None, Value]) -> bool:
    """A call of ``open`` with a literal mode that only reads (the Model Zoo opens its datalists so)."""
    if canonical_name(callee) not in OPENERS:
        return False
    position = 0 if canonical_name(callee) == "pathlib.Path.open" else 1
    mode = keywords.get("mode", arguments[position] if len(arguments) > position else Value.of("r"))
    return mode.known and isinstance(mode.obj, str) and set(mode.obj) <= set("rbt")


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
