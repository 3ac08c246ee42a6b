import pytest

from autoseg.planning.topology import pad_to_multiple, pool_and_conv_props


@pytest.mark.parametrize("spacing, patch, pools, padded, first_kernel", [
    # Hippocampus median shape at 1 mm: three poolings per axis, padded to 40x56x40
    ((1, 1, 1), (36, 50, 35), (3, 3, 3), (40, 56, 40), (3, 3, 3)),
    ((1, 1), (50, 35), (3, 3), (56, 40), (3, 3)),
    # anisotropic 5 x 0.8 x 0.8: z is not pooled or convolved until x/y spacing catches up
    ((5, 0.8, 0.8), (24, 256, 256), (2, 6, 6), (24, 256, 256), (1, 3, 3)),
    # a lone pooling axis needs 12 voxels, 11 is not enough
    ((1, 1), (11, 4), (0, 0), (11, 4), None),
    ((1, 1), (12, 4), (1, 0), (12, 4), (3, 3)),
    # isotropic large patch, features stop at edge 4
    ((1, 1, 1), (128, 128, 128), (5, 5, 5), (128, 128, 128), (3, 3, 3)),
])
def test_pool_and_conv_props(spacing, patch, pools, padded, first_kernel):
    t = pool_and_conv_props(spacing, patch)
    assert t.poolings_per_axis == pools
    assert t.patch_size == padded
    assert t.n_stages == sum(1 for _ in t.strides) == len(t.kernel_sizes)
    assert t.strides[0] == (1,) * len(spacing)
    assert t.kernel_sizes[-1] == (3,) * len(spacing)
    if first_kernel is not None:
        assert t.kernel_sizes[0] == first_kernel
    assert all(p % d == 0 for p, d in zip(t.patch_size, t.divisor))


def test_anisotropic_kernels_switch_to_3_once_spacing_is_within_2x():
    t = pool_and_conv_props((5, 0.8, 0.8), (24, 256, 256))
    # x/y pool alone until their spacing (0.8 * 2^k) is within 2x of z (5): after 2 poolings (3.2 mm)
    assert [k[0] for k in t.kernel_sizes[:4]] == [1, 1, 3, 3]
    assert t.strides[1] == (1, 2, 2) and t.strides[2] == (1, 2, 2) and t.strides[3] == (2, 2, 2)


@pytest.mark.parametrize("shape, div, expected", [((35, 36), (8, 4), (40, 36)), ((35.5, 1), (8, 1), (40, 1))])
def test_pad_to_multiple(shape, div, expected):
    assert pad_to_multiple(shape, div) == expected
