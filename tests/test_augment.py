"""Pretraining augmentations: one draw per sample shared by its frames, identity when switched off."""

import math

import torch

from neurostorm.data.augment import AugmentConfig, augment, gaussian_blur, random_affine, rotation_matrices


def blob(center, size=24, frames=4):
    axes = torch.meshgrid(*(torch.arange(size, dtype=torch.float32) for _ in range(3)), indexing="ij")
    r2 = sum((a - c) ** 2 for a, c in zip(axes, center, strict=True))
    return torch.exp(-r2 / 8.0)[None, None, ..., None].repeat(1, 1, 1, 1, 1, frames)


def centroid(volume):
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in volume.shape), indexing="ij")
    return torch.stack([(a * volume).sum() / volume.sum() for a in axes])


def test_switched_off_augmentation_is_the_identity():
    x = torch.randn(2, 1, 12, 12, 12, 3)
    config = AugmentConfig(rotate_deg=0.0, scale=0.0, noise_p=0.0, smooth_p=0.0)
    assert torch.equal(augment(x, config), x)
    torch.testing.assert_close(random_affine(x, 0.0, 0.0), x, atol=1e-5, rtol=1e-5)


def test_rotation_matrices_are_rotations():
    r = rotation_matrices(torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.0, math.pi / 2]]))
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(2))


def test_one_draw_per_sample_is_shared_by_all_frames():
    x = blob((8, 12, 14)).repeat(3, 1, 1, 1, 1, 1)
    out = augment(x, AugmentConfig(noise_p=0.0, smooth_p=1.0), generator=torch.Generator().manual_seed(0))
    for sample in out:
        assert all(torch.allclose(sample[..., 0], sample[..., t]) for t in range(1, 4))
    assert not torch.allclose(out[0], out[1])  # samples get their own draws
    again = augment(x, AugmentConfig(noise_p=0.0, smooth_p=1.0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_zoom_and_rotation_keep_a_centred_blob_centred_and_move_an_off_centre_one():
    centre = (11.5, 11.5, 11.5)
    moved = random_affine(blob(centre), rotate_deg=10.0, scale=0.1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(centroid(moved[0, 0, ..., 0]), torch.tensor(centre), atol=0.05, rtol=0)
    off = blob((6.0, 11.5, 11.5))
    turned = random_affine(off, rotate_deg=10.0, scale=0.0, generator=torch.Generator().manual_seed(1))
    c = centroid(turned[0, 0, ..., 0])
    # a rotation about the centre keeps the distance to it and moves the blob
    torch.testing.assert_close((c - 11.5).norm(), torch.tensor(5.5), atol=0.3, rtol=0)
    assert (c - torch.tensor([6.0, 11.5, 11.5])).norm() > 0.2


def test_smoothing_and_noise_have_the_requested_strength():
    noise = torch.randn(1, 1, 20, 20, 20, 2, generator=torch.Generator().manual_seed(0))
    blurred = gaussian_blur(noise, torch.tensor([1.0]))
    assert blurred.std() < 0.5 * noise.std()
    ones = torch.ones(1, 1, 8, 8, 8, 2)
    assert torch.allclose(gaussian_blur(ones, torch.tensor([0.7])), ones)
    x = torch.zeros(64, 1, 8, 8, 8, 1)
    out = augment(x, AugmentConfig(rotate_deg=0.0, scale=0.0, smooth_p=0.0, noise_p=1.0, noise_std=0.1))
    torch.testing.assert_close(out.std(), torch.tensor(0.1), atol=0.005, rtol=0)
