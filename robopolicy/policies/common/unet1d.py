"""Conditional 1-D UNet over action chunks with FiLM conditioning (Diffusion Policy's CNN backbone).

Input x (B, H, D) -> output (B, H, D); conditioning = concat(timestep embedding, global obs features).
Every residual block predicts a per-channel scale and bias from the conditioning (FiLM).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.policies.common import kernels, prepacked


class SinusoidalEmbedding(nn.Module):
    """t (B,) -> (B, dim) sin/cos features with geometric frequencies (period up to 10k), computed in float32 and
    returned in the module's dtype (its frequency buffer follows `.to()`). Frequency i is
    max_period^(-i / (dim / 2 - shift)); LeRobot's Diffusion Policy uses shift 1."""

    def __init__(self, dim: int, max_period: float = 10_000.0, shift: int = 0):
        super().__init__()
        self.dim = dim
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - shift))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs.float()[None]
        return torch.cat([args.sin(), args.cos()], dim=-1).to(self.freqs.dtype)


class GemmConv1d(nn.Conv1d):
    """nn.Conv1d (same parameters and state dict) computed as im2col + one GEMM: (B*L_out, C*K) @ W(O, C*K)^T.

    The same sums in another order (results agree to float rounding). On CPU this beats the default kernels for
    the UNet's shapes (wide channels, short chunks): at batch 1 the default path is a GEMM with N = L <= 16 columns
    (3x slower than this one, which streams the weights once), and in training oneDNN's weight gradient for
    2048 channels at length 4 is 3x slower than the GEMM autograd derives here. nn.Conv1d's own forward where the
    CPU kernels are off (kernels.py).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not kernels.enabled(x) or self.groups != 1 or self.dilation != (1,) or self.padding_mode != "zeros"
                or isinstance(self.padding, str)):
            return super().forward(x)
        (k,), (stride,), (pad,) = self.kernel_size, self.stride, self.padding
        b = x.shape[0]
        cols = F.pad(x, (pad, pad)).unfold(2, k, stride)  # (B, C, L_out, K)
        l_out = cols.shape[2]
        cols = cols.permute(0, 2, 1, 3).reshape(b * l_out, -1)  # (B * L_out, C * K), C-major like the weight
        out = prepacked.linear(cols, self.weight, self.bias)  # (B * L_out, O); weight as (O, C * K)
        return out.view(b, l_out, self.out_channels).transpose(1, 2)


class GemmConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d (same parameters) as one GEMM (B*L, C) @ W(C, O*K) followed by an overlap-add (fold).

    Same sums in another order; on CPU 3-5x faster than the default kernel for the UNet's upsampling layers.
    nn.ConvTranspose1d's own forward where the CPU kernels are off (kernels.py).
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (not kernels.enabled(x) or output_size is not None or self.groups != 1 or self.dilation != (1,)
                or self.output_padding != (0,) or self.padding_mode != "zeros"):
            return super().forward(x, output_size)
        (k,), (stride,), (pad,) = self.kernel_size, self.stride, self.padding
        b, c, length = x.shape
        cols = prepacked.linear(x.transpose(1, 2).reshape(b * length, c), self.weight, transposed=True)  # (B*L, O*K)
        cols = cols.view(b, length, -1).transpose(1, 2)  # (B, O * K, L), O-major like the weight
        full = (length - 1) * stride + k
        out = F.fold(cols, (1, full), (1, k), stride=(1, stride)).view(b, self.out_channels, full)
        out = out[:, :, pad : full - pad]
        return out + self.bias[:, None] if self.bias is not None else out


class ConvNormMish(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__(GemmConv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMResBlock(nn.Module):
    """Two conv blocks; the conditioning sets a per-channel scale and bias between them."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int, predict_scale: bool):
        super().__init__()
        self.conv1 = ConvNormMish(c_in, c_out, kernel, groups)
        self.conv2 = ConvNormMish(c_out, c_out, kernel, groups)
        self.predict_scale = predict_scale
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, c_out * (2 if predict_scale else 1)))
        self.skip = GemmConv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        film = self.film(cond)[:, :, None]
        if self.predict_scale:
            scale, bias = film.chunk(2, dim=1)
            h = scale * h + bias
        else:
            h = h + film
        return self.conv2(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """UNet over the chunk's time axis. `down_dims` sets channels per level; H must divide by 2**(levels-1).
    final_groups: GroupNorm groups of the last conv block (default n_groups; LeRobot's is always 8)."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 128,
        predict_scale: bool = True,
        step_embed_shift: int = 0,
        final_groups: int | None = None,
    ):
        super().__init__()
        self.step_embed = nn.Sequential(
            SinusoidalEmbedding(step_embed_dim, shift=step_embed_shift),
            nn.Linear(step_embed_dim, step_embed_dim * 4),
            nn.Mish(),
            nn.Linear(step_embed_dim * 4, step_embed_dim),
        )
        c = step_embed_dim + cond_dim
        dims = (action_dim, *down_dims)

        def block(i, o):
            return FiLMResBlock(i, o, c, kernel_size, n_groups, predict_scale)

        self.down = nn.ModuleList()
        for level, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            last = level == len(down_dims) - 1
            down = GemmConv1d(d_out, d_out, 3, stride=2, padding=1) if not last else nn.Identity()
            self.down.append(nn.ModuleList([block(d_in, d_out), block(d_out, d_out), down]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for d_out, d_in in zip(reversed(down_dims[:-1]), reversed(down_dims[1:])):
            up = GemmConvTranspose1d(d_out, d_out, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([block(d_in * 2, d_out), block(d_out, d_out), up]))
        self.final = nn.Sequential(
            ConvNormMish(down_dims[0], down_dims[0], kernel_size, final_groups or n_groups),
            GemmConv1d(down_dims[0], action_dim, 1),
        )
        self.levels = len(down_dims)
        prepacked.prepack_layers(self)  # FiLM and step-embedding linears

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, H, D) noisy chunk, timestep (B,) float or int, cond (B, cond_dim) -> (B, H, D)."""
        if x.shape[1] % 2 ** (self.levels - 1):
            raise ValueError(f"horizon {x.shape[1]} must be divisible by {2 ** (self.levels - 1)} for this UNet")
        c = torch.cat([self.step_embed(timestep.expand(x.shape[0])), cond], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, c), c)
            skips.append(h)
            h = down(h)
        for res in self.mid:
            h = res(h, c)
        skips.pop(0)  # the full-resolution skip is not reused (as in Diffusion Policy)
        for res1, res2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = up(res2(res1(h, c), c))
        return self.final(h).transpose(1, 2)
