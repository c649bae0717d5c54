"""Transformer layers over ragged sequences: the valid tokens of B padded sequences packed into (N, d) rows.

A padding token that is masked out as a key never influences a valid token, so its own query, projections and
feed-forward are wasted work. Packing keeps every per-token op (projections, feed-forward, norms) on the N valid
rows; only the attention itself runs on the (B, L) layout, with the padding masked as keys. Same parameters and
the same results as torch's post-norm nn.TransformerEncoderLayer / nn.MultiheadAttention (batch_first) to float
rounding; dropout draws from the same distributions (on the valid tokens only).

ACT trains on chunks of 100 actions; near an episode's end the chunk is padded (39% of the action tokens over
PushT's windows), and the posterior's encoder and the decoder's last layer skip them. One of the CPU kernels:
ACT uses these layers only where `kernels.enabled` (kernels.py), torch's layers elsewhere. Their projections and
feed-forward run on 2-D rows through `prepacked.linear` (oneDNN's matmul with gradients where the ops exist).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.policies.common.dropout import dropout
from robopolicy.policies.common.prepacked import linear


@dataclass(frozen=True)
class Ragged:
    """Layout of B sequences of length L with `valid` (B, L) bool tokens; rows = flat indices of the valid ones."""

    valid: torch.Tensor
    rows: torch.Tensor

    @staticmethod
    def from_valid(valid: torch.Tensor) -> Ragged:
        return Ragged(valid, valid.flatten().nonzero().squeeze(1))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (N, ...), the valid tokens in row-major order."""
        return x.flatten(0, 1).index_select(0, self.rows)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, L, ...), zeros at the padding."""
        b, length = self.valid.shape
        out = x.new_zeros(b * length, *x.shape[1:]).index_copy(0, self.rows, x)
        return out.view(b, length, *x.shape[1:])


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, d) -> (B, heads, L, d / heads)."""
    return x.unflatten(-1, (heads, x.shape[-1] // heads)).transpose(1, 2)


def attention(mha: nn.MultiheadAttention, query: torch.Tensor, memory: torch.Tensor, layout: Ragged,
              memory_layout: Ragged | None) -> torch.Tensor:
    """`mha(query, memory, memory, key_padding_mask=padding of memory)` on packed rows -> (Nq, d).

    query (Nq, d) packed by `layout`; memory (Nk, d) packed by `memory_layout`, or (B, Lk, d) dense when it has
    no padding (`memory_layout` None). Self-attention: pass the same tensor and layout twice.
    """
    d, h = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    if query is memory:
        q, k, v = layout.unpack(linear(query, w, b)).chunk(3, dim=-1)
    else:
        q = layout.unpack(linear(query, w, b, rows=(0, d)))
        kv = linear(memory.flatten(0, -2), w, b, rows=(d, 3 * d)).view(*memory.shape[:-1], 2 * d)
        k, v = (memory_layout.unpack(kv) if memory_layout is not None else kv).chunk(2, dim=-1)
    mask = None if memory_layout is None else memory_layout.valid[:, None, None, :]  # True = attend
    q, k, v = _heads(q, h), _heads(k, h), _heads(v, h)
    if mha.training and mha.dropout > 0:  # dropout on the attention weights, as nn.MultiheadAttention does
        scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = dropout(scores.softmax(dim=-1), mha.dropout, True) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = layout.pack(out.transpose(1, 2).flatten(2))  # (Nq, d)
    return linear(out, mha.out_proj.weight, mha.out_proj.bias)


def feed_forward(layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer, x: torch.Tensor) -> torch.Tensor:
    """linear2(dropout(activation(linear1(x)))) on rows x (N, d) -> (N, d)."""
    h = layer.activation(linear(x, layer.linear1.weight, layer.linear1.bias))
    return linear(layer.dropout(h), layer.linear2.weight, layer.linear2.bias)


def self_attention_block(layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer, x: torch.Tensor,
                         layout: Ragged) -> torch.Tensor:
    """norm1(x + dropout1(self_attn(x))) of a post-norm layer on packed rows x (N, d) -> (N, d)."""
    if layer.norm_first:
        raise ValueError("ragged layers implement the post-norm layer (norm_first=False)")
    return layer.norm1(x + layer.dropout1(attention(layer.self_attn, x, x, layout, layout)))


def encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, layout: Ragged) -> torch.Tensor:
    """A post-norm encoder layer on packed rows x (N, d) -> (N, d); padding masked as keys."""
    x = self_attention_block(layer, x, layout)
    return layer.norm2(x + layer.dropout2(feed_forward(layer, x)))


def decoder_cross_and_ff(layer: nn.TransformerDecoderLayer, x: torch.Tensor, memory: torch.Tensor,
                         layout: Ragged) -> torch.Tensor:
    """The part of a post-norm decoder layer after its self-attention, on packed query rows x (N, d) -> (N, d);
    memory (B, Lk, d) dense."""
    x = layer.norm2(x + layer.dropout2(attention(layer.multihead_attn, x, memory, layout, None)))
    return layer.norm3(x + layer.dropout3(feed_forward(layer, x)))
