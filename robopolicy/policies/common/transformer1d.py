"""Transformer denoiser over action chunks (Diffusion Policy's transformer variant, minGPT-style).

Action tokens (B, H, n_emb) use causal self-attention; they cross-attend to conditioning tokens
[timestep token, one token per observation step, the instruction token (with lang_dim > 0)].
Input x (B, H, D) -> output (B, H, D).
"""

from __future__ import annotations

import torch
from torch import nn

from robopolicy.policies.common.unet1d import SinusoidalEmbedding


class TransformerDenoiser(nn.Module):
    def __init__(
        self,
        action_dim: int,
        obs_feature_dim: int,
        horizon: int,
        n_obs_steps: int,
        n_layer: int = 8,
        n_head: int = 4,
        n_emb: int = 256,
        p_drop_emb: float = 0.0,
        p_drop_attn: float = 0.01,
        causal: bool = True,
        lang_dim: int = 0,
    ):
        super().__init__()
        self.action_in = nn.Linear(action_dim, n_emb)
        self.obs_in = nn.Linear(obs_feature_dim, n_emb)
        self.lang_in = nn.Linear(lang_dim, n_emb) if lang_dim else None
        self.lang_dim = lang_dim
        self.time_emb = SinusoidalEmbedding(n_emb)
        self.pos = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.cond_pos = nn.Parameter(torch.zeros(1, 1 + n_obs_steps + (1 if lang_dim else 0), n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        self.cond_mlp = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        layer = nn.TransformerDecoderLayer(
            n_emb, n_head, 4 * n_emb, p_drop_attn, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, n_layer)
        self.ln = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)
        mask = torch.triu(torch.full((horizon, horizon), float("-inf")), diagonal=1) if causal else None
        self.register_buffer("causal_mask", mask, persistent=False)
        self.n_obs_steps = n_obs_steps
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, H, D); timestep (B,) or scalar; cond (B, n_obs_steps * obs_feature_dim [+ lang_dim]) -> (B, H, D)."""
        b, h, _ = x.shape
        t_tok = self.time_emb(timestep.expand(b).float())[:, None]
        obs = cond[:, : cond.shape[1] - self.lang_dim]
        cond_tokens = [t_tok, self.obs_in(obs.reshape(b, self.n_obs_steps, -1))]
        if self.lang_in is not None:
            cond_tokens.append(self.lang_in(cond[:, -self.lang_dim :])[:, None])
        memory = self.cond_mlp(self.drop(torch.cat(cond_tokens, dim=1) + self.cond_pos))
        tokens = self.drop(self.action_in(x) + self.pos[:, :h])
        mask = self.causal_mask[:h, :h] if self.causal_mask is not None else None
        out = self.decoder(tokens, memory, tgt_mask=mask)
        return self.head(self.ln(out))
