"""Normalisation by nnU-Net's rule, and warnings about cases that differ, on datasets built to show each case.

The failure this pins: training volumes with noise everywhere (no exact zeros) and a validation volume with a
background of exact zeros. Z-scored over nonzero voxels, the same tissue lands about two standard deviations apart;
z-scored over the whole image, as nnU-Net's rule says for such a dataset, it lands in the same place.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cli import run_cli

from monai_ext.bundle.intensity import NormalizeChannelsd
from monai_ext.bundle.planning import fingerprint, intensities

SHAPE = (24, 28, 20)


def _head(rng, background, scale=1.0):
    """A T1-like volume: 'white matter' 300 inside 'grey matter' 200 inside a head, on a given background."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    image = np.where(radius < 0.75, 200.0, 0.0) + np.where(radius < 0.45, 100.0, 0.0)
    label = (radius < 0.75).astype(np.uint8) + (radius < 0.45).astype(np.uint8)
    if background == "noise":
        image = image + np.abs(rng.normal(0, 8, SHAPE)) + 1e-3  # no exact zero anywhere, as on a raw scan
    return (scale * image).astype(np.float32), label


def _dataset(root, training, validation):
    """An MSD folder: ``training``/``validation`` are lists of (name, image, label)."""
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    lists = {}
    for key, cases in (("training", training), ("validation", validation)):
        lists[key] = []
        for name, image, label in cases:
            nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 2.0, 1.0])), root / "imagesTr" / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 2.0, 1.0])), root / "labelsTr" / f"{name}.nii.gz")
            lists[key].append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    description = {"name": "heads", "modality": {"0": "T1"}, "labels": {"0": "background", "1": "grey", "2": "white"}}
    (root / "dataset.json").write_text(json.dumps({**description, **lists}))
    return root


def test_the_crop_ratio_decides_between_the_two_z_scores():
    rng = np.random.default_rng(0)
    stripped = np.zeros(SHAPE, np.float32)
    stripped[6:18, 7:21, 5:15] = rng.uniform(1, 2, (12, 14, 10))  # a bounding box of 12*14*10 voxels
    profile = intensities.intensity_profile(stripped, "stripped")
    assert profile.crop_ratio == pytest.approx(12 * 14 * 10 / np.prod(SHAPE))
    assert profile.zero_fraction == (pytest.approx(1 - 12 * 14 * 10 / np.prod(SHAPE)),)
    use_mask, why = intensities.nonzero_mask_rule([profile] * 3)
    assert use_mask and why.startswith("cropping to the nonzero region keeps 12% of the median image, under 75%")
    noisy, _ = _head(rng, "noise")
    use_mask, why = intensities.nonzero_mask_rule([intensities.intensity_profile(noisy, "noisy")] * 3)
    assert not use_mask and "z-score over the whole image" in why


def test_noisy_training_and_a_clean_validation_case_normalise_alike_and_are_warned_about(tmp_path):
    rng = np.random.default_rng(1)
    training = [(f"train{i}", *_head(rng, "noise")) for i in range(3)]
    clean, clean_label = _head(rng, "zeros")
    dataset = _dataset(tmp_path / "heads", training, [("clean", clean, clean_label)])
    from monai_ext.bundle.datalist import validation_datalist

    result = fingerprint.compute_fingerprint(dataset, other_cases=validation_datalist(dataset))
    assert [entry["scheme"] for entry in result["normalization"]] == ["zscore"]
    [background] = [w for w in result["warnings"] if "background" in w]
    assert "exact zeros make 0% in imagesTr/train" in background and "in imagesTr/clean.nii.gz" in background

    def white_matter(normalization, image, label):
        normalized = NormalizeChannelsd("image", normalization)({"image": torch.from_numpy(image)[None]})["image"]
        return float(normalized[0][torch.from_numpy(label) == 2].mean())

    ours = [white_matter(result["normalization"], image, label) for image, label in ((training[0][1], training[0][2]),
                                                                                     (clean, clean_label))]  # fmt: skip
    over_nonzero = [{"channel": "T1", "scheme": "zscore_nonzero"}]  # the rule of the last round, for comparison
    old = [white_matter(over_nonzero, image, label) for image, label in ((training[0][1], training[0][2]),
                                                                         (clean, clean_label))]  # fmt: skip
    assert abs(ours[0] - ours[1]) < 0.1
    assert abs(old[0] - old[1]) > 0.5


def test_both_commands_name_the_cases_that_differ(tmp_path):
    rng = np.random.default_rng(2)
    training = [(f"site{i}", *_head(rng, "noise", scale=(1.0, 1.0, 4.0)[i])) for i in range(3)]
    dataset = _dataset(tmp_path / "sites", training, [("clean", *_head(rng, "zeros"))])
    checked = run_cli(["check_data", "--dataset_dir", dataset], tmp_path, module=("-m", "monai_ext"))
    printed = run_cli(["fingerprint", dataset], tmp_path, module=("-m", "monai_ext"))
    for done in (checked, printed):
        warnings = [line for line in done.stdout.splitlines() if "WARNING" in line]
        assert len(warnings) == 2, done.stdout
        assert "T1: the cases differ in background" in warnings[0] and "imagesTr/clean.nii.gz" in warnings[0]
        assert "T1: the cases differ in intensity range" in warnings[1] and "imagesTr/site2.nii.gz" in warnings[1]
    assert checked.stdout.rstrip().endswith("4 cases OK")
