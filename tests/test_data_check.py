import gzip
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from monai_ext.bundle.data_check import DataCheckError, check_data, check_dataset_dir, checked_datalist, find_problems

SHAPE = (16, 16, 16)


def _save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def _msd(root, cases, labels=("background", "organ", "tumour")):
    """Write an MSD-layout dataset.json for ``cases`` (names of files already in imagesTr/ and labelsTr/)."""
    training = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]
    description = {"labels": {str(i): name for i, name in enumerate(labels)}, "modality": {"0": "CT"}}
    (root / "dataset.json").write_text(json.dumps({**description, "training": training}))
    return root


def _good_case(root, name, rng):
    _save(root / "imagesTr" / f"{name}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
    _save(root / "labelsTr" / f"{name}.nii.gz", rng.integers(0, 3, size=SHAPE).astype(np.uint8))


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("good0", "good1"):
        _good_case(tmp_path, name, rng)
    return tmp_path, rng


def test_good_dataset_passes_and_paths_resolve_against_dataset_dir(dataset, monkeypatch, tmp_path_factory):
    root, _ = dataset
    _msd(root, ["good0", "good1"])
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    good = check_dataset_dir(root)
    assert [entry["image"] for entry in good] == [str(root / "imagesTr" / f"good{i}.nii.gz") for i in range(2)]


def test_every_problem_is_reported_together_naming_its_file(dataset):
    root, rng = dataset
    # truncated gzip: the header still reads, the voxel data does not
    _good_case(root, "truncated", rng)
    raw = (root / "imagesTr" / "truncated.nii.gz").read_bytes()
    (root / "imagesTr" / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    # bad header: a gzip file that is not NIfTI at all
    _good_case(root, "badheader", rng)
    with gzip.open(root / "labelsTr" / "badheader.nii.gz", "wb") as f:
        f.write(b"this is not a nifti header" * 20)
    _good_case(root, "missing", rng)
    (root / "labelsTr" / "missing.nii.gz").unlink()
    _good_case(root, "nan", rng)
    nan_image = rng.normal(size=SHAPE).astype(np.float32)
    nan_image[3, 4, 5] = np.nan
    nan_image[0, 0, 0] = np.inf
    _save(root / "imagesTr" / "nan.nii.gz", nan_image)
    _good_case(root, "shape", rng)
    _save(root / "labelsTr" / "shape.nii.gz", np.zeros((16, 16, 12), np.uint8))
    _good_case(root, "affine", rng)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    _save(root / "labelsTr" / "affine.nii.gz", np.zeros(SHAPE, np.uint8), shifted)
    _good_case(root, "classes", rng)
    _save(root / "labelsTr" / "classes.nii.gz", np.full(SHAPE, 7, np.uint8))
    _good_case(root, "dims", rng)
    _save(root / "imagesTr" / "dims.nii.gz", np.zeros((16, 16), np.float32))
    bad = ["truncated", "badheader", "missing", "nan", "shape", "affine", "classes", "dims"]
    _msd(root, ["good0", *bad, "good1"])

    with pytest.raises(DataCheckError) as caught:
        check_dataset_dir(root)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{len(bad)} of {len(bad) + 2} cases have problems:"
    by_file = {line.strip().split(": ")[0]: line for line in lines[1:]}
    expected = {
        root / "imagesTr" / "truncated.nii.gz": "image is not a readable NIfTI file",
        root / "labelsTr" / "badheader.nii.gz": "label is not a readable NIfTI file",
        root / "labelsTr" / "missing.nii.gz": "label file is missing",
        root / "imagesTr" / "nan.nii.gz": "image has 1 NaN and 1 Inf voxels",
        root / "labelsTr" / "shape.nii.gz": "label shape (16, 16, 12) differs from image shape (16, 16, 16)",
        root / "labelsTr" / "affine.nii.gz": "label affine differs from the affine of",
        root / "labelsTr" / "classes.nii.gz": "label values [7] are outside the declared classes 0..2",
        root / "imagesTr" / "dims.nii.gz": "image has shape (16, 16), expected a 3D volume",
    }
    assert set(by_file) == {str(path) for path in expected}
    for path, message in expected.items():
        assert message in by_file[str(path)]


def test_truncated_uncompressed_nifti_is_one_line_naming_the_file(tmp_path):
    path = _save(tmp_path / "cut.nii", np.zeros(SHAPE, np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataCheckError) as caught:
        checked_datalist([{"image": str(path)}])
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(f"  {path}: image is not a readable NIfTI file (truncated or corrupt?): ")


def test_skip_bad_warns_listing_bad_cases_and_returns_good_ones(dataset, caplog):
    root, rng = dataset
    _good_case(root, "nan", rng)
    _save(root / "imagesTr" / "nan.nii.gz", np.full(SHAPE, np.nan, np.float32))
    datalist = [
        {"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz", "extra": name}
        for name in ("good0", "nan", "good1")
    ]
    before = json.dumps(datalist)
    with caplog.at_level("WARNING"):
        good = checked_datalist(datalist, num_classes=3, skip_bad=True, base_dir=root)
    assert [entry["extra"] for entry in good] == ["good0", "good1"]
    assert json.dumps(datalist) == before, "the caller's datalist must not change"
    assert "training on 2 of 3" in caplog.text
    assert str(root / "imagesTr" / "nan.nii.gz") in caplog.text


def test_empty_datalist_and_all_bad_are_errors(dataset):
    root, _ = dataset
    with pytest.raises(DataCheckError, match="the datalist is empty"):
        checked_datalist([])
    with pytest.raises(DataCheckError, match="image file is missing"):
        checked_datalist([{"image": str(root / "nope.nii.gz")}], skip_bad=True)


def test_num_classes_override_and_channels_last_images(dataset):
    root, rng = dataset
    _save(root / "imagesTr" / "two.nii.gz", rng.normal(size=(*SHAPE, 2)).astype(np.float32))
    _save(root / "labelsTr" / "two.nii.gz", np.full(SHAPE, 2, np.uint8))
    entry = [{"image": "imagesTr/two.nii.gz", "label": "labelsTr/two.nii.gz"}]
    assert len(checked_datalist(entry, num_classes=3, num_channels=2, base_dir=root)) == 1
    with pytest.raises(DataCheckError, match=r"outside the declared classes 0\.\.1"):
        checked_datalist(entry, num_classes=2, num_channels=2, base_dir=root)
    with pytest.raises(DataCheckError, match=r"expected a 3D volume"):
        checked_datalist(entry, base_dir=root)


@pytest.mark.slow
def test_cli_prints_report_and_exits_non_zero(dataset, capsys):
    root, rng = dataset
    _good_case(root, "classes", rng)
    _save(root / "labelsTr" / "classes.nii.gz", np.full(SHAPE, 5, np.uint8))
    _msd(root, ["good0", "classes"])
    command = [sys.executable, "-m", "monai_ext", "check_data", "--dataset_dir", str(root)]
    failed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert f"{root / 'labelsTr' / 'classes.nii.gz'}: label values [5]" in failed.stdout
    assert check_data(str(root), num_classes=6) == f"check_data: {root}: 2 cases OK"
    with pytest.raises(SystemExit) as exited:
        check_data(str(root), skip_bad=False)
    assert exited.value.code == 1 and "label values [5]" in capsys.readouterr().out


def _forged(path, shape, compress):
    """A valid 2^3 float32 NIfTI whose header is then rewritten, byte by byte, to claim ``shape``."""
    small = path.with_name("small.nii")
    _save(small, np.zeros((2, 2, 2), np.float32))
    raw = bytearray(small.read_bytes())
    small.unlink()
    raw[40:48] = np.array([3, *shape], dtype="<i2").tobytes()  # dim[0..3] of the NIfTI-1 header
    path.write_bytes(gzip.compress(bytes(raw)) if compress else bytes(raw))
    return path


@pytest.mark.parametrize(
    ("shape", "compress", "reason"),
    [
        ((10000, 10000, 10000), True, "above the limit"),  # 10^12 voxels: an uncaught MemoryError before
        ((1024, 1024, 1024), True, "more than a"),  # a tiny .gz claiming 4 GiB of float32 took 4.4 GiB before
        ((64, 64, 64), False, "from byte 352, and the file has 384"),  # uncompressed, shorter than its header
    ],
)
def test_forged_headers_are_refused_before_the_data_is_read(shape, compress, reason, tmp_path):
    image = _forged(tmp_path / ("big.nii.gz" if compress else "big.nii"), shape, compress)
    with pytest.raises(DataCheckError) as raised:
        checked_datalist([{"image": str(image)}])
    message = str(raised.value)
    assert message.count("\n") == 1 and f"{image}: image" in message and "header claims" in message
    assert reason in message


def test_max_voxels_is_the_callers_to_raise(tmp_path):
    image = _save(tmp_path / "ok.nii.gz", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(DataCheckError, match="above the limit of 100 voxels; raise max_voxels"):
        checked_datalist([{"image": str(image)}], max_voxels=100)
    assert checked_datalist([{"image": str(image)}], max_voxels=512) == [{"image": str(image)}]


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (
            {"labels": {"0": "bg", "1": "a"}, "training": [{"image": "./a.nii.gz", "label": 3}]},
            "'training'[0]['label']",
        ),
        ({"labels": {}, "training": [{"image": "./a.nii.gz", "label": "./b.nii.gz"}]}, "'labels'"),
        ({"labels": {"0": "bg"}, "training": ["./a.nii.gz"]}, "'training'[0] must be an object"),
        ({"training": [{"image": "a", "label": "b"}], "validation": {"image": "c"}}, "'validation' must be a list"),
    ],
)
def test_malformed_dataset_json_names_the_key(content, named, tmp_path):
    from monai_ext.bundle import datalist

    (tmp_path / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(DataCheckError) as raised:
        check_dataset_dir(tmp_path)
    assert named in str(raised.value) and str(tmp_path / "dataset.json") in str(raised.value)
    with pytest.raises(ValueError, match="dataset_dir: .*" + named.replace("[", r"\[").replace("]", r"\]")):
        datalist.training_datalist(tmp_path)  # what the bundles call


def test_deeply_nested_dataset_json_is_one_clear_error(tmp_path):
    (tmp_path / "dataset.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DataCheckError, match="nested too deeply"):
        check_dataset_dir(tmp_path)


def test_the_byte_limit_counts_the_stored_type_and_the_scaling_nibabel_applies(tmp_path):
    # a small .gz whose header claims 1290^3 complex128 values: 2.1e9 voxels pass the voxel limit, 32 GiB do not
    forged = _forged(tmp_path / "complex.nii.gz", (1290, 1290, 1290), compress=True)
    raw = bytearray(gzip.decompress(forged.read_bytes()))
    raw[70:74] = np.array([1792, 128], dtype="<i2").tobytes()  # datatype complex128, bitpix 128
    forged.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataCheckError, match=r"of complex128, 32 GiB once loaded, above the limit of 8 GiB"):
        checked_datalist([{"image": str(forged)}])

    # int8 voxels with scl_slope load as float64: 8 bytes each, not 1
    image = nib.Nifti1Image(np.ones((64, 64, 64), np.int8), np.eye(4))
    image.header.set_slope_inter(2.0, 0.0)
    nib.save(image, tmp_path / "scaled.nii.gz")
    assert np.asanyarray(nib.load(tmp_path / "scaled.nii.gz").dataobj).dtype == np.float64
    with pytest.raises(DataCheckError, match=r"of int8, 0.00195 GiB once loaded, above the limit of 0.000977 GiB"):
        checked_datalist([{"image": str(tmp_path / "scaled.nii.gz")}], max_bytes=2**20)
    plain = _save(tmp_path / "plain.nii.gz", np.ones((64, 64, 64), np.int8))
    assert checked_datalist([{"image": str(plain)}], max_bytes=2**20) == [{"image": str(plain)}]


@pytest.mark.parametrize("shape", [(0, 4, 4), (4, -5, 4)])
def test_zero_or_negative_dimensions_are_a_finding_not_a_traceback(shape, tmp_path):
    image = _forged(tmp_path / "dims.nii", shape, compress=False)
    problems = find_problems({"image": str(image)})
    assert len(problems) == 1 and problems[0].startswith(f"{image}: image")
    assert problems[0] == f"{image}: image header claims shape {shape}; every dimension must be positive"
