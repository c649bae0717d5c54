"""ACT head: L = L1(a_hat, a) on unpadded steps + kl_weight * KL(q(z | a, s) || N(0, I)); z = 0 at inference.

Tokens into the transformer encoder: [proj(z), proj(state), proj(instruction), camera feature-map cells] (the
instruction token only with a "language" input: LanguageEncoder -> Linear to dim_model + its own learned position);
a DETR-style decoder turns `horizon` learned queries into action tokens (B, H, d) and `action_out` into the chunk
(B, H, D). Heads built on ACT (moe_act) reuse everything up to the action tokens (`_decode_hidden`,
`_decode_condition`) and replace `action_out`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.policies.act.configuration import ACTConfig
from robopolicy.policies.base import DIFFERENTIABLE_SAMPLING, LANGUAGE, LossOutput, PolicyHead
from robopolicy.policies.common import kernels, prepacked, ragged
from robopolicy.policies.common.dropout import dropout, use_fast_dropout
from robopolicy.policies.common.encoders import crop_images, feature_map_shape, image_trunk, imagenet_normalize
from robopolicy.policies.common.text_encoder import LanguageEncoder


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed 1-D sinusoidal position table."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return table


def sinusoid_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """(h * w, dim) 2-D sinusoidal positions: half the channels encode y, half x."""
    ty, tx = sinusoid_table(h, dim // 2), sinusoid_table(w, dim // 2)
    return torch.cat([ty[:, None].expand(h, w, -1), tx[None].expand(h, w, -1)], dim=-1).reshape(h * w, dim)


def first_token_output(layer: nn.TransformerEncoderLayer, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """What `layer(x, src_key_padding_mask=mask)[:, 0]` computes, without the other tokens' queries and FF.

    The posterior reads only the CLS token, so its last layer needs keys/values of all 2 + H tokens but the query,
    attention output and feed-forward of token 0 alone (16% of ACT's training FLOPs at chunk 100).
    x (B, T, d) -> (B, d).
    """
    if layer.norm_first:
        raise ValueError("first_token_output implements the post-norm layer (norm_first=False) that ACT uses")
    q = x[:, :1]
    h = layer.norm1(q + layer.dropout1(layer.self_attn(q, x, x, key_padding_mask=mask, need_weights=False)[0]))
    h = layer.norm2(h + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(h))))))
    return h[:, 0]


class ACTHead(PolicyHead):
    config_class = ACTConfig
    capabilities = frozenset({LANGUAGE, DIFFERENTIABLE_SAMPLING})

    def __init__(self, config: ACTConfig):
        super().__init__(config)
        c = config
        d = c.dim_model
        self.state_keys, self.image_keys = c.state_keys, c.image_keys
        state_dim = sum(math.prod(c.input_features[k].shape) for k in self.state_keys)

        def encoder_stack(layers: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(d, c.n_heads, c.dim_feedforward, c.dropout, batch_first=True)
            return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        # CVAE posterior q(z | state, actions), training only
        if c.use_vae:
            self.vae_cls = nn.Parameter(torch.zeros(1, 1, d))
            self.vae_action_in = nn.Linear(c.action_dim, d)
            self.vae_state_in = nn.Linear(state_dim, d) if state_dim else None
            self.vae_encoder = encoder_stack(c.n_vae_encoder_layers)
            self.vae_out = nn.Linear(d, 2 * c.latent_dim)
            self.register_buffer("vae_pos", sinusoid_table(2 + c.horizon, d), persistent=False)

        # observation tokens
        self.latent_in = nn.Linear(c.latent_dim, d)
        self.state_in = nn.Linear(state_dim, d) if state_dim else None
        self.token_pos = nn.Parameter(torch.zeros(2, d))
        language_keys = c.language_keys
        self.language = LanguageEncoder(c.language, language_keys[0]) if language_keys else None
        if self.language is not None:  # one instruction token with its own learned position
            self.language_in = nn.Linear(c.language.embed_dim, d)
            self.language_pos = nn.Parameter(torch.zeros(d))
        if self.image_keys:
            self.backbone = image_trunk(c.encoder)
            cin, h, w = c.input_features[self.image_keys[0]].shape
            fc, fh, fw = feature_map_shape(self.backbone, (cin, *(c.encoder.crop_shape or (h, w))))
            self.image_proj = prepacked.PrepackedConv2d(fc, d, 1)
            self.register_buffer("image_pos", sinusoid_2d(fh, fw, d), persistent=False)
        self.encoder = encoder_stack(c.n_encoder_layers)
        dec = nn.TransformerDecoderLayer(d, c.n_heads, c.dim_feedforward, c.dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(dec, c.n_decoder_layers)
        self.queries = nn.Parameter(torch.zeros(c.horizon, d))
        self._build_output()
        nn.init.normal_(self.token_pos, std=0.02)
        nn.init.normal_(self.queries, std=0.02)
        if self.language is not None:
            nn.init.normal_(self.language_pos, std=0.02)
        use_fast_dropout(self)

    def _build_output(self) -> None:
        """The modules that turn action tokens (..., d) into actions: ACT's linear `action_out`."""
        self.action_out = nn.Linear(self.config.dim_model, self.config.action_dim)

    def _state(self, obs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not self.state_keys:
            return None
        return torch.cat([obs[k][:, -1].flatten(1) for k in self.state_keys], dim=-1)  # (B, S)

    def _posterior(self, state: torch.Tensor | None, actions: torch.Tensor, pad: torch.Tensor | None):
        """mu, logvar (B, latent) of q(z | state, actions); padded actions are masked as keys. With the CPU kernels
        (kernels.py) they are left out of the encoder entirely; torch's vae_encoder otherwise."""
        b = actions.shape[0]
        tokens = [self.vae_cls.expand(b, -1, -1)]
        if state is not None:
            tokens.append(self.vae_state_in(state)[:, None])
        tokens.append(self.vae_action_in(actions))
        x = torch.cat(tokens, dim=1)
        x = x + self.vae_pos[: x.shape[1]]
        lead = x.shape[1] - actions.shape[1]
        pad = torch.zeros(actions.shape[:2], dtype=torch.bool, device=x.device) if pad is None else pad
        mask = torch.cat([torch.zeros(b, lead, dtype=torch.bool, device=x.device), pad], dim=1)
        if not kernels.enabled(x):
            return self.vae_out(self.vae_encoder(x, src_key_padding_mask=mask)[:, 0]).chunk(2, dim=-1)
        layout = ragged.Ragged.from_valid(~mask)
        *layers, last = self.vae_encoder.layers
        rows = layout.pack(x)
        for layer in layers:
            rows = ragged.encoder_layer(layer, rows, layout)
        mu, logvar = self.vae_out(first_token_output(last, layout.unpack(rows), mask)).chunk(2, dim=-1)
        return mu, logvar

    def _tokens(self, obs: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """Encoder input tokens [latent, state, instruction, camera cells] (B, T, d)."""
        tokens = [self.latent_in(z)[:, None] + self.token_pos[0]]
        state = self._state(obs)
        if state is not None:
            tokens.append(self.state_in(state)[:, None] + self.token_pos[1])
        if self.language is not None:
            instruction = self.language(obs).to(tokens[0].dtype)  # (B, embed_dim)
            tokens.append(self.language_in(instruction)[:, None] + self.language_pos)
        for key in self.image_keys:
            img = crop_images(obs[key][:, -1], self.config.encoder.crop_shape, self.training)
            img = imagenet_normalize(img) if img.shape[1] == 3 else img
            fmap = self.image_proj(self.backbone(img))  # (B, d, h, w)
            tokens.append(fmap.flatten(2).transpose(1, 2) + self.image_pos)
        return torch.cat(tokens, dim=1)

    def _decode(self, obs: dict[str, torch.Tensor], z: torch.Tensor, pad: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Action chunk (B, H, D) in training (zeros on the padded steps the CPU kernels skip: the loss masks
        them); see `_decode_hidden`."""
        hidden, layout = self._decode_hidden(obs, z, pad)
        out = self.action_out(hidden)
        return out if layout is None else layout.unpack(out)

    def _decode_hidden(self, obs: dict[str, torch.Tensor], z: torch.Tensor, pad: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, ragged.Ragged | None]:
        """The decoder's action tokens in training, before `action_out`: (B, H, d) and None with torch's decoder;
        with the CPU kernels (kernels.py) the rows (N, d) of the steps `pad` (B, H) leaves unpadded and their
        layout (`layout.unpack(rows)` -> (B, H, d), zeros on the padded steps, which are never decoded), the first
        layer's query self-attention shared by the batch."""
        tokens = self._tokens(obs, z)
        memory = self.encoder(tokens)
        b, layers = z.shape[0], self.decoder.layers
        if not kernels.enabled(memory):
            return self.decoder(self.queries.expand(b, -1, -1), memory), None
        every = ragged.Ragged.from_valid(torch.ones(b, self.config.horizon, dtype=torch.bool, device=z.device))
        x = self._query_self_attention(layers[0], b)
        for i, layer in enumerate(layers):
            if i > 0:
                x = every.unpack(ragged.self_attention_block(layer, every.pack(x), every))
            if i < len(layers) - 1:
                x = every.unpack(ragged.decoder_cross_and_ff(layer, every.pack(x), memory, every))
        # the last layer's cross-attention and feed-forward decode only the unpadded steps: nothing reads the others
        layout = every if pad is None else ragged.Ragged.from_valid(~pad)
        rows = ragged.decoder_cross_and_ff(layers[-1], layout.pack(x), memory, layout)
        if self.decoder.norm is not None:
            rows = self.decoder.norm(rows)
        return rows, layout

    def _query_self_attention(self, layer: nn.TransformerDecoderLayer, b: int) -> torch.Tensor:
        """norm1(queries + dropout1(self_attn(queries))) of the first decoder layer, (B, H, d).

        Its input is the learned queries, the same for every sample: projections, scores and softmax are computed
        once (1/B of the work torch's layer does); only the dropout masks and what follows them are per sample.
        """
        mha = layer.self_attn
        heads = [t.unflatten(-1, (mha.num_heads, -1)).transpose(0, 1)  # (heads, H, d / heads)
                 for t in F.linear(self.queries, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)]
        q, k, v = heads
        attn = (q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5)).softmax(dim=-1)  # (heads, H, H)
        attn = dropout(attn.expand(b, -1, -1, -1), mha.dropout, self.training)  # (B, heads, H, H)
        out = mha.out_proj((attn @ v).transpose(1, 2).flatten(2))  # (B, H, d)
        return layer.norm1(self.queries + layer.dropout1(out))

    def _encode_inference(self, tokens: torch.Tensor) -> torch.Tensor:
        """What `encoder(tokens)` computes in eval mode, with prepacked weights (torch's encoder where the CPU kernels
        are off). (B, T, d) -> (B, T, d)."""
        if not kernels.enabled(tokens):
            return self.encoder(tokens)
        memory = tokens
        for layer in self.encoder.layers:
            memory = prepacked.encoder_layer(layer, memory)
        return self.encoder.norm(memory) if self.encoder.norm is not None else memory

    def _decode_inference(self, memory: torch.Tensor) -> torch.Tensor:
        """What `decoder(queries, memory)` computes in eval mode, with prepacked weights and the first decoder
        layer's query-only part cached: its self-attention over the learned queries (and their cross-attention
        projection) depend on parameters alone; torch's decoder where the CPU kernels are off.
        memory (B, T, d) -> (B, H, d)."""
        if not kernels.enabled(memory):
            return self.decoder(self.queries.expand(memory.shape[0], -1, -1), memory)
        first, *rest = self.decoder.layers
        x, q = self._query_constants()
        x = first.norm2(x + prepacked.attention(first.multihead_attn, x, memory, q=q))
        x = first.norm3(x + prepacked.feed_forward(first, x))
        for layer in rest:
            x = layer.norm1(x + prepacked.attention(layer.self_attn, x, x))
            x = layer.norm2(x + prepacked.attention(layer.multihead_attn, x, memory))
            x = layer.norm3(x + prepacked.feed_forward(layer, x))
        return self.decoder.norm(x) if self.decoder.norm is not None else x

    def _query_constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm1(queries + self_attn(queries)) (1, H, d), its cross-attention query projection (1, heads, H, d/h)),
        recomputed when any parameter they derive from changes."""
        layer = self.decoder.layers[0]
        sources = [self.queries, *layer.self_attn.parameters(), *layer.norm1.parameters(),
                   layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias]
        key = prepacked.weights_key(*sources)
        if getattr(self, "_query_cache", (None,))[0] != key:
            x = self.queries[None]
            x = layer.norm1(x + prepacked.attention(layer.self_attn, x, x))
            mha, d = layer.multihead_attn, self.config.dim_model
            q = prepacked.linear(x, mha.in_proj_weight, mha.in_proj_bias, rows=(0, d))
            q = q.unflatten(-1, (mha.num_heads, d // mha.num_heads)).transpose(1, 2).contiguous()
            self._query_cache = (key, x, q)
        return self._query_cache[1], self._query_cache[2]

    def _latent(self, batch: dict[str, torch.Tensor], actions: torch.Tensor, pad: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training latent z (B, latent) drawn from the posterior q(z | state, actions) (reparameterized) and its
        KL to N(0, I) summed over latent dims (B,); z = 0 and KL = 0 without the CVAE."""
        c = self.config
        if not c.use_vae:
            b = actions.shape[0]
            return (actions.new_zeros(b, c.latent_dim), actions.new_zeros(b))
        mu, logvar = self._posterior(self._state(batch), actions, pad)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return z, -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        c = self.config
        actions = batch[c.action_key]
        pad = batch.get(f"{c.action_key}_is_pad")
        z, kl = self._latent(batch, actions, pad)
        pred = self._decode(batch, z, pad)
        l1 = F.l1_loss(pred, actions, reduction="none").mean(-1)  # (B, H)
        if pad is not None:
            l1 = l1 * (~pad).to(l1.dtype)
        per_step = l1 + c.kl_weight * kl[:, None]
        return LossOutput(per_step, valid=None if pad is None else ~pad,
                          metrics={"l1": l1.detach().mean(), "kl": kl.detach().mean()})

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The transformer encoder's memory (B, T, d) over [latent z = 0, state, camera cells]: what the decoder's
        queries attend to at inference."""
        b = next(obs[k] for k in self.config.windowed_inputs).shape[0]
        z = torch.zeros(b, self.config.latent_dim, device=self.device, dtype=self.dtype)
        tokens = self._tokens(obs, z)
        if not (self.training or torch.is_grad_enabled()):
            return self._encode_inference(tokens)
        return self.encoder(tokens)

    def _decode_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The learned queries decoded against the memory (B, T, d) -> action tokens (B, H, d), before
        `action_out`: torch's decoder in training mode, the prepacked inference path in eval mode."""
        if self.training:
            return self.decoder(self.queries.expand(cond.shape[0], -1, -1), cond)
        return self._decode_inference(cond)

    def sample_from_condition(self, cond: torch.Tensor, *, generator: torch.Generator | None = None,
                              guide=None) -> torch.Tensor:
        """Decode the learned queries against the memory (B, T, d) -> chunks (B, H, D); deterministic (z = 0)."""
        return self.action_out(self._decode_condition(cond))
