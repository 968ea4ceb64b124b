"""Dataset fingerprints (target spacing, ROI, batch size, normalisation) on Decathlon stand-ins and the default data."""

import json

import nibabel as nib
import numpy as np
import pytest
from bundle_cli import REPO_ROOT, run_cli, train_config

from monai_ext.bundle import standins, synthetic
from monai_ext.bundle.planning import fingerprint

BUNDLE = REPO_ROOT / "bundles" / "medt_segmentation_3d"
SHIPPED = BUNDLE / "configs" / "fingerprint.json"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {task: standins.write_standin(task, root / task) for task in standins.STANDINS}


def _training_headers(dataset_dir):
    # the training split the bundle uses: every case but the held-out ones
    from monai_ext.bundle.datalist import training_datalist

    return [nib.load(case["image"]) for case in training_datalist(dataset_dir)]


def test_the_shipped_fingerprint_describes_the_default_synthetic_data(tmp_path):
    data = synthetic.ensure_synthetic_msd(tmp_path / "dataset")
    assert fingerprint.compute_fingerprint(data) == json.loads(SHIPPED.read_text())
    assert fingerprint.saved_fingerprint(SHIPPED, data) is not None


@pytest.mark.parametrize("task", list(standins.STANDINS))
def test_channels_classes_and_a_roi_that_covers_the_median_shape(datasets, task):
    result = fingerprint.compute_fingerprint(datasets[task])
    spec = standins.STANDINS[task]
    assert result["in_channels"] == len(spec.modalities) and result["channel_names"] == list(spec.modalities)
    assert result["num_classes"] == len(spec.labels) and result["class_names"] == list(spec.labels)
    assert all(r % 8 == 0 and r >= m for r, m in zip(result["roi_size"], result["median_shape"], strict=True))
    assert all(r - m < 8 for r, m in zip(result["roi_size"], result["median_shape"], strict=True))
    assert result["batch_size"] >= 2


def test_hippocampus_volumes_are_smaller_than_the_roi(datasets):
    result = fingerprint.compute_fingerprint(datasets["Hippocampus"])
    shapes = [image.shape for image in _training_headers(datasets["Hippocampus"])]
    assert all(any(s < r for s, r in zip(shape, result["roi_size"], strict=True)) for shape in shapes)
    assert result["spacing"] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("task", ["Prostate", "Spleen"])
def test_thick_slices_take_the_10th_percentile_of_their_spacing(datasets, task):
    headers = _training_headers(datasets[task])
    spacings = np.array([image.header.get_zooms()[:3] for image in headers])  # stand-ins keep z as the third axis
    result = fingerprint.compute_fingerprint(datasets[task])
    np.testing.assert_allclose(result["spacing"][:2], np.median(spacings[:, :2], 0), atol=1e-4)
    np.testing.assert_allclose(result["spacing"][2], np.percentile(spacings[:, 2], 10), atol=1e-4)
    assert "10th percentile" in result["reasons"]["spacing"]


def test_isotropic_data_takes_the_median_spacing(datasets):
    headers = _training_headers(datasets["Liver"])
    spacings = np.array([image.header.get_zooms()[:3] for image in headers])
    result = fingerprint.compute_fingerprint(datasets["Liver"])
    np.testing.assert_allclose(result["spacing"], np.median(spacings, 0), atol=1e-4)


def test_ct_is_clipped_and_scaled_with_the_foreground_statistics(datasets):
    images = _training_headers(datasets["Spleen"])
    from monai_ext.bundle.datalist import training_datalist

    labels = [nib.load(case["label"]) for case in training_datalist(datasets["Spleen"])]
    foreground = np.concatenate(
        [np.asarray(i.dataobj)[np.asarray(lab.dataobj) > 0] for i, lab in zip(images, labels, strict=True)]
    )
    (entry,) = fingerprint.compute_fingerprint(datasets["Spleen"])["normalization"]
    assert entry["scheme"] == "ct" and entry["channel"] == "CT"
    low, high = np.percentile(foreground, [0.5, 99.5])
    # up to 10,000 voxels a case are sampled, so the statistics are close to, not equal to, those of every voxel
    spread = float(foreground.std())
    assert abs(entry["clip"][0] - low) < 0.2 * spread and abs(entry["clip"][1] - high) < 0.2 * spread
    clipped = np.clip(foreground, low, high)
    assert entry["mean"] == pytest.approx(clipped.mean(), abs=0.05 * spread)
    assert entry["std"] == pytest.approx(clipped.std(), rel=0.05)
    assert -1024 <= entry["clip"][0] < entry["clip"][1] <= 3000


def _median_crop_ratio(images):
    """The share of each image that its nonzero bounding box keeps (any channel), median over the images."""
    ratios = []
    for image in images:
        data = np.asarray(image.dataobj).reshape(*image.shape[:3], -1)
        where = np.argwhere((data != 0).any(-1))
        ratios.append(np.prod(where.max(0) - where.min(0) + 1) / np.prod(data.shape[:3]))
    return float(np.median(ratios))


@pytest.mark.parametrize("task", ["BrainTumour", "Prostate", "Hippocampus"])
def test_mr_channels_are_z_scored_by_nnunets_crop_rule(datasets, task):
    result = fingerprint.compute_fingerprint(datasets[task])
    ratio = _median_crop_ratio(_training_headers(datasets[task]))
    scheme = "zscore_nonzero" if ratio < 0.75 else "zscore"
    assert [(e["channel"], e["scheme"]) for e in result["normalization"]] == [
        (name, scheme) for name in standins.STANDINS[task].modalities
    ]
    assert f"keeps {ratio:.0%} of the median image" in result["normalization"][0]["why"]
    assert result["reasons"]["normalization"] == result["normalization"][0]["why"]


def test_a_small_memory_budget_shrinks_the_roi_and_says_so(datasets):
    roomy = fingerprint.compute_fingerprint(datasets["BrainTumour"])
    tight = fingerprint.compute_fingerprint(datasets["BrainTumour"], memory_gb=0.55)
    budget = 0.55 * 2**30 - fingerprint.FIXED_BYTES
    # a step trains on every patch of every image in the batch
    patches = tight["batch_size"] * tight["num_samples"]
    assert patches == 4 and patches * np.prod(tight["roi_size"]) * fingerprint.BYTES_PER_VOXEL <= budget
    assert np.prod(tight["roi_size"]) < np.prod(roomy["roi_size"])
    assert all(r % 8 == 0 for r in tight["roi_size"])
    assert "shrunk to fit 2 images of 2 patches in 0.55 GB" in tight["reasons"]["roi_size"]


def test_the_fingerprint_counts_the_patches_the_bundles_training_step_holds(tmp_path):
    data = synthetic.write_synthetic_msd(tmp_path / "data", num_training=4, num_test=0)
    parser = train_config(BUNDLE, {"dataset_dir": data, "fingerprint_file": str(tmp_path / "none.json")})
    step = next(iter(parser.get_parsed_content("train#dataloader")))["image"]
    result = fingerprint.compute_fingerprint(data)
    assert step.shape[0] == result["batch_size"] * result["num_samples"] == 4
    voxels = step.shape[0] * int(np.prod(step.shape[2:]))
    assert f"an epoch at {voxels} a step" in result["reasons"]["cpu_iterations_per_epoch"]


def test_a_saved_fingerprint_is_used_only_for_the_dataset_it_describes(datasets, tmp_path):
    saved = fingerprint.compute_fingerprint(datasets["Liver"])
    saved["roi_size"] = [8, 8, 8]  # a user's edit
    path = tmp_path / "fingerprint.json"
    path.write_text(json.dumps(saved))
    assert fingerprint.load_fingerprint(path, datasets["Liver"])["roi_size"] == [8, 8, 8]
    assert fingerprint.load_fingerprint(path, datasets["Spleen"]) == fingerprint.compute_fingerprint(datasets["Spleen"])
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}: not a fingerprint"):
        fingerprint.load_fingerprint(path, datasets["Liver"])


def test_errors_name_the_problem(datasets, tmp_path):
    with pytest.raises(ValueError, match="memory_gb must be a number above 0.5"):
        fingerprint.compute_fingerprint(datasets["Liver"], memory_gb=0.1)
    with pytest.raises(ValueError, match="max_roi must be a positive multiple of 8"):
        fingerprint.compute_fingerprint(datasets["Liver"], max_roi=50)
    capped = fingerprint.compute_fingerprint(datasets["BrainTumour"], max_roi=48)
    assert capped["roi_size"] == [48, 48, 40] and capped["reasons"]["roi_size"].endswith("at most 48 per axis")
    with pytest.raises(FileNotFoundError, match="dataset_dir: no dataset.json"):
        fingerprint.compute_fingerprint(tmp_path)
    mixed = standins.write_standin("Prostate", tmp_path / "mixed")
    first = sorted((tmp_path / "mixed" / "imagesTr").iterdir())[2]  # a training case, not the first
    one_channel = nib.load(first)
    nib.save(nib.Nifti1Image(np.asarray(one_channel.dataobj)[..., 0], one_channel.affine), first)
    with pytest.raises(ValueError, match="1 channels, while the first training case has 2"):
        fingerprint.compute_fingerprint(mixed)


def test_command_prints_what_it_chose_and_why_and_writes_the_json(datasets, tmp_path):
    output = tmp_path / "bundle" / "configs" / "fingerprint.json"
    done = run_cli(["fingerprint", datasets["Prostate"], "--output", output], tmp_path, module=("-m", "monai_ext"))
    written = json.loads(output.read_text())
    from monai_ext.bundle.datalist import validation_datalist

    validation = validation_datalist(datasets["Prostate"])
    assert written == fingerprint.compute_fingerprint(datasets["Prostate"], other_cases=validation)
    assert "target spacing (mm)" in done.stdout and "why: median spacing, except axis 2" in done.stdout
    assert f"ROI                     {' x '.join(map(str, written['roi_size']))}" in done.stdout
    over = "nonzero voxels" if written["normalization"][0]["scheme"] == "zscore_nonzero" else "the whole image"
    assert f"T2: z-score over {over}; ADC: z-score over {over}" in done.stdout
