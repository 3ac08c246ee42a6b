"""Sliding-window prediction: exact reconstruction with dummy networks, mirroring, 2D slices, batching."""

import numpy as np
import pytest
import torch
from torch import nn

from autoseg.inference.sliding_window import predict_logits, predict_logits_2d_slices


def _pointwise(dims: int, c_in: int = 2, k: int = 3, seed: int = 0) -> nn.Module:
    """A 1x1 convolution with fixed weights: its logits do not depend on the tiling."""
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(c_in, k, 1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    return conv


def _expected(conv: nn.Module, image: np.ndarray) -> np.ndarray:
    w = conv.weight.detach().numpy().reshape(conv.out_channels, conv.in_channels)
    b = conv.bias.detach().numpy()
    return np.einsum("kc,c...->k...", w, image) + b.reshape(-1, *([1] * (image.ndim - 1)))


class _Ramp(nn.Module):
    """Logits = first channel + a ramp along one patch axis: not mirror-equivariant, position-dependent.

    Averaging over a flip of that axis turns the ramp into its mean, a constant: exact whatever the tiling.
    """

    def __init__(self, axis: int, k: int = 2):
        super().__init__()
        self.axis, self.k = axis, k

    def forward(self, x):
        n = x.shape[2 + self.axis]
        shape = [1] * x.ndim
        shape[2 + self.axis] = n
        ramp = torch.arange(n, dtype=x.dtype).reshape(shape)
        return x[:, :1].repeat(1, self.k, *([1] * (x.ndim - 2))) + ramp


IMAGE = np.random.default_rng(1).standard_normal((2, 21, 13, 6)).astype(np.float32)  # not divisible; 6 < patch
PATCH = (8, 8, 8)


@pytest.mark.parametrize("mirror_axes", [None, (0, 1, 2)])
@pytest.mark.parametrize("gaussian", [True, False])
def test_pointwise_network_is_reproduced_exactly(mirror_axes, gaussian):
    conv = _pointwise(3)
    out = predict_logits(conv, IMAGE, PATCH, 3, mirror_axes=mirror_axes, gaussian=gaussian)
    assert out.shape == (3, 21, 13, 6) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _expected(conv, IMAGE), rtol=1e-5, atol=1e-5)


def test_batches_torch_input_and_deep_supervision_list():
    conv = _pointwise(3)

    class DeepSup(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            y = self.conv(x)
            return [y, y[:, :, ::2, ::2, ::2]]

    ref = predict_logits(conv, IMAGE, PATCH, 3, batch_size=1)
    out = predict_logits(DeepSup(), torch.from_numpy(IMAGE), PATCH, 3, batch_size=5, step=0.33)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mirroring_flips_back(axis):
    """With the ramp's axis mirrored, the logits are image + (n - 1) / 2 exactly; without it they are not."""
    net = _Ramp(axis)
    out = predict_logits(net, IMAGE, PATCH, 2, mirror_axes=(axis,))
    expected = np.repeat(IMAGE[:1], 2, axis=0) + (PATCH[axis] - 1) / 2
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    plain = predict_logits(net, IMAGE, PATCH, 2, mirror_axes=None)
    assert not np.allclose(plain.numpy(), expected, atol=1e-3)
    all_axes = predict_logits(net, IMAGE, PATCH, 2, mirror_axes=(0, 1, 2))  # other flips do not disturb it
    np.testing.assert_allclose(all_axes.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64, None])
def test_mirrorings_split_across_passes_change_nothing(batch_size):
    """A tile's 8 mirrorings in one pass, split over several, or shared with other tiles: the same logits."""
    net = _Ramp(1)
    ref = predict_logits(net, IMAGE, PATCH, 2, mirror_axes=(0, 1, 2), batch_size=1, step=0.4)
    out = predict_logits(net, IMAGE, PATCH, 2, mirror_axes=(0, 1, 2), batch_size=batch_size, step=0.4)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mirror_axes", [None, (0, 1)])
def test_2d_network_on_3d_volume(mirror_axes):
    conv = _pointwise(2)
    image = np.random.default_rng(2).standard_normal((2, 5, 21, 10)).astype(np.float32)
    out = predict_logits_2d_slices(conv, image, (8, 12), 3, mirror_axes=mirror_axes, batch_size=4)
    assert out.shape == (3, 5, 21, 10)
    np.testing.assert_allclose(out.numpy(), _expected(conv, image), rtol=1e-5, atol=1e-5)
    same = predict_logits(conv, image, (8, 12), 3, mirror_axes=mirror_axes)  # dispatched on the patch's length
    np.testing.assert_allclose(same.numpy(), out.numpy(), rtol=1e-6, atol=1e-6)


def test_2d_slices_mirror_in_plane():
    net = _Ramp(axis=1)  # ramp along x of the 2D patch
    image = np.random.default_rng(3).standard_normal((1, 3, 9, 17)).astype(np.float32)
    out = predict_logits_2d_slices(net, image, (8, 8), 2, mirror_axes=(1,))
    np.testing.assert_allclose(out.numpy(), np.repeat(image, 2, axis=0) + 3.5, rtol=1e-5, atol=1e-5)


def test_eval_mode_inside_and_mode_restored():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _pointwise(3)

        def forward(self, x):
            seen.append((self.training, torch.is_inference_mode_enabled()))
            return self.conv(x)

    net = Probe().train()
    predict_logits(net, IMAGE, PATCH, 3)
    assert seen and all(s == (False, True) for s in seen)
    assert net.training


def test_bf16_close_to_fp32():
    conv = _pointwise(3)
    out = predict_logits(conv, IMAGE, PATCH, 3, precision="bf16", mirror_axes=(0,))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _expected(conv, IMAGE), rtol=0.05, atol=0.1)


def test_bad_arguments():
    conv = _pointwise(3)
    with pytest.raises(ValueError, match="output has shape"):
        predict_logits(conv, IMAGE, PATCH, 4)
    with pytest.raises(ValueError, match="mirror_axes"):
        predict_logits(conv, IMAGE, PATCH, 3, mirror_axes=(3,))
    with pytest.raises(ValueError, match="precision"):
        predict_logits(conv, IMAGE, PATCH, 3, precision="fp16")
    with pytest.raises(ValueError, match="does not fit patch"):
        predict_logits(conv, IMAGE[0, 0], PATCH, 3)
