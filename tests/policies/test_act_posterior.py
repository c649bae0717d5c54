"""ACT's posterior computes only the CLS token in its last encoder layer: same result as the full layer stack."""

from __future__ import annotations

import pytest
import torch

from robopolicy.policies.act.configuration import ACTConfig
from robopolicy.policies.act.modeling import ACTHead, first_token_output
from robopolicy.policies.base import FeatureSpec


def _head(dropout: float, decoder_layers: int = 1, dim: int = 32) -> ACTHead:
    cfg = ACTConfig(
        input_features={"state": FeatureSpec((5,), "state")}, output_features={"action": FeatureSpec((2,), "action")},
        horizon=12, n_action_steps=12, dim_model=dim, n_heads=4, dim_feedforward=2 * dim, n_encoder_layers=2,
        n_vae_encoder_layers=3, n_decoder_layers=decoder_layers, latent_dim=8, dropout=dropout,
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


def _dense_reference_loss(head: ACTHead, batch: dict[str, torch.Tensor], eps: torch.Tensor) -> torch.Tensor:
    """ACT's loss written with torch's modules on the full padded layout (every token computed)."""
    state, actions, pad = batch["state"][:, -1], batch["action"], batch["action_is_pad"]
    b = actions.shape[0]
    tokens = torch.cat([head.vae_cls.expand(b, -1, -1), head.vae_state_in(state)[:, None],
                        head.vae_action_in(actions)], 1)
    tokens = tokens + head.vae_pos[: tokens.shape[1]]
    mask = torch.cat([torch.zeros(b, 2, dtype=torch.bool), pad], 1)
    mu, logvar = head.vae_out(head.vae_encoder(tokens, src_key_padding_mask=mask)[:, 0]).chunk(2, dim=-1)
    z = mu + eps * (0.5 * logvar).exp()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
    memory = head.encoder(head._tokens(batch, z))
    pred = head.action_out(head.decoder(head.queries.expand(b, -1, -1), memory))
    l1 = (pred - actions).abs().mean(-1) * (~pad).float()
    return (l1 + head.config.kl_weight * kl[:, None]).mean()


@pytest.mark.parametrize(("decoder_layers", "dim"), [(1, 32), (2, 32), (1, 512)])  # 512: oneDNN-size linears
def test_training_skips_padded_actions_with_the_same_loss_and_gradients(decoder_layers, dim):
    torch.manual_seed(0)
    head = _head(dropout=0.0, decoder_layers=decoder_layers, dim=dim).train()
    batch = {"state": torch.randn(4, 1, 5), "action": torch.randn(4, 12, 2),
             "action_is_pad": torch.zeros(4, 12, dtype=torch.bool)}
    batch["action_is_pad"][1, 7:] = True
    batch["action_is_pad"][3, 2:] = True  # 13 of 48 action tokens padded: never computed
    torch.manual_seed(5)
    ours = head.loss(batch).loss
    grads = torch.autograd.grad(ours, list(head.parameters()), allow_unused=True)
    torch.manual_seed(5)
    eps = torch.randn(4, head.config.latent_dim)  # the same reparameterization noise as loss() drew
    ref = _dense_reference_loss(head, batch, eps)
    ref_grads = torch.autograd.grad(ref, list(head.parameters()), allow_unused=True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for (name, _), g, r in zip(head.named_parameters(), grads, ref_grads):
        if r is None:
            assert g is None or g.abs().max() == 0, name
        else:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=name)


def test_ragged_attention_with_weight_dropout_matches_torch_when_the_mask_keeps_everything(monkeypatch):
    """The training branch (explicit softmax + dropout on the attention weights) is nn.MultiheadAttention's math."""
    from robopolicy.policies.common import ragged

    torch.manual_seed(2)
    mha = torch.nn.MultiheadAttention(16, 4, dropout=0.5, batch_first=True).train()
    x = torch.randn(3, 6, 16)
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[0, 4:] = False
    layout = ragged.Ragged.from_valid(valid)
    monkeypatch.setattr(ragged, "dropout", lambda t, p, training: t)  # keep every weight: comparable to eval
    rows = layout.pack(x)
    ours = ragged.attention(mha, rows, rows, layout, layout)
    ref = mha.eval()(x, x, x, key_padding_mask=~valid, need_weights=False)[0]
    torch.testing.assert_close(ours, layout.pack(ref), rtol=1e-5, atol=1e-5)
