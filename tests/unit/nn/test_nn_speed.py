"""Speed helpers: bf16 autocast and channels-last give the same network outputs; the step benchmark runs."""

import pytest
import torch

from autoseg.nn import build_network
from autoseg.nn.speed import (autocast_context, benchmark_step, memory_format_for, prepare_for_device,
                              to_memory_format)
from autoseg.schema.plans import ArchitecturePlan
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss


def tiny(network="plain_unet", dims=3):
    return ArchitecturePlan(network=network, features_per_stage=(4, 8, 16), kernel_sizes=((3,) * dims,) * 3,
                            strides=((1,) * dims, (2,) * dims, (2,) * dims), blocks_per_stage_encoder=(2, 2, 2),
                            blocks_per_stage_decoder=(1, 1))


@pytest.mark.parametrize("network", ["plain_unet", "resenc_unet"])
@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_gives_the_same_outputs_and_gradients(network, dims):
    torch.manual_seed(0)
    net = build_network(tiny(network, dims), 1, 3).train()
    x = torch.randn(2, 1, *(8,) * dims)
    ref = net(x)
    sum(o.sum() for o in ref).backward()
    ref_grad = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    prepare_for_device(net, "cpu", channels_last=True)
    fmt = memory_format_for(dims + 2, True)
    assert all(p.is_contiguous(memory_format=fmt) for p in net.parameters() if p.ndim == dims + 2)
    outs = net(to_memory_format(x, True))
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    sum(o.sum() for o in outs).backward()
    # absolute tolerance on the scale of the largest gradient: a convolution bias before a norm has zero gradient
    # in exact arithmetic, and what float32 leaves there is the rounding of sums of gradients of that size
    scale = max(float(g.abs().max()) for g in ref_grad.values())
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref_grad[n], rtol=1e-3, atol=1e-5 * scale)
    prepare_for_device(net, "cpu", channels_last=False)
    assert all(p.is_contiguous() for p in net.parameters())


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_autocast_forward_backward_on_cpu(channels_last):
    torch.manual_seed(0)
    net = prepare_for_device(build_network(tiny(), 1, 3), "cpu", channels_last).train()
    x = to_memory_format(torch.randn(2, 1, 8, 8, 8), channels_last)
    targets = [torch.randint(0, 3, (2, 1, 8, 8, 8)), torch.randint(0, 3, (2, 1, 4, 4, 4))]
    with torch.no_grad():
        ref = net(x)
    with autocast_context("cpu", "bf16"):
        outs = net(x)
        loss = DeepSupervisionLoss(DiceCELoss())(outs, targets)
    assert outs[0].dtype == torch.bfloat16 and loss.dtype == torch.float32
    torch.testing.assert_close(outs[0].float(), ref[0], rtol=0.1, atol=0.1)
    loss.backward()
    # the coarsest head has deep-supervision weight 0, so it alone gets no gradient
    grads = {n: p.grad for n, p in net.named_parameters() if not n.startswith("seg_heads.0.")}
    assert all(g is not None and g.dtype == torch.float32 for g in grads.values())


def test_autocast_context_choices():
    with autocast_context("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="fp16"):
        autocast_context("cpu", "fp16")
    with pytest.raises(ValueError, match="precision"):
        autocast_context("cpu", "int8")


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_benchmark_step_runs_and_leaves_the_model_alone(deep_supervision):
    torch.manual_seed(0)
    net = build_network(tiny(dims=2), 1, 3, deep_supervision=deep_supervision)
    before = {n: p.clone() for n, p in net.state_dict().items()}
    seconds = benchmark_step(net, DeepSupervisionLoss(DiceCELoss()), (2, 1, 16, 16), "cpu", "bf16",
                             channels_last=True, iterations=2)
    assert 0 < seconds < 10
    assert all(torch.equal(before[n], p) for n, p in net.state_dict().items())


def test_compiled_prediction_equals_eager_and_needs_a_compiler(monkeypatch):
    """``--runtime compiled``: the same logits as eager to float rounding, including a second batch size (a
    recompilation); without a C++ compiler on the CPU a one-line error instead of a compiler traceback later."""
    import shutil

    from autoseg.errors import AutosegError
    from autoseg.inference.sliding_window import predict_logits
    from autoseg.nn.speed import CXX_COMPILERS, compile_for_inference

    torch.manual_seed(0)
    net = build_network(tiny(dims=2), 1, 3, deep_supervision=False).eval()
    if any(shutil.which(c) for c in CXX_COMPILERS):  # else only the refusal below can be checked here
        image = torch.randn(1, 20, 28)
        eager = predict_logits(net, image, (16, 16), 3, mirror_axes=(0, 1))
        compiled = compile_for_inference(net, "cpu")
        for batch in (None, 3):
            out = predict_logits(compiled, image, (16, 16), 3, mirror_axes=(0, 1), batch_size=batch)
            torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr("autoseg.nn.speed.shutil.which", lambda name: None)
    with pytest.raises(AutosegError, match="needs a C\\+\\+ compiler"):
        compile_for_inference(net, "cpu")
