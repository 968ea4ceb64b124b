"""``python -m monai_ext run BUNDLE_DIR``: run another lab's bundle confined by the kernel.

The run happens in a child process that Landlock and a seccomp filter confine before it imports torch or monai
(:mod:`monai_ext.sharing.sandbox`): whatever an item does, it cannot write outside the allowed folders, start a
program, open a TCP connection or create any socket but a UNIX one. The kernel is the enforcement, because an
in-process check of ``eval``'d Python can always be routed around.

The workflows are those of ``python -m monai.bundle run`` (MONAI's ``ConfigWorkflow``: initialize, run, finalize),
with MONAI's parser replaced by one whose items check themselves at the moment MONAI evaluates them: every ``$``
expression as MONAI will ``eval`` it (``#`` rewritten, references substituted, the live objects behind ``@id`` and
the shared imports known), and every ``_target_`` as the object MONAI resolved, with its arguments, against the
allow-list of :mod:`monai_ext.sharing.allowlist`; ``logging.conf`` is checked before MONAI applies it. In the
confined run these checks are advisory: the log names each item the allow-list cannot vouch for, and it runs under
the kernel's rules. With ``--unconfined`` they are all there is, so anything not provably allowed is refused before
it runs, and writers may only write inside the bundle or a folder given on the command line.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigComponent, ConfigExpression, ConfigItem, ConfigParser, ConfigWorkflow

from monai_ext.bundle.overrides import UnknownOverrideError, check_overrides
from monai_ext.sharing.allowlist import Allowlist, component_problems, resolve_dotted
from monai_ext.sharing.audit import audit_logging_conf
from monai_ext.sharing.audit.configs import undefined_macros
from monai_ext.sharing.expressions import REFS, UNKNOWN, Namespace, Value, check_code

__all__ = ["UnsafeConfigError", "run", "run_bundle", "run_from_child"]


class UnsafeConfigError(RuntimeError):
    """A config item was refused before it ran; the message names the item and every reason."""


class _Guard:
    def __init__(self, bundle_root: Path, allowlist: Allowlist, trusted: Sequence[Path], advisory: bool) -> None:
        self.roots = [bundle_root.resolve(), *(p.resolve() for p in trusted)]
        self.allowlist = allowlist
        self.advisory = advisory
        self.noted: set[str] = set()

    def path_allowed(self, path: str) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def namespace(self, parser_globals: dict, evaluation_globals: dict | None) -> Namespace:
        refs = (evaluation_globals or {}).get(REFS, {})
        return Namespace(
            {name: Value.of(obj) for name, obj in parser_globals.items()},
            lambda ref_id: Value.of(refs[ref_id]) if ref_id in refs else UNKNOWN,
            self.path_allowed,
        )

    def refuse(self, item_id: str, what: str, problems: list[str]) -> None:
        if not problems:
            return
        message = f"{item_id or '<root>'}: {what!r:.200}: " + "; ".join(problems)
        if not self.advisory:
            raise UnsafeConfigError(f"refused {message}")
        if message not in self.noted:  # the kernel enforces; the allow-list only tells what it cannot vouch for
            self.noted.add(message)
            print(f"monai_ext run: runs confined, the allow-list cannot vouch for {message}", flush=True)

    def check_component(self, item_id: str, config: dict, module_name: Any) -> None:
        target, reason = (
            resolve_dotted(module_name, self.allowlist) if isinstance(module_name, str) else (module_name, None)
        )

        def writable(value: Any) -> bool:  # arguments are resolved here: a path must lie in an allowed folder
            return not isinstance(value, str | os.PathLike) or self.path_allowed(os.fspath(value))

        problems = component_problems(config, target, self.allowlist, writable)
        self.refuse(item_id, f"_target_ {module_name}", problems + ([reason] if reason else []))


class _CheckedExpression(ConfigExpression):
    def __init__(self, config: Any, id: str, globals: dict, guard: _Guard) -> None:
        super().__init__(config=config, id=id, globals=globals)
        self.guard = guard

    def evaluate(self, globals: dict | None = None, locals: dict | None = None) -> Any:
        value = self.get_config()
        if ConfigExpression.is_expression(value):
            code = value[len(self.prefix) :]
            check = check_code(code, self.guard.namespace(self.globals, globals), self.guard.allowlist)
            self.guard.refuse(self.id, value, check.problems)
        return super().evaluate(globals, locals)


class _CheckedComponent(ConfigComponent):
    def __init__(self, config: Any, id: str, locator: Any, guard: _Guard) -> None:
        super().__init__(config=config, id=id, locator=locator)
        self.guard = guard

    def instantiate(self, **kwargs: Any) -> object:
        if self.is_instantiable(self.get_config()) and not self.is_disabled():
            self.guard.check_component(self.id, self.get_config(), self.resolve_module_name())
        return super().instantiate(**kwargs)


class _CheckedParser(ConfigParser):
    """MONAI's parser whose expression and component items check themselves before they run."""

    def __init__(self, config: Any, guard: _Guard) -> None:
        self.guard = guard
        super().__init__(config=config)

    def _do_parse(self, config: Any, id: str = "") -> None:
        if isinstance(config, dict | list):
            for _, sub_id, value in self.ref_resolver.iter_subconfigs(id=id, config=config):
                self._do_parse(config=value, id=sub_id)
        if ConfigComponent.is_instantiable(config):
            self.ref_resolver.add_item(_CheckedComponent(config, id, self.locator, self.guard))
        elif ConfigExpression.is_expression(config):
            self.ref_resolver.add_item(_CheckedExpression(config, id, self.globals, self.guard))
        else:
            self.ref_resolver.add_item(ConfigItem(config=config, id=id))


class _BundleLastWorkflow(ConfigWorkflow):
    """MONAI's workflow, with the bundle root appended to ``sys.path`` instead of put before site-packages.

    MONAI inserts it at position 1, so a file ``itk.py`` in a received bundle would be imported in place of the
    installed ``itk`` by MONAI's own lazy imports. Appended, the bundle's ``scripts/`` still import and no installed
    module is shadowed.
    """

    def run(self) -> Any:
        root = self.config_root_path.parent if self.config_root_path.name == "configs" else self.config_root_path
        sys.path.append(str(root))
        if self.run_id not in self.parser:
            raise ValueError(f"run ID '{self.run_id}' doesn't exist in the config file.")
        return self._run_expr(id=self.run_id)


def _user_folders(overrides: dict[str, Any]) -> list[Path]:
    """Folders the person running the bundle named in overrides (``--output_dir /data/out``): they may be written."""
    return [Path(v) for v in overrides.values() if isinstance(v, str) and os.path.isabs(v)]


def run_bundle(
    bundle_dir: str | os.PathLike,
    config_file: str | Sequence[str] | None = None,
    meta_file: str | None = None,
    logging_file: str | bool | None = None,
    allow: Sequence[str] = (),
    advisory: bool = False,
    **override: Any,
) -> ConfigWorkflow:
    """Run a bundle's workflow like ``monai.bundle.run``, checking every item the moment before MONAI runs it.

    Args:
        bundle_dir: the bundle root (holding ``configs/``).
        config_file: config files, relative to the bundle root or absolute; default ``configs/train.json``.
        meta_file: default ``configs/metadata.json`` when it exists.
        logging_file: default ``configs/logging.conf`` when it exists (checked before it is applied); ``False``
            leaves logging alone.
        allow: qualified names or module prefixes to accept besides the allow-list.
        advisory: print what the allow-list cannot vouch for and run it anyway; for a run the kernel confines.
        override: ``id=value`` pairs, as ``--id value`` of ``monai.bundle run``.

    Returns:
        The workflow, after ``initialize``, ``run`` and ``finalize``.

    Raises:
        UnsafeConfigError: an item, override or logging.conf entry is not on the allow-list, or a macro pulls from
            outside the bundle's definition (always refused); nothing of it ran.
    """
    root = Path(bundle_dir).resolve()
    files = [config_file] if isinstance(config_file, str) else list(config_file or ["configs/train.json"])
    files = [str(Path(f) if os.path.isabs(f) else root / f) for f in files]
    meta = meta_file or (
        str(root / "configs" / "metadata.json") if (root / "configs" / "metadata.json").is_file() else None
    )
    if logging_file is None and (root / "configs" / "logging.conf").is_file():
        logging_file = str(root / "configs" / "logging.conf")
    guard = _Guard(root, Allowlist(frozenset(allow)), _user_folders(override), advisory)
    if isinstance(logging_file, str):
        flags = [
            f"{item.key}: {flag}"
            for item in audit_logging_conf(Path(logging_file), logging_file)
            for flag in item.flags
        ]
        guard.refuse(logging_file, "logging.conf", flags)
    # MONAI's own runner takes the workflow type from the command; say it here, or MONAI logs that none was given
    workflow_type = "train" if any("train" in Path(f).stem.lower() for f in files) else "infer"
    workflow = _BundleLastWorkflow(
        config_file=files, meta_file=meta, logging_file=logging_file or False, workflow_type=workflow_type, **override
    )
    undefined = undefined_macros(workflow.parser.get(), root)
    if undefined:  # the kernel cannot help here: the harm is in a later run, not this one
        raise UnsafeConfigError("refused: macros must pull from the bundle's definition: " + "; ".join(undefined))
    workflow.parser = _CheckedParser(workflow.parser.get(), guard)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def _weights_only_torch_load() -> None:
    """Make every ``torch.load`` of this process weights-only, whatever its caller asks for.

    A bundle's configs name ``torch.load`` directly (the Model Zoo's do) and may pass ``weights_only=False``; a
    checkpoint that needs that runs pickled code when loaded. In a confined run no load may unpickle code.
    """
    import torch

    original = torch.load

    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load


def run_from_child(spec: dict[str, Any]) -> int:
    """The confined child's side of :func:`run`: run the workflow, noting what the allow-list cannot vouch for (the
    kernel enforces), and return the exit code."""
    _weights_only_torch_load()
    try:
        run_bundle(
            spec["bundle_root"], spec["config_file"], spec["meta_file"], spec["logging_file"], spec["allow"],
            advisory=True, **spec["overrides"],
        )  # fmt: skip
    except UnsafeConfigError as err:
        print(f"monai_ext run: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


def _absolute_paths(override: dict[str, Any]) -> dict[str, Any]:
    """Overrides with relative paths that exist made absolute: the confined run works in its own folder."""
    return {k: os.path.abspath(v) if isinstance(v, str) and v and os.path.exists(v) else v for k, v in override.items()}


def run(
    bundle_dir: str,
    config_file: str | Sequence[str] | None = None,
    meta_file: str | None = None,
    logging_file: str | None = None,
    allow: str | Sequence[str] = (),
    unconfined: bool = False,
    **override: Any,
) -> str:
    """Run a bundle from another lab, confined by the kernel (Landlock and seccomp).

    The workflow (as `python -m monai.bundle run` runs it, from the bundle folder) starts in a child process that the
    kernel confines first: it reads only the Python environment, system libraries, the bundle and folders you name;
    writes only the bundle's output folders (models/, eval/, outputs/, dataset/, logs/ and those its configs write
    to, never configs/, docs/ or scripts/), the output_dir/ckpt_dir/log_dir you give, and a private temporary folder
    (its HOME); it cannot start programs, open TCP connections or send UDP. The log says what is in force, and
    names every config item that monai_ext's allow-list cannot vouch for (see `monai_ext audit`). Where the kernel
    cannot confine (not Linux, Linux before 5.13, Landlock disabled), run refuses and says why, unless --unconfined
    is given; then the allow-list refuses anything it cannot vouch for.

    Examples:

        python -m monai_ext run received/medt_segmentation_3d --config_file configs/train.json --dataset_dir /data/msd
        python -m monai_ext run spleen_ct_segmentation --config_file configs/inference.json --dataset_dir /data/Task09

    Args:
        bundle_dir: the bundle root, holding configs/.
        config_file: config file(s) relative to the bundle root (a list or comma-separated); default configs/train.json.
        meta_file: default configs/metadata.json.
        logging_file: default configs/logging.conf, checked before it is applied.
        allow: qualified names or module prefixes to accept besides the allow-list (comma-separated or a list).
        unconfined: run in this process without the kernel's confinement; the allow-list then refuses what it cannot
            vouch for.
        override: --id value pairs, as for `python -m monai.bundle run`.
    """
    from monai_ext.sharing.sandbox.landlock import LandlockUnavailableError
    from monai_ext.sharing.sandbox.supervisor import ConfinementError, run_confined

    if isinstance(config_file, str) and "," in config_file:
        config_file = [f for f in config_file.split(",") if f]
    if isinstance(allow, str):
        allow = [a for a in allow.split(",") if a]
    if isinstance(config_file, str):
        config_file = [config_file]
    override = _absolute_paths(override)
    files = [f if os.path.isabs(f) else os.path.join(bundle_dir, f) for f in config_file or ["configs/train.json"]]
    try:  # read as data, never evaluated
        check_overrides(files, override)
    except UnknownOverrideError as err:
        print(f"monai_ext run: {err}")
        raise SystemExit(1) from None
    except (ValueError, OSError, RecursionError):
        pass  # an unreadable config: the run below names it in its own one-line refusal
    if unconfined:
        print("monai_ext run: NOT confined by the kernel (--unconfined): only the allow-list checks protect this run")
        try:
            run_bundle(bundle_dir, config_file, meta_file, logging_file, allow, **override)
        except UnsafeConfigError as err:
            print(f"monai_ext run: {err}")
            raise SystemExit(1) from None
        return f"monai_ext run: {bundle_dir} finished unconfined; every item was checked before it ran"
    try:
        code = run_confined(bundle_dir, config_file, meta_file, logging_file, allow, override)
    except (LandlockUnavailableError, ConfinementError) as err:
        print(f"monai_ext run: refusing to run {bundle_dir} unconfined: {err}. Pass --unconfined to run it anyway.")
        raise SystemExit(1) from None
    except ValueError as err:  # a config that cannot be read, an output folder that is a file: the bundle's fault
        print(f"monai_ext run: cannot run {bundle_dir}: {err}")
        raise SystemExit(1) from None
    if code != 0:
        print(f"monai_ext run: {bundle_dir} failed (exit {code}) in the confined run")
        raise SystemExit(code)
    return f"monai_ext run: {bundle_dir} finished, confined by the kernel"
