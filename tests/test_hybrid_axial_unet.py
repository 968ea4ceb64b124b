import pytest
import torch
from monai.bundle import ConfigParser
from randomised_norms import randomise_batch_norms

from monai_ext.networks.blocks import AxialBottleneck, GatedAxialAttention
from monai_ext.networks.nets import HybridAxialUNet


def small_net(**kwargs) -> HybridAxialUNet:
    arguments = {"channels": (8, 16, 32), "attention_blocks": (0, 1, 1), "num_groups": 4} | kwargs
    return HybridAxialUNet(3, 1, 3, (32, 16, 24), **arguments)


def test_shapes_3d_2d_and_inputs_smaller_than_img_size():
    net = small_net().eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 32, 16, 24)).shape == (2, 3, 32, 16, 24)
        assert net(torch.randn(1, 1, 8, 16, 16)).shape == (1, 3, 8, 16, 16)
    net_2d = HybridAxialUNet(2, 2, 4, 64, attention_blocks=(0, 0, 1, 1)).eval()
    with torch.no_grad():
        assert net_2d(torch.randn(1, 2, 64, 40)).shape == (1, 4, 64, 40)


def test_attention_runs_at_the_coarse_levels_with_spans_from_img_size():
    net = small_net()
    assert not any(isinstance(m, AxialBottleneck) for m in net.encoder[0].modules())
    for level, attention_channels in ((1, 8), (2, 16)):  # level 0 at half resolution, levels 1 and 2 at a quarter
        layers = [m for m in net.encoder[level].modules() if isinstance(m, GatedAxialAttention)]
        assert [(layer.axis, layer.spatial_size) for layer in layers] == [(0, 8), (1, 4), (2, 6)]
        assert all(layer.out_channels == attention_channels for layer in layers)


def test_attention_reaches_across_the_whole_patch_where_convolutions_do_not():
    # eval mode: no batch statistics couple the voxels, so only the receptive field links them
    x = torch.randn(1, 1, 64, 8, 8)
    far = x.clone()
    far[:, :, :4] += 3.0  # change the first 4 slices, look at the last 4
    # without attention the last slices see exactly the same inputs, so their outputs are bitwise equal
    for blocks, reaches in (((0, 0, 0), False), ((0, 0, 1), True)):
        torch.manual_seed(0)
        net = HybridAxialUNet(3, 1, 2, (64, 8, 8), channels=(8, 16, 32), attention_blocks=blocks, num_groups=4)
        randomise_batch_norms(net, shift_scale=0.1)
        net.eval()
        with torch.no_grad():
            change = (net(far) - net(x))[:, :, -4:].abs().max().item()
        assert (change > 1e-7) is reaches and (reaches or change == 0.0), (blocks, change)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"channels": (16,), "attention_blocks": (1,)}, "at least two positive"),
        ({"attention_blocks": (0, 1)}, "for each of the 4 levels"),
        ({"attention_blocks": (0, 0, -1, 1)}, "non-negative"),
        ({"img_size": 36}, "multiple of [8, 8, 8]"),
        ({"channels": (16, 32, 64, 80), "num_groups": 8}, "channels[3] // 2 = 40"),
    ],
)
def test_argument_errors_name_the_argument(arguments, message):
    defaults = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "img_size": 64}
    with pytest.raises(ValueError) as error:
        HybridAxialUNet(**(defaults | arguments))
    assert message in str(error.value)


def test_input_errors_name_the_supported_sizes():
    net = small_net().eval()
    with pytest.raises(ValueError, match=r"HybridAxialUNet: spatial size \[36, 16, 24\] .* at most img_size"):
        net(torch.randn(1, 1, 36, 16, 24))
    with pytest.raises(ValueError, match=r"multiple of \[4, 4, 4\]"):
        net(torch.randn(1, 1, 32, 16, 6))
    with pytest.raises(ValueError, match="expected a 5D input"):
        net(torch.randn(1, 32, 16, 24))


def test_scripted_matches_eager_in_train_and_eval():
    model = small_net()
    randomise_batch_norms(model, shift_scale=0.1)
    scripted = torch.jit.script(model)
    x = torch.randn(2, 1, 32, 16, 24)
    for train in (False, True):
        model.train(train)
        scripted.train(train)
        torch.testing.assert_close(scripted(x), model(x), atol=1e-4, rtol=1e-4)


def test_training_lowers_the_loss_and_eval_is_deterministic():
    torch.manual_seed(0)
    net = small_net()
    optimiser = torch.optim.Adam(net.parameters(), 1e-2)
    x = torch.randn(2, 1, 32, 16, 24)
    target = (x[:, 0] > 0.5).long() + (x[:, 0] > 1.5).long()
    losses = []
    for _ in range(20):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), target)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_bundle_config_instantiates_dotted_target():
    config = {
        "imports": ["$import monai_ext"],
        "network_def": {
            "_target_": "monai_ext.networks.nets.HybridAxialUNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 4,
            "img_size": [64, 64, 64],
        },
    }
    network = ConfigParser(config).get_parsed_content("network_def")
    assert isinstance(network, HybridAxialUNet) and network.img_size == [64, 64, 64]
    assert sum(isinstance(m, AxialBottleneck) for m in network.modules()) == 1


@pytest.mark.parametrize("shape", [(2, 1, 64, 64, 64), (2, 1, 40, 48, 32), (2, 1, 8, 16, 8)])
def test_every_trainable_parameter_gets_a_gradient_for_any_patch_shape(shape):
    net = HybridAxialUNet(3, 1, 3, 64).train()
    net(torch.randn(shape)).sum().backward()
    assert [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None] == []


def test_distributed_data_parallel_trains_several_steps_without_find_unused_parameters(tmp_path):
    # DDP checks at each step that the previous one reduced every parameter, also in a one-process group
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        net = torch.nn.parallel.DistributedDataParallel(small_net())
        optimiser = torch.optim.SGD(net.parameters(), lr=0.01)
        for shape in ((2, 1, 32, 16, 24), (2, 1, 16, 8, 8), (1, 1, 8, 16, 24)):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(
                net(torch.randn(shape)), torch.randint(0, 3, (shape[0], *shape[2:]))
            ).backward()
            optimiser.step()
    finally:
        torch.distributed.destroy_process_group()
