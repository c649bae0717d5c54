"""Random crop at training (one offset per sample) and centre crop at inference."""

from __future__ import annotations

import torch

from robopolicy.policies.common.encoders import crop_images


def _ramp(n: int, t: int, h: int, w: int) -> torch.Tensor:
    """(n, t, 3, h, w) whose pixel value encodes its row and column: 1000 * row + col (every channel and step)."""
    rows = torch.arange(h).view(h, 1) * 1000
    cols = torch.arange(w).view(1, w)
    return (rows + cols).float().expand(n, t, 3, h, w).clone()


def test_training_crop_draws_one_offset_per_sample_shared_by_its_channels_and_steps():
    torch.manual_seed(0)
    x = _ramp(64, 2, 12, 10)
    out = crop_images(x, (8, 6), train=True)
    assert out.shape == (64, 2, 3, 8, 6)
    top, left = out[:, 0, 0, 0, 0] // 1000, out[:, 0, 0, 0, 0] % 1000
    for i in range(64):  # a contiguous window at (top, left) of sample i, the same in every channel and step
        expected = x[i, :, :, int(top[i]) : int(top[i]) + 8, int(left[i]) : int(left[i]) + 6]
        assert torch.equal(out[i], expected)
    offsets = set(zip(top.tolist(), left.tolist()))
    assert len(offsets) > 10  # 64 samples, 5 x 5 possible offsets: not one offset for the batch
    assert top.min() == 0 and top.max() == 4 and left.min() == 0 and left.max() == 4  # every offset reachable


def test_eval_crop_is_the_centre_and_no_crop_is_identity():
    x = _ramp(2, 1, 12, 10)
    out = crop_images(x, (8, 6), train=False)
    assert torch.equal(out, x[..., 2:10, 2:8])
    assert crop_images(x, None, train=True) is x
