import copy
import sys
from pathlib import Path

import pytest
import torch
from randomised_norms import randomise_batch_norms

from monai_ext.networks.blocks import AxialBottleneck, GatedAxialAttention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from medt_reference import reference_copy  # noqa: E402

CASES = [
    # spatial_dims, shape (N, C, *spatial), out_channels, spatial_size, axis, stride, gated, positional
    (2, (2, 16, 12, 10), 16, 12, 0, 1, True, True),
    (2, (2, 16, 12, 10), 32, 16, 1, 2, True, True),  # L < K: the table's centre is used
    (2, (3, 8, 6, 8), 16, 8, 1, 1, False, True),
    (2, (2, 8, 10, 12), 64, 12, 1, 1, True, True),  # 4 query/key channels per head: the matmul paths
    (2, (3, 8, 6, 8), 16, 8, 0, 1, False, False),
    (3, (2, 8, 6, 4, 8), 16, 8, 0, 1, True, True),
    (3, (2, 8, 6, 4, 8), 16, 8, 1, 2, True, True),
    (3, (2, 8, 6, 4, 8), 16, 8, 2, 1, True, False),
]


@pytest.mark.parametrize("spatial_dims,shape,out_channels,size,axis,stride,gated,positional", CASES)
def test_matches_straightforward_reference(spatial_dims, shape, out_channels, size, axis, stride, gated, positional):
    layer = GatedAxialAttention(spatial_dims, shape[1], out_channels, size, axis, 8, stride, gated, positional)
    randomise_batch_norms(layer, gates=True)
    if gated:
        layer.set_gates_trainable()  # compare the gates' gradients too
    reference = reference_copy(layer)
    x = torch.randn(shape)
    expected_shape = (shape[0], out_channels, *[s // stride for s in shape[2:]])
    for train in (False, True):
        layer.train(train)
        reference.train(train)
        x_ours = x.clone().requires_grad_(True)
        x_ref = x.clone().requires_grad_(True)
        ours, ref = layer(x_ours), reference(x_ref)
        assert ours.shape == expected_shape
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
        weights = torch.randn_like(ref)
        (ours * weights).sum().backward()
        (ref * weights).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-4, rtol=1e-3)
        ref_params = dict(reference.named_parameters())
        for name, param in layer.named_parameters():
            if name.startswith(("norm_qk.", "norm_qr.", "norm_kr.")) and name.endswith(".bias"):
                # a similarity BatchNorm's shift cannot change the softmax: exactly zero here, rounding in the reference
                assert param.grad is not None and not param.grad.any(), name
                assert ref_params[name].grad.abs().max() < 1e-4
                continue
            torch.testing.assert_close(param.grad, ref_params[name].grad, atol=1e-3, rtol=1e-3)
        layer.zero_grad()
        reference.zero_grad()
    # one train step updated every running statistic exactly as BatchNorm does
    torch.testing.assert_close(dict(layer.named_buffers()), dict(reference.named_buffers()), atol=1e-5, rtol=1e-4)


def test_longer_than_span_raises():
    layer = GatedAxialAttention(2, 8, 16, spatial_size=8, axis=1)
    with pytest.raises(ValueError, match=r"input length 9 along spatial axis 1 exceeds spatial_size 8"):
        layer(torch.randn(1, 8, 4, 9))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"axis": 2}, r"axis must be in \[0, 1\]"),
        ({"out_channels": 12}, "even number"),
        ({"spatial_size": 0}, "must be positive"),
    ],
)
def test_invalid_arguments(kwargs, match):
    arguments = {"spatial_dims": 2, "in_channels": 8, "out_channels": 16, "spatial_size": 8, "axis": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        GatedAxialAttention(**arguments)


def test_gates_frozen_until_unfrozen():
    layer = GatedAxialAttention(2, 8, 16, 8, 0)
    gates = [layer.f_qr, layer.f_kr, layer.f_sv, layer.f_sve]
    assert [float(g) for g in gates] == pytest.approx([0.1, 0.1, 1.0, 0.1])
    assert not any(g.requires_grad for g in gates)
    layer.set_gates_trainable()
    layer(torch.randn(2, 8, 8, 4)).sum().backward()
    assert all(g.requires_grad and g.grad is not None for g in gates)
    assert all(g.requires_grad for g in [GatedAxialAttention(2, 8, 16, 8, 0, train_gates=True).f_sv])
    ungated = GatedAxialAttention(2, 8, 16, 8, 0, gated=False)
    assert not any("f_" in name for name, _ in ungated.named_parameters())
    with pytest.raises(RuntimeError, match="gated=False"):
        ungated.set_gates_trainable()


def test_position_free_layer_has_no_relative_terms():
    names = {name for name, _ in GatedAxialAttention(3, 8, 16, 8, 2, positional=False).state_dict().items()}
    assert "relative" not in names and not any(n.startswith(("norm_qr", "norm_kr", "norm_sve")) for n in names)


def test_initialisation_statistics():
    layer = GatedAxialAttention(2, 64, 64, 32, 0, num_groups=2)
    assert layer.qkv.weight.std().item() == pytest.approx((1 / 64) ** 0.5, rel=0.1)
    assert layer.relative.std().item() == pytest.approx((1 / 32) ** 0.5, rel=0.1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_scripted_matches_eager(spatial_dims):
    for positional in (True, False):
        block = AxialBottleneck(spatial_dims, 8, 16, 24, 8, stride=2, positional=positional)
        randomise_batch_norms(block, gates=True)
        x = torch.randn(2, 8, *([8] * spatial_dims))
        scripted = torch.jit.script(block)
        for train in (False, True):
            block.train(train)
            scripted.train(train)
            torch.testing.assert_close(scripted(x), block(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("out_channels", [16, 32, 64])  # 1, 2 and 4 query/key channels per head
def test_hand_written_backward_matches_autograd(out_channels):
    # eager training uses hand-written backward passes for the positional logits and the table attention;
    # TorchScript differentiates the same forward with autograd
    layer = GatedAxialAttention(2, 8, out_channels, 12, 1, num_groups=8).train()
    randomise_batch_norms(layer, gates=True)
    layer.set_gates_trainable()
    scripted = torch.jit.script(copy.deepcopy(layer))
    x = torch.randn(2, 8, 10, 12)
    weights = torch.randn(2, out_channels, 10, 12)
    grads = []
    for module in (layer, scripted):
        x_in = x.clone().requires_grad_(True)
        (module(x_in) * weights).sum().backward()
        grads.append({"x": x_in.grad, **{n: p.grad for n, p in module.named_parameters() if p.grad is not None}})
    assert grads[0].keys() == grads[1].keys() and "relative" in grads[0]
    for name, grad in grads[0].items():
        # gate gradients are near-cancelling sums of terms of order 100 (BatchNorm almost undoes the gates)
        torch.testing.assert_close(grad, grads[1][name], atol=1e-4, rtol=1e-4, msg=name)


def test_bottleneck_shapes_3d():
    block = AxialBottleneck(3, 8, 16, 32, spatial_size=(8, 6, 4), stride=2).eval()
    assert [layer.spatial_size for layer in block.attention] == [8, 6, 4]
    assert [layer.stride for layer in block.attention] == [1, 1, 2]
    assert block(torch.randn(1, 8, 8, 6, 4)).shape == (1, 32, 4, 3, 2)
    assert block(torch.randn(1, 8, 4, 2, 2)).shape == (1, 32, 2, 1, 1)
