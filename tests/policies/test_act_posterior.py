"""ACT's posterior computes only the CLS token in its last encoder layer: same result as the full layer stack."""

from __future__ import annotations

import pytest
import torch

from robopolicy.policies.act.configuration import ACTConfig
from robopolicy.policies.act.modeling import ACTHead, first_token_output
from robopolicy.policies.base import FeatureSpec


def _head(dropout: float) -> ACTHead:
    cfg = ACTConfig(
        input_features={"state": FeatureSpec((5,), "state")}, output_features={"action": FeatureSpec((2,), "action")},
        horizon=12, dim_model=32, n_heads=4, dim_feedforward=64, n_encoder_layers=2, n_vae_encoder_layers=3,
        latent_dim=8, dropout=dropout,
    )
    return ACTHead(cfg)


@pytest.mark.parametrize("train_mode", [False, True])
def test_posterior_equals_the_full_vae_encoder_cls_output(train_mode):
    torch.manual_seed(0)
    head = _head(dropout=0.0).train(train_mode)
    state, actions = torch.randn(3, 5), torch.randn(3, 12, 2)
    pad = torch.zeros(3, 12, dtype=torch.bool)
    pad[1, 8:] = True  # an episode end: padded actions are masked out of the attention
    mu, logvar = head._posterior(state, actions, pad)
    lead = [head.vae_cls.expand(3, -1, -1), head.vae_state_in(state)[:, None]]
    tokens = torch.cat([*lead, head.vae_action_in(actions)], 1)
    tokens = tokens + head.vae_pos[: tokens.shape[1]]
    mask = torch.cat([torch.zeros(3, 2, dtype=torch.bool), pad], 1)
    full = head.vae_encoder(tokens, src_key_padding_mask=mask)[:, 0]
    ref_mu, ref_logvar = head.vae_out(full).chunk(2, dim=-1)
    torch.testing.assert_close(mu, ref_mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar, ref_logvar, rtol=1e-5, atol=1e-5)


def test_first_token_output_matches_one_layer_and_refuses_pre_norm():
    torch.manual_seed(1)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True).eval()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(first_token_output(layer, x, None), layer(x)[:, 0], rtol=1e-5, atol=1e-5)
    pre = torch.nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True, norm_first=True)
    with pytest.raises(ValueError, match="post-norm"):
        first_token_output(pre, x, None)
