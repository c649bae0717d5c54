"""LeRobot's ACT (Zhao et al. 2023, as LeRobot 0.4 builds it), with LeRobot's parameter names under `model.`.

Tokens, sequence first (S, B, D) as LeRobot's nn.MultiheadAttention runs: [latent, robot state?, env state?,
camera feature cells...]; 1-D tokens have learned positions, camera cells 2-D sinusoidal ones, added to queries
and keys in every layer (DETR). The decoder's queries are zeros plus learned positions; at inference the latent is
zero (the CVAE's prior mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from robopolicy.policies.act.modeling import sinusoid_table
from robopolicy.policies.base import LossOutput, PolicyHead
from robopolicy.policies.common.lerobot_parts import ENV_STATE, ROBOT_STATE, ImageNormalizer, resnet, stack_cameras
from robopolicy.policies.lerobot_act.configuration import LeRobotACTConfig

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def sinusoid_2d(feature_map: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., H, W) map -> (1, 2 * dim, H, W) positions: y channels then x channels; coordinates 1..H (1..W)
    scaled to (0, 2 pi], channel j -> sin (even) / cos (odd) of coord / 10000^(2 floor(j/2) / dim)."""
    h, w = feature_map.shape[-2:]
    device = feature_map.device
    ys = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + 1e-6) * (2 * math.pi)
    xs = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + 1e-6) * (2 * math.pi)
    rate = 10_000.0 ** (2 * (torch.arange(dim, dtype=torch.float32, device=device) // 2) / dim)

    def table(coord: torch.Tensor) -> torch.Tensor:  # (L,) -> (L, dim), sin/cos interleaved
        a = coord[:, None] / rate
        return torch.stack([a[:, 0::2].sin(), a[:, 1::2].cos()], dim=-1).flatten(1)

    ty, tx = table(ys)[:, None].expand(h, w, dim), table(xs)[None].expand(h, w, dim)
    return torch.cat([ty, tx], dim=-1).permute(2, 0, 1)[None]


class EncoderLayer(nn.Module):
    def __init__(self, cfg: LeRobotACTConfig):
        super().__init__()
        d = cfg.dim_model
        self.self_attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout)
        self.linear1, self.linear2 = nn.Linear(d, cfg.dim_feedforward), nn.Linear(cfg.dim_feedforward, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout1, self.dropout2 = (nn.Dropout(cfg.dropout) for _ in range(3))
        self.activation, self.pre_norm = ACTIVATIONS[cfg.feedforward_activation], cfg.pre_norm

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None, pad: torch.Tensor | None = None) -> torch.Tensor:
        """x (S, B, D), pos (S, 1|B, D) or None, pad (B, S) True where a token is padding."""
        h = self.norm1(x) if self.pre_norm else x
        qk = h if pos is None else h + pos
        x = x + self.dropout1(self.self_attn(qk, qk, value=h, key_padding_mask=pad)[0])
        if not self.pre_norm:
            x = self.norm1(x)
        h = self.norm2(x) if self.pre_norm else x
        x = x + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(h)))))
        return x if self.pre_norm else self.norm2(x)


class Encoder(nn.Module):
    def __init__(self, cfg: LeRobotACTConfig, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(layers))
        self.norm = nn.LayerNorm(cfg.dim_model) if cfg.pre_norm else nn.Identity()

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None, pad: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pos, pad)
        return self.norm(x)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LeRobotACTConfig):
        super().__init__()
        d = cfg.dim_model
        self.self_attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout)
        self.multihead_attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout)
        self.linear1, self.linear2 = nn.Linear(d, cfg.dim_feedforward), nn.Linear(cfg.dim_feedforward, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout, self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(cfg.dropout) for _ in range(4))
        self.activation, self.pre_norm = ACTIVATIONS[cfg.feedforward_activation], cfg.pre_norm

    def forward(self, x: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor,
                memory_pos: torch.Tensor) -> torch.Tensor:
        """x (H, B, D) queries, memory (S, B, D), positions (H, 1, D) and (S, 1|B, D)."""
        h = self.norm1(x) if self.pre_norm else x
        x = x + self.dropout1(self.self_attn(h + query_pos, h + query_pos, value=h)[0])
        if not self.pre_norm:
            x = self.norm1(x)
        h = self.norm2(x) if self.pre_norm else x
        x = x + self.dropout2(self.multihead_attn(h + query_pos, memory + memory_pos, value=memory)[0])
        if not self.pre_norm:
            x = self.norm2(x)
        h = self.norm3(x) if self.pre_norm else x
        x = x + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(h)))))
        return x if self.pre_norm else self.norm3(x)


class Decoder(nn.Module):
    def __init__(self, cfg: LeRobotACTConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.norm = nn.LayerNorm(cfg.dim_model)

    def forward(self, x, memory, query_pos, memory_pos):
        for layer in self.layers:
            x = layer(x, memory, query_pos, memory_pos)
        return self.norm(x)


class Trunk(nn.Module):
    """A torchvision ResNet up to layer4, its children under their own names: (N, 3, H, W) -> (N, C, H', W')."""

    STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, net: nn.Module):
        super().__init__()
        for name in self.STAGES:
            self.add_module(name, getattr(net, name))
        self.out_channels = net.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.STAGES:
            x = getattr(self, name)(x)
        return x


class ACTModel(nn.Module):
    """LeRobot's ACT module (its `model.` state dict)."""

    def __init__(self, cfg: LeRobotACTConfig):
        super().__init__()
        self.cfg = cfg
        d, a = cfg.dim_model, cfg.action_dim
        state_dim = cfg.input_features[ROBOT_STATE].shape[0] if cfg.has_robot_state else 0
        if cfg.use_vae:
            self.vae_encoder = Encoder(cfg, cfg.n_vae_encoder_layers)
            self.vae_encoder_cls_embed = nn.Embedding(1, d)
            if state_dim:
                self.vae_encoder_robot_state_input_proj = nn.Linear(state_dim, d)
            self.vae_encoder_action_input_proj = nn.Linear(a, d)
            self.vae_encoder_latent_output_proj = nn.Linear(d, 2 * cfg.latent_dim)
            n_tokens = 1 + cfg.horizon + (1 if state_dim else 0)
            self.register_buffer("vae_encoder_pos_enc", sinusoid_table(n_tokens, d)[None])
        if cfg.cameras:
            net = resnet(cfg.vision_backbone, FrozenBatchNorm2d, cfg.replace_final_stride_with_dilation)
            self.backbone = Trunk(net)
            with torch.no_grad():  # the feature map's size, for the cells' positions
                fmap = self.backbone(torch.zeros(1, *cfg.input_features[cfg.cameras[0]].shape))
            self.register_buffer("cell_grid", torch.zeros(fmap.shape[2:]), persistent=False)
        self.encoder = Encoder(cfg, cfg.n_encoder_layers)
        self.decoder = Decoder(cfg)
        if state_dim:
            self.encoder_robot_state_input_proj = nn.Linear(state_dim, d)
        if cfg.has_env_state:
            self.encoder_env_state_input_proj = nn.Linear(cfg.input_features[ENV_STATE].shape[0], d)
        self.encoder_latent_input_proj = nn.Linear(cfg.latent_dim, d)
        if cfg.cameras:
            self.encoder_img_feat_input_proj = nn.Conv2d(self.backbone.out_channels, d, kernel_size=1)
        self.encoder_1d_feature_pos_embed = nn.Embedding(1 + bool(state_dim) + cfg.has_env_state, d)
        self.decoder_pos_embed = nn.Embedding(cfg.horizon, d)
        self.action_head = nn.Linear(d, a)
        for p in [*self.encoder.parameters(), *self.decoder.parameters()]:
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def posterior(self, state: torch.Tensor | None, actions: torch.Tensor, pad: torch.Tensor | None):
        """q(z | state, chunk): (mu, log sigma^2), each (B, latent_dim)."""
        b = actions.shape[0]
        tokens = [self.vae_encoder_cls_embed.weight.expand(b, 1, -1)]
        if state is not None:
            tokens.append(self.vae_encoder_robot_state_input_proj(state)[:, None])
        tokens.append(self.vae_encoder_action_input_proj(actions))
        x = torch.cat(tokens, dim=1).transpose(0, 1)
        lead = torch.zeros(b, len(tokens) - 1, dtype=torch.bool, device=actions.device)
        mask = torch.cat([lead, pad if pad is not None else torch.zeros_like(actions[..., 0], dtype=torch.bool)], 1)
        cls = self.vae_encoder(x, self.vae_encoder_pos_enc.transpose(0, 1).to(x.dtype), mask)[0]
        params = self.vae_encoder_latent_output_proj(cls)
        return params[:, : self.cfg.latent_dim], params[:, self.cfg.latent_dim :]

    def positions(self) -> torch.Tensor:
        """(S, 1, D): the learned 1-D token positions, then each camera's 2-D cell positions."""
        pos = [self.encoder_1d_feature_pos_embed.weight[:, None]]
        for _ in self.cfg.cameras:
            cells = sinusoid_2d(self.cell_grid, self.cfg.dim_model // 2).to(pos[0].dtype)
            pos.append(cells.flatten(2).permute(2, 0, 1))
        return torch.cat(pos)

    def memory(self, states: dict[str, torch.Tensor], images: torch.Tensor | None,
               latent: torch.Tensor) -> torch.Tensor:
        """The encoder's output (S, B, D); states {key: (B, D_k)}, images (B, N_cam, C, H, W) normalized."""
        tokens = [self.encoder_latent_input_proj(latent)]
        if self.cfg.has_robot_state:
            tokens.append(self.encoder_robot_state_input_proj(states[ROBOT_STATE]))
        if self.cfg.has_env_state:
            tokens.append(self.encoder_env_state_input_proj(states[ENV_STATE]))
        x = torch.stack(tokens)
        if images is not None:
            cells = [self.encoder_img_feat_input_proj(self.backbone(images[:, cam])).flatten(2).permute(2, 0, 1)
                     for cam in range(images.shape[1])]  # each (h * w, B, D)
            x = torch.cat([x, *cells])
        return self.encoder(x, self.positions())

    def decode(self, memory: torch.Tensor) -> torch.Tensor:
        """(S, B, D) encoder output -> (B, H, action_dim) chunk."""
        b = memory.shape[1]
        queries = torch.zeros(self.cfg.horizon, b, self.cfg.dim_model, dtype=memory.dtype, device=memory.device)
        out = self.decoder(queries, memory, self.decoder_pos_embed.weight[:, None], self.positions())
        return self.action_head(out.transpose(0, 1))


class LeRobotACTHead(PolicyHead):
    """L1 on the chunk (padded steps zeroed) + kl_weight * KL(q(z | s, a) || N(0, I)), as LeRobot's ACTPolicy."""

    config_class = LeRobotACTConfig

    def __init__(self, config: LeRobotACTConfig):
        super().__init__(config)
        self.model = ACTModel(config)
        self.image_norm = ImageNormalizer(config)

    def _inputs(self, obs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Current-step states {key: (B, D)} and normalized images (B, N_cam, C, H, W) or None."""
        states = {k: obs[k][:, -1] for k in (ROBOT_STATE, ENV_STATE) if k in self.config.input_features}
        if not self.config.cameras:
            return states, None
        return states, self.image_norm(stack_cameras(self.config, obs)[:, -1])

    def _zero_latent(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(like.shape[0], self.config.latent_dim, dtype=like.dtype, device=like.device)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        cfg = self.config
        states, images = self._inputs(batch)
        actions = batch[cfg.action_key]
        pad = batch.get(f"{cfg.action_key}_is_pad")
        aux, metrics = {}, {}
        if cfg.use_vae:
            mu, log_var = self.model.posterior(states.get(ROBOT_STATE), actions, pad)
            z = mu + (log_var / 2).exp() * torch.randn_like(mu)
            kld = (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp())).sum(-1).mean()
            aux["kld"] = cfg.kl_weight * kld
            metrics["kld"] = kld.detach()
        else:
            z = self._zero_latent(actions)
        chunk = self.model.decode(self.model.memory(states, images, z))
        per_step = (chunk - actions).abs().mean(-1)  # (B, H)
        valid = None if pad is None else ~pad
        if valid is not None:
            per_step = per_step * valid
        return LossOutput(per_sample=per_step, valid=valid, aux=aux, metrics=metrics)

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The encoder's output (B, S, D) over [latent z = 0, states, camera cells]."""
        states, images = self._inputs(obs)
        like = next(iter(states.values())) if states else images
        return self.model.memory(states, images, self._zero_latent(like.flatten(1))).transpose(0, 1)

    def sample_from_condition(self, cond: torch.Tensor, *, generator=None, guide=None) -> torch.Tensor:
        """Deterministic: the chunk (B, H, D) decoded from the encoded observation (B, S, D)."""
        return self.model.decode(cond.transpose(0, 1))
