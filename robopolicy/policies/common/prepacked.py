"""oneDNN-prepacked weights for CPU inference: the same linear and conv layers, laid out once for fast no-grad calls.

At batch 1 a policy's matmuls are thin (a few rows) and stream their weights from memory; MKL's fp32 GEMM reaches
5-9 GB/s on those shapes here and torch's default conv path for 3x3 convs on 6x6..12x12 feature maps is an im2col
GEMM. oneDNN with weights reordered once into its blocked layout runs the same sums 1.3-2.4x faster (linears) and
up to 6x (ResNet-18 layer4 conv at 3x3: 3.8 -> 0.6 ms); benchmarks/bench_kernels.py. Results equal the plain ops
to float rounding.

The packed copy is cached per weight tensor and rebuilt when the weight changes (its `_version` moves on every
in-place update: optimizer steps, `load_state_dict`, EMA copies). With gradients, `linear` runs oneDNN's matmul on
the plain weight in forward and backward (`_OneDNNLinear`): on this AMD EPYC (AVX-512) MKL's fp32 GEMM runs at
~90 GFLOP/s and oneDNN's at ~200 on the UNet's training shapes. Anything that is not float32, runs under autocast or
where `kernels.onednn` says no (switch off, not a CPU tensor, private ops missing) takes the plain op.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.policies.common import kernels

_cache: dict[int, tuple] = {}  # id(weight) -> (weakref to weight, version key, {layout key: packed}, finalizer)


def weights_key(*tensors: torch.Tensor) -> tuple:
    """Changes whenever any of `tensors` is updated in place or replaced: a cache key for derived constants."""
    return tuple((t._version, t.data_ptr()) for t in tensors)


def _usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The oneDNN path applies: float32, no autocast, CPU kernels on with the oneDNN ops (no-grad unless a
    caller handles autograd itself)."""
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and kernels.onednn(x))


def _packed(weight: torch.Tensor, key: tuple, pack) -> torch.Tensor:
    """The packed form of `weight` (or of a block of it) for layout `key`, rebuilt when the weight changed."""
    version = weights_key(weight)
    hit = _cache.get(id(weight))
    if hit is None or hit[0]() is not weight:  # first use (or a dead tensor's id reused)
        hit = (weakref.ref(weight), version, {}, weakref.finalize(weight, _cache.pop, id(weight), None))
        _cache[id(weight)] = hit
    elif hit[1] != version:
        hit = (hit[0], version, {}, hit[3])
        _cache[id(weight)] = hit
    if key not in hit[2]:
        hit[2][key] = pack()
    return hit[2][key]


def release(module: nn.Module) -> None:
    """Drop the packed copies of `module`'s parameters (e.g. when training resumes after an evaluation)."""
    for p in module.parameters():
        hit = _cache.pop(id(p), None)
        if hit is not None:
            hit[3].detach()


def _matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T (+ bias) by oneDNN on an unpacked (possibly strided) b; a (M, K), b (N, K) -> (M, N)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """F.linear(x, w, b) for 2-D x (M, K), w (N, K) with oneDNN matmuls in forward and backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _matmul(x, w, b)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, w = ctx.saved_tensors
        dy = dy.contiguous()
        dx = _matmul(dy, w.t()) if ctx.needs_input_grad[0] else None  # dy @ w
        dw = _matmul(dy.t(), x.t()) if ctx.needs_input_grad[1] else None  # dy.T @ x
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def _worth_packing(batch_rows: int, weight_numel: int) -> bool:
    """oneDNN's call costs ~15 us more than MKL's: it pays off from 1 MB of weights (4 MB for a single row,
    where MKL's GEMV is good). Measured on this machine's shapes (UNet 64..2048 channels, ACT, batch 1..100)."""
    return weight_numel >= (1 << 20 if batch_rows == 1 else 1 << 18)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False,
           rows: tuple[int, int] | None = None, transposed: bool = False) -> torch.Tensor:
    """F.linear(x, W[r0:r1], bias[r0:r1]) (then ReLU if `relu`); x (..., in) -> (..., out).

    W = weight.flatten(1) (a conv weight (O, C, K) acts as (O, C * K)), or its transpose when `transposed`
    (x @ weight.flatten(1)). `rows` selects a block of output rows (e.g. the query part of a fused q/k/v
    projection). Prepacked oneDNN matmul (ReLU fused) under no-grad on CPU; with gradients, 2-D x, `_OneDNNLinear`.
    """
    def matrix() -> torch.Tensor:
        w = weight.flatten(1)
        w = w.t() if transposed else w
        return w if rows is None else w[rows[0]:rows[1]]

    if rows is not None:
        bias = bias[rows[0]:rows[1]] if bias is not None else None
    grad = torch.is_grad_enabled()
    if (not _usable(x, weight) or not _worth_packing(x.numel() // x.shape[-1], weight.numel())
            or (grad and x.dim() != 2)):
        y = F.linear(x, matrix(), bias)
        return F.relu(y) if relu else y
    if grad:
        y = _OneDNNLinear.apply(x.contiguous(), matrix(), bias)
        return F.relu(y) if relu else y
    # no batch-size hint: the layout (and so every result bit) must not depend on which call packed it
    packed = _packed(weight, ("linear", rows, transposed),
                     lambda: torch.ops.mkldnn._reorder_linear_weight(matrix().detach().contiguous()))
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "relu" if relu else "none", [], "")


class PrepackedLinear(nn.Linear):
    """nn.Linear (same parameters and state dict) that runs with a prepacked weight under no-grad on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class PrepackedConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) that runs with a prepacked weight under no-grad on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() or not _usable(x, self.weight) or self.padding_mode != "zeros"
                or isinstance(self.padding, str)):
            return super().forward(x)
        args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        packed = _packed(self.weight, ("conv", tuple(x.shape)), lambda: torch.ops.mkldnn._reorder_convolution_weight(
            self.weight.detach(), *args, list(x.shape)))
        if not x.is_contiguous(memory_format=torch.channels_last):  # oneDNN's own output layout: keep it
            x = x.contiguous()
        return torch.ops.mkldnn._convolution_pointwise(x, packed, self.bias, *args, "none", [], "")


def prepack_layers(module: nn.Module) -> nn.Module:
    """Swap every plain nn.Conv2d / nn.Linear inside `module` for its Prepacked twin sharing the same parameters
    (in place; state dict unchanged)."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d:
            swapped = PrepackedConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                      child.padding, child.dilation, child.groups, child.bias is not None,
                                      child.padding_mode, device="meta")
        elif type(child) is nn.Linear:
            swapped = PrepackedLinear(child.in_features, child.out_features, child.bias is not None, device="meta")
        else:
            prepack_layers(child)
            continue
        swapped.weight, swapped.bias = child.weight, child.bias
        swapped.train(child.training)
        setattr(module, name, swapped)
    return module


# ------------------------------------------------------------------ torch's post-norm transformer layers, inference
def attention(mha: nn.MultiheadAttention, query: torch.Tensor, memory: torch.Tensor,
              q: torch.Tensor | None = None) -> torch.Tensor:
    """`mha(query, memory, memory)` (batch_first, no mask, eval) -> (B, Lq, d); query (B, Lq, d), memory (B, Lk, d).

    `q`: the query projection already split into heads, (B or 1, heads, Lq, d / heads), when the caller cached it.
    """
    b, heads, d = memory.shape[0], mha.num_heads, mha.embed_dim

    def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, heads, L, d / heads)
        return t.unflatten(-1, (heads, d // heads)).transpose(1, 2)

    w, bias = mha.in_proj_weight, mha.in_proj_bias
    if q is None and query is memory:
        q, k, v = linear(memory, w, bias).chunk(3, dim=-1)
        q = split(q)
    else:
        if q is None:
            q = split(linear(query, w, bias, rows=(0, d)))
        q = q.expand(b, -1, -1, -1)
        k, v = linear(memory, w, bias, rows=(d, 3 * d)).chunk(2, dim=-1)
    out = F.scaled_dot_product_attention(q, split(k), split(v))
    return linear(out.transpose(1, 2).reshape(b, -1, d), mha.out_proj.weight, mha.out_proj.bias)


def feed_forward(layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer, x: torch.Tensor) -> torch.Tensor:
    """linear2(activation(linear1(x))) of a torch transformer layer (eval: no dropout)."""
    relu = layer.activation is F.relu
    h = linear(x, layer.linear1.weight, layer.linear1.bias, relu=relu)
    return linear(h if relu else layer.activation(h), layer.linear2.weight, layer.linear2.bias)


def encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` of a post-norm nn.TransformerEncoderLayer in eval mode without a mask; x (B, L, d)."""
    if layer.norm_first:
        raise ValueError("encoder_layer implements the post-norm layer (norm_first=False)")
    x = layer.norm1(x + attention(layer.self_attn, x, x))
    return layer.norm2(x + feed_forward(layer, x))
