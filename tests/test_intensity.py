"""Per-channel normalisation by modality, beside the per-image min-max scaling MONAI's bundles commonly use."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ScaleIntensityd

from monai_ext.bundle.intensity import NormalizeChannelsd

CT = {"channel": "CT", "scheme": "ct", "clip": [-100.0, 300.0], "mean": 80.0, "std": 50.0}
MR = {"channel": "T2", "scheme": "zscore_nonzero"}


def _ct_and_mr(rng):
    ct = rng.uniform(-1024, 3000, (6, 5, 4)).astype(np.float32)
    mr = rng.uniform(100, 900, (6, 5, 4)).astype(np.float32)
    mr[:2] = 0.0  # background outside the anatomy
    return ct, mr


def test_each_channel_gets_its_own_scheme_and_the_metadata_stays():
    ct, mr = _ct_and_mr(np.random.default_rng(0))
    affine = torch.diag(torch.tensor([0.8, 0.8, 5.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.from_numpy(np.stack([ct, mr])), affine=affine)
    out = NormalizeChannelsd("image", [CT, MR])({"image": image})["image"]

    expected_ct = (np.clip(ct, -100.0, 300.0) - 80.0) / 50.0
    nonzero = mr[mr != 0]
    expected_mr = np.where(mr != 0, (mr - nonzero.mean()) / nonzero.std(), 0.0)
    np.testing.assert_allclose(out[0].numpy(), expected_ct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1].numpy(), expected_mr, rtol=1e-4, atol=1e-5)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, affine) and out.dtype == torch.float32


def test_the_same_tissue_keeps_its_value_where_per_image_min_max_scaling_moves_it():
    # two CT images with the same soft tissue (40 HU); the second also shows bone at 3000 HU
    plain = np.full((1, 4, 4, 4), 40.0, np.float32)
    plain[0, 0] = -1000.0
    with_bone = plain.copy()
    with_bone[0, -1] = 3000.0
    monai_scaled = [
        ScaleIntensityd("image")({"image": torch.from_numpy(x)})["image"][0, 1, 1, 1] for x in (plain, with_bone)
    ]
    ours = [
        NormalizeChannelsd("image", [CT])({"image": torch.from_numpy(x)})["image"][0, 1, 1, 1]
        for x in (plain, with_bone)
    ]
    assert monai_scaled[0].item() == pytest.approx(1.0) and monai_scaled[1].item() == pytest.approx(1040 / 4000)
    assert ours[0].item() == ours[1].item() == pytest.approx((40.0 - 80.0) / 50.0)


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"scheme": "minmax"}, r"normalization\[0\]: 'scheme' must be one of \['ct', 'zscore', 'zscore_nonzero'\]"),
        ({**CT, "clip": [300.0, -100.0]}, r"normalization\[0\]: 'clip' must be \[low, high\] with low < high"),
        ({**CT, "std": 0}, r"normalization\[0\]: 'mean' must be a number and 'std' a positive number"),
    ],
)
def test_invalid_entries_are_refused_at_construction(entry, message):
    with pytest.raises(ValueError, match=message):
        NormalizeChannelsd("image", [entry])


def test_an_image_with_another_channel_count_is_named():
    transform = NormalizeChannelsd("image", [CT, MR])
    with pytest.raises(ValueError, match=r"image: the image has 1 channels, the normalization describes 2 \(CT, T2\)"):
        transform({"image": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(ValueError, match="one entry per image channel"):
        NormalizeChannelsd("image", [])
