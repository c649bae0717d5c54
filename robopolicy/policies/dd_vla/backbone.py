"""The two dd_vla backbones: observation prefix + L action tokens -> (B, L, bins) logits at the action positions.

Both expose the same four calls, so the head's loss and decoding never name a backbone:

- `prefix(obs)`: the observation's input tokens, computed once per observation (the head's `encode`);
- `train_logits(prefix, tokens)`: logits for action tokens (B, L) (some [MASK]) in one differentiable pass;
- `start(prefix)`: what every decoding round of that observation reuses (the prefix keys / values);
- `round_logits(state, tokens)`: logits of one decoding round from `start`'s state.

Attention: action tokens attend to every valid prefix token and to every action token (bidirectional over the
action block); prefix tokens never attend to action tokens, so the prefix keys and values do not depend on the
action tokens and are computed once per chunk. The VLM keeps its causal attention inside the prefix (as it was
pretrained); the small transformer's prefix is bidirectional (attention="prefix"), or the whole sequence is one
bidirectional block recomputed every round (attention="full").
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.policies.common.encoders import crop_images, feature_map_shape, image_trunk, imagenet_normalize
from robopolicy.policies.common.pretrained import PretrainedModelError, model_source
from robopolicy.policies.common.text_encoder import LanguageEncoder
from robopolicy.policies.dd_vla.configuration import DDVLAConfig


def crop_shape(height: int, width: int, area_ratio: float) -> tuple[int, int] | None:
    """(H', W') of a crop keeping `area_ratio` of the area at the image's aspect ratio; None for no crop."""
    if area_ratio >= 1.0:
        return None
    side = math.sqrt(area_ratio)
    return max(1, round(height * side)), max(1, round(width * side))


def state_vector(obs: dict[str, Any], keys: list[str]) -> torch.Tensor | None:
    """Current-step state inputs concatenated, (B, S); None without state keys."""
    if not keys:
        return None
    return torch.cat([obs[k][:, -1].flatten(1) for k in keys], dim=-1)


def state_mlp(state_dim: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(state_dim, width), nn.GELU(), nn.Linear(width, width))


# ----- small: a from-scratch transformer ----------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm transformer block whose attention can extend its keys / values with cached ones."""

    def __init__(self, dim: int, n_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim_feedforward), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(dim_feedforward, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, N, d) attends to [past keys/values (B, heads, P, d/h), its own]; returns (x', own (k, v))."""
        q, k, v = (t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)
                   for t in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        attn = F.scaled_dot_product_attention(q, keys, values, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(attn.transpose(1, 2).flatten(2)))
        return x + self.drop(self.mlp(self.norm2(x))), (k, v)


class SmallBackbone(nn.Module):
    """[camera cells, instruction, state] prefix tokens + action tokens through `n_layers` blocks."""

    def __init__(self, config: DDVLAConfig):
        super().__init__()
        c, s = config, config.small
        d = s.dim
        self.cfg = c
        self.image_keys = c.image_keys
        self.state_keys = c.state_keys if c.state_token else []
        self.language_key = c.language_keys[0] if c.language_keys else None
        if self.image_keys:
            cin, h, w = c.input_features[self.image_keys[0]].shape
            self.crop = crop_shape(h, w, c.crop_ratio)
            self.trunk = image_trunk(s.encoder)
            fc, fh, fw = feature_map_shape(self.trunk, (cin, *(self.crop or (h, w))))
            self.image_proj = nn.Conv2d(fc, d, 1)
            self.image_pos = nn.Parameter(torch.randn(fh * fw, d) * 0.02)
            self.camera_embed = nn.Parameter(torch.zeros(len(self.image_keys), d))
        if self.language_key is not None:
            self.language = LanguageEncoder(c.language, self.language_key)
            self.language_proj = nn.Linear(c.language.embed_dim, d)
        if self.state_keys:
            state_dim = sum(math.prod(c.input_features[k].shape) for k in self.state_keys)
            self.state_in = state_mlp(state_dim, d)
        self.token_type = nn.Parameter(torch.zeros(2, d))  # instruction, state
        self.action_embed = nn.Embedding(c.bins + 1, d)
        nn.init.normal_(self.action_embed.weight, std=0.02)
        self.action_pos = nn.Parameter(torch.randn(c.num_tokens, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, s.n_heads, s.dim_feedforward, s.dropout) for _ in range(s.n_layers))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, c.bins)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Parameters of parts that may start from pretrained weights (camera trunk, text encoder)."""
        parts = [getattr(self, "trunk", None), getattr(getattr(self, "language", None), "text", None)]
        return [p for part in parts if part is not None for p in part.parameters()]

    def prefix(self, obs: dict[str, Any]) -> torch.Tensor:
        """Observation tokens (B, P, dim): camera feature-map cells, instruction, state."""
        tokens = []
        for i, key in enumerate(self.image_keys):
            img = crop_images(obs[key][:, -1], self.crop, self.training)
            img = imagenet_normalize(img) if img.shape[1] == 3 else img
            cells = self.image_proj(self.trunk(img)).flatten(2).transpose(1, 2)  # (B, h * w, d)
            tokens.append(cells + self.image_pos + self.camera_embed[i])
        if self.language_key is not None:
            tokens.append((self.language_proj(self.language(obs)) + self.token_type[0])[:, None])
        state = state_vector(obs, self.state_keys)
        if state is not None:
            tokens.append((self.state_in(state) + self.token_type[1])[:, None])
        if not tokens:
            raise ValueError("dd_vla needs at least one observation input (a camera, a state or an instruction)")
        return torch.cat(tokens, dim=1)

    def _actions(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.action_embed(tokens) + self.action_pos

    def start(self, prefix: torch.Tensor) -> Any:
        """attention="prefix": each block's prefix keys / values; "full": the prefix tokens themselves."""
        if self.cfg.small.attention == "full":
            return prefix
        cache, x = [], prefix
        for block in self.blocks:
            x, kv = block(x)
            cache.append(kv)
        return cache

    def round_logits(self, state: Any, tokens: torch.Tensor) -> torch.Tensor:
        x = self._actions(tokens)
        if self.cfg.small.attention == "full":
            n = state.shape[1]
            x = torch.cat([state, x], dim=1)
            for block in self.blocks:
                x, _ = block(x)
            x = x[:, n:]
        else:
            for block, kv in zip(self.blocks, state):
                x, _ = block(x, past=kv)
        return self.out(self.norm(x))

    def train_logits(self, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.round_logits(self.start(prefix), tokens)

    def layer_classes(self) -> set[type[nn.Module]]:
        return {Block}


# ----- vlm: a transformers vision-language model -----------------------------------------------------------
# how each supported VLM family is read: (image features, language-model attribute of the base model)
def _idefics3_images(vlm: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    # the vision transformer + connector directly: get_image_features drops all-zero images as "padding"
    hidden = vlm.vision_model(pixel_values=pixels).last_hidden_state
    return vlm.connector(hidden)


def _paligemma_images(vlm: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return vlm.get_image_features(pixel_values=pixels).pooler_output


def _qwen2_vl_images(vlm: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Square images (N, C, S, S) -> the flat patch layout of Qwen2-VL's image processor (one frame repeated
    temporal_patch_size times, merge_size x merge_size patch groups) -> merged patch features (N, n, width)."""
    v = vlm.config.vision_config
    p, m, t = v.patch_size, v.spatial_merge_size, v.temporal_patch_size
    n, c, h, w = pixels.shape
    gh, gw = h // p, w // p
    x = pixels.reshape(n, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1).reshape(n * gh * gw, c * t * p * p)
    grid = torch.tensor([[1, gh, gw]] * n, device=pixels.device)
    merged = vlm.visual(x, grid_thw=grid).pooler_output
    return merged.view(n, -1, merged.shape[-1])


VLM_FAMILIES = {
    "idefics3": (_idefics3_images, "text_model"),
    "smolvlm": (_idefics3_images, "text_model"),
    "paligemma": (_paligemma_images, "language_model"),
    # positions: one index per token (M-RoPE's three axes get the same one, as for Qwen2-VL's text tokens)
    "qwen2_vl": (_qwen2_vl_images, "language_model"),
}
DEFAULT_PIXEL_STATS = (0.5, 0.5, 0.5)  # SigLIP's pixel mean and std, for a VLM without an image processor config
# square input side when the vision config names none (Qwen2-VL takes any multiple of patch x merge: 28)
DEFAULT_IMAGE_SIZE = 224


class VLMBackbone(nn.Module):
    """Images + instruction tokens + state token as the prefix, L action embeddings appended, through the VLM's
    language model with a 4-D attention mask (causal inside the prefix, bidirectional over the actions)."""

    def __init__(self, config: DDVLAConfig):
        super().__init__()
        import transformers

        c, v = config, config.vlm
        self.cfg = c
        arch = v.pretrained_model.transformers_config()
        arch._attn_implementation = v.attn_implementation
        family = VLM_FAMILIES.get(arch.model_type)
        if family is None:
            raise PretrainedModelError(f"vlm.model {v.model!r}: model_type {arch.model_type!r} is not a supported "
                                       f"dd_vla backbone; supported: {sorted(VLM_FAMILIES)}")
        self._images, lm_attr = family
        self.vlm = transformers.AutoModel.from_config(arch, attn_implementation=v.attn_implementation)
        self._lm_attr = lm_attr
        if v.gradient_checkpointing:
            self.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        width = self.language_model.config.hidden_size
        vision = arch.vision_config
        self.image_size = v.image_size or int(getattr(vision, "image_size", DEFAULT_IMAGE_SIZE))
        unit = getattr(vision, "patch_size", 1) * getattr(vision, "spatial_merge_size", 1)
        if self.image_size % unit:
            raise PretrainedModelError(f"vlm.image_size={self.image_size}: the {arch.model_type} vision tower takes "
                                       f"multiples of {unit} pixels")
        self.image_keys = c.image_keys
        self.state_keys = c.state_keys if c.state_token else []
        self.language_key = c.language_keys[0] if c.language_keys else None
        if self.image_keys:
            _, h, w = c.input_features[self.image_keys[0]].shape
            self.crop = crop_shape(h, w, c.crop_ratio)
        if self.state_keys:
            state_dim = sum(math.prod(c.input_features[k].shape) for k in self.state_keys)
            self.state_in = state_mlp(state_dim, width)
        self.action_embed = nn.Embedding(c.bins + 1, width)
        nn.init.normal_(self.action_embed.weight, std=0.02)
        self.out = nn.Linear(width, c.bins)
        mean, std = v.image_mean or DEFAULT_PIXEL_STATS, v.image_std or DEFAULT_PIXEL_STATS
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if v.lora_rank > 0:
            try:
                from peft import LoraConfig, inject_adapter_in_model
            except ImportError:
                raise PretrainedModelError(f"vlm.lora_rank={v.lora_rank} needs peft: `pip install robopolicy[vla]` "
                                           "(or set vlm.lora_rank=0 to fine-tune every parameter)") from None

            inject_adapter_in_model(LoraConfig(r=v.lora_rank, lora_alpha=v.lora_alpha, lora_dropout=v.lora_dropout,
                                               target_modules=list(v.lora_targets)), self.vlm)
            for name, p in self.vlm.named_parameters():
                p.requires_grad_("lora_" in name)
        elif v.freeze_vision:
            for name, p in self.vlm.named_parameters():
                if not name.startswith(f"{lm_attr}."):
                    p.requires_grad_(False)

    @property
    def language_model(self) -> nn.Module:
        return getattr(self.vlm, self._lm_attr)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        return list(self.vlm.parameters())

    def load_pretrained_weights(self) -> None:
        """The named VLM's weights into the backbone (LoRA layers keep them as their base_layer)."""
        model = self.cfg.vlm.pretrained_model
        if not (model.pretrained and model.model):
            return
        try:
            source = type(self.vlm).from_pretrained(model_source(model.model)).state_dict()
        except OSError as exc:
            raise PretrainedModelError(
                f"vlm.model {model.model!r}: cannot read its weights ({' '.join(str(exc).split())[:300]}); pass a "
                "local directory with the weights, or set vlm.pretrained=false to start from random weights") from None
        target = self.vlm.state_dict()
        mapped = {k: source[k.replace(".base_layer.", ".")] for k in target if k.replace(".base_layer.", ".") in source}
        missing = [k for k in target if k not in mapped and "lora_" not in k]
        if missing:
            raise PretrainedModelError(f"vlm.model {model.model!r}: its weights lack {len(missing)} parameters of the "
                                       f"backbone (first: {missing[0]!r}); the recorded architecture and the weights "
                                       "come from different models")
        self.vlm.load_state_dict(mapped, strict=False)

    def _pixels(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> crop, resize to the tower's size, normalize."""
        img = crop_images(img, self.crop, self.training)
        if img.shape[-2:] != (self.image_size, self.image_size):
            img = F.interpolate(img, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (img - self.pixel_mean.to(img.dtype)) / self.pixel_std.to(img.dtype)

    def prefix(self, obs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"embeds": (B, P, width) input embeddings, "valid": (B, P) bool (False: instruction padding)}."""
        parts, valid = [], []
        for key in self.image_keys:
            feats = self._images(self.vlm, self._pixels(obs[key][:, -1]))  # (B, n_img, width)
            parts.append(feats)
            valid.append(torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device))
        if self.language_key is not None:
            ids = obs[f"{self.language_key}.input_ids"]
            parts.append(self.language_model.get_input_embeddings()(ids))
            valid.append(obs[f"{self.language_key}.attention_mask"].bool())
        state = state_vector(obs, self.state_keys)
        if state is not None:
            parts.append(self.state_in(state)[:, None])
            valid.append(torch.ones(state.shape[0], 1, dtype=torch.bool, device=state.device))
        if not parts:
            raise ValueError("dd_vla needs at least one observation input (a camera, a state or an instruction)")
        dtype = self.action_embed.weight.dtype
        return {"embeds": torch.cat([p.to(dtype) for p in parts], dim=1), "valid": torch.cat(valid, dim=1)}

    def _mask(self, valid: torch.Tensor, queries: int, actions: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive 4-D mask (B, 1, queries, P + actions) for the last `queries` rows of [prefix, actions]:
        prefix rows causal over valid prefix tokens, action rows see every valid prefix token and every action."""
        b, p = valid.shape
        n = p + actions
        rows = torch.arange(n - queries, n, device=valid.device)[:, None]
        cols = torch.arange(n, device=valid.device)[None]
        allowed = (cols <= rows) | (rows >= p)  # causal in the prefix; action rows see everything
        keys = torch.cat([valid, torch.ones(b, actions, dtype=torch.bool, device=valid.device)], dim=1)
        allowed = allowed[None] & keys[:, None]  # (B, queries, n)
        zero = torch.zeros((), dtype=dtype, device=valid.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]

    def _positions(self, valid: torch.Tensor, actions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids of the prefix (padding does not advance them) and of the action tokens after it."""
        prefix = (valid.long().cumsum(1) - 1).clamp_min(0)
        start = valid.long().sum(1, keepdim=True)
        return prefix, start + torch.arange(actions, device=valid.device)[None]

    def train_logits(self, prefix: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        embeds, valid = prefix["embeds"], prefix["valid"]
        p, n_act = embeds.shape[1], tokens.shape[1]
        pos_p, pos_a = self._positions(valid, n_act)
        x = torch.cat([embeds, self.action_embed(tokens)], dim=1)
        out = self.language_model(inputs_embeds=x, attention_mask=self._mask(valid, p + n_act, n_act, x.dtype),
                                  position_ids=torch.cat([pos_p, pos_a], 1), use_cache=False)
        return self.out(out.last_hidden_state[:, p:])

    def start(self, prefix: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The prefix pass: its key/value cache, reused (and cropped back to the prefix) by every round."""
        embeds, valid = prefix["embeds"], prefix["valid"]
        p = embeds.shape[1]
        pos_p, _ = self._positions(valid, 0)
        out = self.language_model(inputs_embeds=embeds, attention_mask=self._mask(valid, p, 0, embeds.dtype),
                                  position_ids=pos_p, use_cache=True)
        return {"cache": out.cache if hasattr(out, "cache") else out.past_key_values, "valid": valid}

    def round_logits(self, state: dict[str, Any], tokens: torch.Tensor) -> torch.Tensor:
        cache, valid = state["cache"], state["valid"]
        n_act = tokens.shape[1]
        x = self.action_embed(tokens)
        _, pos_a = self._positions(valid, n_act)
        out = self.language_model(inputs_embeds=x, attention_mask=self._mask(valid, n_act, n_act, x.dtype),
                                  position_ids=pos_a, cache=cache, use_cache=True)
        cache.crop(-n_act)  # drop this round's action keys / values: the next round has other tokens
        return self.out(out.last_hidden_state)

    def layer_classes(self) -> set[type[nn.Module]]:
        """The repeated blocks of the VLM (vision encoder and language-model layers): FSDP's wrapping units."""
        return {type(m[0]) for name, m in self.vlm.named_modules()
                if isinstance(m, nn.ModuleList) and name.endswith("layers") and len(m)}


def make_backbone(config: DDVLAConfig) -> nn.Module:
    return VLMBackbone(config) if config.backbone == "vlm" else SmallBackbone(config)
