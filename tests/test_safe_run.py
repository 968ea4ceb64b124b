"""Doctored bundles, one per construct a hostile lab used: the audit flags each one and the safe runner refuses it.

Every payload would only write a marker file; that the marker never appears proves nothing ran. Our own bundles
audit clean with no allowances and run under the safe runner end to end (below and in tests/test_bundle_*.py).
"""

import json
import os
import pickle

import pytest
import torch
from bundle_cli import copy_bundle, run_cli

from monai_ext.sharing.audit import audit_bundle
from monai_ext.sharing.safe_run import UnsafeConfigError, run_bundle

BASE = {
    "imports": ["$import os", "$import torch", "$import numpy", "$import monai", "$import monai_ext"],
    "bundle_root": "$monai_ext.bundle.paths.bundle_root()",
    "ckpt_dir": "$os.path.join(@bundle_root, 'models')",
    "initialize": ["$monai.utils.set_determinism(seed=0)"],
    "run": ["$os.makedirs(@ckpt_dir, exist_ok=True)"],
}


class _Touches:
    """Unpickles into os.system('touch MARKER')."""

    def __init__(self, marker):
        self.command = f"touch {marker}"

    def __reduce__(self):
        return os.system, (self.command,)


def _constructs(marker, root):
    """name -> (changes to train.json, extra files {relative path: text}, run arguments)."""
    touch = f"'touch {marker}'"
    run = lambda step: {"run": [step]}  # noqa: E731
    return {
        "torch_reaches_os": (run(f"$torch.os.system({touch})"), {}, {}),
        "os_path_reaches_os": (run(f"$os.path.os.system({touch})"), {}, {}),
        "monai_run_cmd": (run(f"$monai.utils.run_cmd(['touch', '{marker}'])"), {}, {}),
        "optional_import": (run(f"$monai.utils.optional_import('subprocess')[0].run(['touch', '{marker}'])"), {}, {}),
        "import_module": (run(f"$monai.utils.module.import_module('os').system({touch})"), {}, {}),
        "instantiate": (
            run(f"$monai.utils.instantiate('monai.utils.run_cmd', 'default', cmd_list=['touch', '{marker}'])"),
            {},
            {},
        ),
        "pickle_loads": (
            run(f"$torch.serialization.pickle.loads(bytes.fromhex('{pickle.dumps(_Touches(marker)).hex()}'))"),
            {},
            {},
        ),
        "serialization_load": (run(f"$torch.serialization.load('{root}/p.pt', weights_only=False)"), {}, {}),
        "numpy_pickle": (run(f"$numpy.load('{root}/p.pt', allow_pickle=True)"), {}, {}),
        "package_importer": (run(f"$torch.package.PackageImporter('{root}/p.pt')"), {}, {}),
        "load_library": (run(f"$torch.ops.load_library('{root}/evil.so')"), {}, {}),
        "nested_config_parser": (
            run(f"$monai.bundle.ConfigParser({{'x': \"$__import__('os').system({touch})\"}}).get_parsed_content('x')"),
            {},
            {},
        ),
        "short_target_builtin": (run({"_target_": "exec", "_mode_": "callable"}), {}, {}),
        "short_target_monai_locator": (run({"_target_": "run_cmd", "cmd_list": ["touch", str(marker)]}), {}, {}),
        "hash_rewritten_by_monai": (run(f"$[0][1#] + [__import__('os').system({touch})][0:1\n]"), {}, {}),
        "lambda_binds_exec": (run("$(lambda exec: exec)(print)('x')"), {}, {}),
        "comprehension_rebinds": (run(f'$[exec("import os; os.system({touch})") for exec in [exec]]'), {}, {}),
        "import_alias": (
            {"alias": "$from monai import utils as os", **run(f"$os.run_cmd(['touch', '{marker}'])")},
            {},
            {},
        ),
        "call_on_reference": (
            {"sneaky": "$monai.utils", **run(f"$@sneaky.run_cmd(['touch', '{marker}'])")},
            {},
            {},
        ),
        "flat_target_override": (
            {
                "step": {"_target_": "torch.nn.Identity", "cmd_list": ["touch", str(marker)]},
                "step#_target_": "monai.utils.run_cmd",
                **run("@step"),
            },
            {},
            {},
        ),
        "macro_from_docs": (run("%docs/x.json#payload"), {"docs/x.json": {"payload": f"$os.system({touch})"}}, {}),
        "uppercase_json": (
            {},
            {"configs/extra.JSON": {"run": [f"$os.system({touch})"]}},
            {"config_file": ["configs/train.json", "configs/extra.JSON"]},
        ),
        "scripts_import": (run("$import scripts.evil"), {"scripts/evil.py": f"import os\nos.system({touch})\n"}, {}),
        "scripts_optional_import": (
            run("$monai.utils.optional_import('scripts.evil')"),
            {"scripts/evil.py": f"import os\nos.system({touch})\n"},
            {},
        ),
        "run_from_other_config": (
            {"run": "%configs/other.json#run"},
            {"configs/other.json": {"run": [f"$os.system({touch})"]}},
            {},
        ),
        "open_mode_sliced": (run(f"$open('{marker}', 'wx'[:1])"), {}, {}),
        "map_open": (run(f"$list(map(open, ['{marker}'], ['w']))"), {}, {}),
        "path_built_with_os_sep": (run(f"$os.makedirs(os.sep.join({str(marker).split(os.sep)!r}))"), {}, {}),
        "torch_save_keyword_path": (run(f"$torch.save({{}}, f='{marker}')"), {}, {}),
        "verify_switched_off": (
            {
                "loader": {
                    "_target_": "monai_ext.sharing.checkpoint.CheckedCheckpointLoader",
                    "load_path": f"{root}/p.pt",
                    "load_dict": {},
                    "verify": False,
                },
                **run("@loader"),
            },  # fmt: skip
            {},
            {},
        ),
        "add_safe_globals": (run("$torch.serialization.add_safe_globals([monai.utils.run_cmd])"), {}, {}),
        "image_writer_method": (run(f"$monai.data.NibabelWriter().write('{marker}')"), {}, {}),
        "atomic_write_outside": (run(f"$monai_ext.sharing.checkpoint.atomic_write('{marker}', print)"), {}, {}),
        "save_state_outside": (run(f"$monai.networks.utils.save_state({{}}, '{marker}')"), {}, {}),
        "dunder_escape": (run("$().__class__.__base__.__subclasses__()"), {}, {}),
        "debug_mode": (run({"_target_": "torch.nn.Identity", "_mode_": "debug"}), {}, {}),
        "logging_interpolation": (
            {},
            {
                "configs/logging.conf": (
                    "[loggers]\nkeys=root\n[handlers]\nkeys=h\n[formatters]\nkeys=\n[logger_root]\nlevel=INFO\n"
                    f'handlers=h\n[handler_h]\nclass=StreamHandler\np=\')[:1] if __import__("os").system({touch}) '
                    "or 1 else ('\nargs=(sys.stdout, '%(p)s')\n"
                )
            },  # fmt: skip
            {"logging_file": None},
        ),
    }


CONSTRUCTS = list(_constructs("M", "R"))


def _doctored(tmp_path, name):
    marker, root = tmp_path / "RAN", tmp_path / "bundle"
    changes, files, arguments = _constructs(marker, root)[name]
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "train.json").write_text(json.dumps({**BASE, **changes}, indent=1))
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content if isinstance(content, str) else json.dumps(content))
    torch.save({"payload": _Touches(marker)}, root / "p.pt")
    return root, marker, arguments


@pytest.mark.parametrize("name", CONSTRUCTS)
def test_the_audit_flags_and_the_safe_runner_refuses_each_construct(name, tmp_path, monkeypatch):
    bundle, marker, arguments = _doctored(tmp_path, name)
    flagged = [item for item in audit_bundle(bundle) if item.flags]
    assert flagged, f"{name}: the audit flagged nothing"
    monkeypatch.chdir(bundle)  # MONAI reads % macros relative to the working directory
    arguments = {"logging_file": False, **arguments}
    with pytest.raises(UnsafeConfigError):
        run_bundle(bundle, **arguments)
    assert not marker.exists(), f"{name}: the payload ran"


# constructs whose every item the audit lists as contained: writes and loads the sandbox bounds, and what the
# allow-list cannot vouch for but no runner lets do harm (rebinding a name, walking dunders, pickles that
# weights-only loading refuses)
CONTAINED_CONSTRUCTS = {
    "serialization_load", "numpy_pickle", "lambda_binds_exec", "path_built_with_os_sep", "torch_save_keyword_path",
    "verify_switched_off", "image_writer_method", "atomic_write_outside", "save_state_outside", "dunder_escape",
}  # fmt: skip


def test_every_construct_that_runs_code_or_starts_programs_needs_review(tmp_path):
    """A reviewer reading "0 need review" must be able to trust it: every construct that reaches code, programs,
    files by path or a debugger counts in the summary and fails --strict."""
    review = set()
    for name in CONSTRUCTS:
        bundle, _, _ = _doctored(tmp_path / name, name)
        if any(item.needs_review and (item.fails_strict or item.group == "code") for item in audit_bundle(bundle)):
            review.add(name)
    assert set(CONSTRUCTS) - review == CONTAINED_CONSTRUCTS


def test_a_macro_into_an_output_folder_is_refused_even_where_the_kernel_confines(tmp_path, monkeypatch):
    """A confined run could write models/extra.json; MONAI's own runner would later read it as config."""
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "train.json").write_text(json.dumps({**BASE, "later": "%models/extra.json#payload"}))
    [item] = [item for item in audit_bundle(root) if item.key == "later"]
    assert (item.group, item.fails_strict) == ("uncontained", True)
    assert "outside the bundle's definition (configs/, docs/, scripts/), where a run may write" in item.flags[0]
    monkeypatch.chdir(root)
    with pytest.raises(UnsafeConfigError, match=r"macros must pull from the bundle's definition: later: "):
        run_bundle(root, logging_file=False, advisory=True)
    assert not (root / "models").exists(), "refused before anything ran"
    (root / "configs" / "train.json").write_text(json.dumps({**BASE, "later": "%configs/extra.json#payload"}))
    (root / "configs" / "extra.json").write_text(json.dumps({"payload": 1}))
    assert [item.group for item in audit_bundle(root) if item.key == "later"] == [""]
    run_bundle(root, logging_file=False, advisory=True)


def test_monai_checkpoint_loader_is_listed_and_loads_weights_only(tmp_path, monkeypatch):
    # MONAI's CheckpointLoader calls torch.load(weights_only=True): a pickled payload cannot run, so it is allowed,
    # and the audit lists the load (it is not checked against a SHA-256)
    bundle, marker, _ = _doctored(tmp_path, "torch_reaches_os")
    loader = {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/p.pt'", "load_dict": {"net": "@net"}}
    engine = {"_target_": "ignite.engine.Engine", "process_function": "$print"}
    net = {"_target_": "torch.nn.Linear", "in_features": 1, "out_features": 1}
    config = {**BASE, "net": net, "engine": engine, "loader": loader, "run": ["$@loader(@engine)"]}
    (bundle / "configs" / "train.json").write_text(json.dumps(config))
    [listed] = [item for item in audit_bundle(bundle) if item.key == "loader::_target_"]
    assert (listed.group, listed.flags, listed.detail) == (
        "checkpoints",
        (),
        "a path inside the bundle, known only at run time",
    )
    monkeypatch.chdir(bundle)
    with pytest.raises(RuntimeError, match="Failed to evaluate") as raised:
        run_bundle(bundle, logging_file=False)
    assert "Weights only load failed" in str(raised.value.__cause__)
    assert not marker.exists()


def test_the_base_bundle_is_clean_and_runs(tmp_path):
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "train.json").write_text(json.dumps(BASE))
    assert [item for item in audit_bundle(root) if item.flags] == []
    run_bundle(root, logging_file=False)
    assert (root / "models").is_dir()


def test_allow_extends_the_list_and_overrides_are_checked_too(tmp_path):
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    step = "$torch.get_num_threads()"
    (root / "configs" / "train.json").write_text(json.dumps({**BASE, "run": [step]}))
    assert [i.flags for i in audit_bundle(root) if i.flags] == [(
        "torch.get_num_threads: torch.get_num_threads is not on the allow-list",
    )]  # fmt: skip
    assert [i for i in audit_bundle(root, allow=["torch.get_num_threads"]) if i.flags] == []
    run_bundle(root, logging_file=False, allow=["torch.get_num_threads"])
    with pytest.raises(UnsafeConfigError, match="os.system"):
        run_bundle(root, logging_file=False, allow=["torch.get_num_threads"], **{"run#0": "$os.system('true')"})


@pytest.mark.slow
def test_our_bundles_run_under_the_safe_runner_from_the_command_line(tmp_path):
    bundle = copy_bundle("medt_segmentation_3d", tmp_path)
    tiny = ["--roi_size", "[16,16,16]", "--pixdim", "[4.0,4.0,4.0]"]
    done = run_cli([bundle, *tiny, "--train#trainer#max_epochs", "1", "--val_interval", "1", "--num_samples", "1",
                    "--iterations_per_epoch", "2"],
                   tmp_path, module=("-m", "monai_ext", "run"))  # fmt: skip
    assert "finished, confined by the kernel" in done.stdout
    assert "cannot vouch for" not in done.stdout, "our bundles need nothing beyond the allow-list"
    run_cli([bundle, "--config_file", "configs/inference.json", *tiny], tmp_path, module=("-m", "monai_ext", "run"))
    assert list((bundle / "outputs").glob("*_seg.nii.gz"))
    # in a confined run the allow-list only reports; the kernel stops the program from starting
    stopped = run_cli([bundle, *tiny, "--run#0", "$monai.utils.run_cmd(['true'])"], tmp_path,
                      module=("-m", "monai_ext", "run"), check=False)  # fmt: skip
    assert stopped.returncode != 0
    assert "the allow-list cannot vouch for run::0" in stopped.stdout
    assert "monai.utils.misc.run_cmd is not on the allow-list" in stopped.stdout
    assert "PermissionError" in stopped.stdout + stopped.stderr

    autoencoder = copy_bundle("autoencoderkl_3d", tmp_path)
    small = [*tiny, "--network_def#channels", "[8,8]"]
    one_epoch = ["--train#trainer#max_epochs", "1", "--val_interval", "1", "--adversarial_weight", "0.1"]
    run_cli([autoencoder, *small, *one_epoch], tmp_path, module=("-m", "monai_ext", "run"))
    run_cli(
        [autoencoder, "--config_file", "configs/inference.json", *small], tmp_path, module=("-m", "monai_ext", "run")
    )
    assert list((autoencoder / "outputs").glob("*_recon.nii.gz"))


@pytest.mark.parametrize("kind", ["invalid JSON", "nested 5,000 deep", "an output folder that is a file"])
def test_a_malformed_bundle_stops_the_confined_run_in_one_line(kind, tmp_path, capsys):
    from monai_ext.sharing.safe_run import run

    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    train = bundle / "configs" / "train.json"
    if kind == "invalid JSON":
        train.write_text('{"run": ')
    elif kind == "nested 5,000 deep":
        train.write_text('{"run": ["$None"], "n": ' + "[" * 5000 + "]" * 5000 + "}")
    else:
        train.write_text('{"run": ["$None"]}')
        (bundle / "models").write_text("not a folder")
    with pytest.raises(SystemExit) as stopped:
        run(str(bundle))
    out = capsys.readouterr().out.strip()
    assert stopped.value.code == 1 and len(out.splitlines()) == 1, out
    expected = f"{bundle / 'models'}: an output folder of the bundle is a file" if kind.startswith("an output") else (
        f"{train}: not a valid config file"
    )  # fmt: skip
    assert out.startswith(f"monai_ext run: cannot run {bundle}: {expected}"), out


def test_monai_ext_run_stops_on_an_override_that_names_no_id(tmp_path, capsys):
    from monai_ext.sharing.safe_run import run

    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "train.json").write_text(json.dumps({**BASE, "dataset_dir": "."}))
    with pytest.raises(SystemExit) as exited:
        run(str(root), dataset_dri="/data/x")
    assert exited.value.code == 1
    assert capsys.readouterr().out.strip() == (
        f"monai_ext run: --dataset_dri (did you mean --dataset_dir?): no such id in {root}/configs/train.json; the "
        "run would ignore it, so it stops here"
    )
    assert not (root / "models").exists(), "nothing ran"
