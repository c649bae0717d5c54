"""Action tokens and masked parallel decoding (docs/algorithms.md sections 5 and 9: mechanism tests)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from robopolicy.policies.common.action_tokenizer import ActionTokenizer
from robopolicy.policies.common.masked_decoding import (
    DecodeConfig,
    committed_after,
    decode,
    sample_training_mask,
)

# ----- tokenizer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [2, 7, 256])
def test_round_trip_error_is_at_most_half_a_bin(bins):
    tok = ActionTokenizer(6, bins=bins)
    x = torch.rand(4000, 6, generator=torch.Generator().manual_seed(bins)) * 2 - 1
    x[:6, :] = torch.tensor([-1.0, 1.0, 0.0, 1 - 1e-7, -1 + 1e-7, 2.0 / bins - 1]).reshape(6, 1)
    tokens = tok.encode(x)
    assert tokens.dtype == torch.long and int(tokens.min()) >= 0 and int(tokens.max()) <= bins - 1
    err = (tok.decode(tokens) - x).abs().max().item()
    assert err <= tok.max_error + 1e-6
    assert err >= 0.9 * tok.max_error  # the bound is tight: a bin edge is one half-bin from its centre


def test_out_of_range_actions_are_clipped_and_the_gripper_is_binary():
    tok = ActionTokenizer(3, bins=256, gripper_dims=[-1])
    x = torch.tensor([[-3.0, 5.0, 0.2], [0.0, -0.5, -0.9], [0.999, 1.0, 0.0]])
    tokens = tok.encode(x)
    assert tokens[:, 2].tolist() == [255, 0, 0]  # > 0 is open
    assert tokens[0, :2].tolist() == [0, 255]
    out = tok.decode(tokens)
    assert out[:, 2].tolist() == [1.0, -1.0, -1.0]
    assert torch.allclose(out[0, :2], torch.tensor([-1 + 1 / 256, 1 - 1 / 256]))
    assert tok.vocab_size == 257 and tok.mask_token == 256


def test_tokenizer_refuses_masks_and_wrong_widths():
    tok = ActionTokenizer(2, bins=16)
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        tok.decode(torch.tensor([[3, 16]]))
    with pytest.raises(ValueError, match="3 dimensions"):
        tok.encode(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="gripper_dims"):
        ActionTokenizer(2, gripper_dims=[2])


def test_tokenizer_follows_the_input_dtype_and_device():
    tok = ActionTokenizer(2, bins=16, gripper_dims=[1])
    tokens = tok.encode(torch.zeros(3, 2, dtype=torch.bfloat16))
    assert tokens.device == torch.device("cpu")
    assert tok.decode(tokens, dtype=torch.float64).dtype == torch.float64


# ----- training masks ----------------------------------------------------------------------------------------


def test_training_masks_follow_the_cosine_schedule():
    length = 56
    mask = sample_training_mask(20000, length, generator=torch.Generator().manual_seed(0))
    counts = mask.sum(1).float()
    assert int(counts.min()) >= 1 and int(counts.max()) == length
    # E[ceil(gamma L)] with gamma = cos(pi r / 2), r ~ U[0, 1): about 2L/pi + 1/2
    assert abs(counts.mean().item() - (2 * length / math.pi + 0.5)) < 0.5
    # ratios the decoder visits (every committed_after step) all occur in training
    seen = set(counts.long().tolist())
    masked_at_rounds = {length - c for c in committed_after(length, 12)[:-1]}
    assert masked_at_rounds <= seen
    # positions are chosen uniformly
    per_position = mask.float().mean(0)
    assert (per_position - per_position.mean()).abs().max() < 0.03


# ----- decoding ----------------------------------------------------------------------------------------------


def test_committed_counts_follow_the_schedule_and_end_complete():
    assert committed_after(56, 12)[-1] == 56
    steps = committed_after(56, 12)
    assert steps == sorted(steps) and steps[0] >= 1
    assert committed_after(56, 1) == [56]


def _oracle(target: torch.Tensor, vocab: int, sharpness: torch.Tensor, calls: list[int]):
    """Logits peaked at `target`, sharper where `sharpness` is higher (easy positions)."""

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        logits = torch.zeros(*target.shape, vocab)
        logits.scatter_(-1, target[..., None], sharpness[..., None].expand_as(target[..., None]).clone())
        return logits

    return fn


@pytest.mark.parametrize("rounds", [1, 4, 12])
@pytest.mark.parametrize("order", ["max_confidence", "confidence_gap"])
def test_decoding_recovers_a_confident_target_in_exactly_T_calls(rounds, order):
    vocab, length = 257, 56
    target = torch.randint(0, 256, (3, length), generator=torch.Generator().manual_seed(1))
    calls, seen = [], []
    out = decode(
        _oracle(target, vocab, torch.full((3, length), 30.0), calls),
        3,
        length,
        mask_token=256,
        config=DecodeConfig(rounds=rounds, order=order),
        generator=torch.Generator().manual_seed(2),
        on_round=lambda t, tok: seen.append(int((tok != 256).sum(1).min())),
    )
    assert len(calls) == rounds  # NFE = T
    assert torch.equal(out, target)
    assert seen == committed_after(length, rounds)  # committed count after every round


def test_easy_tokens_commit_first():
    length = 8
    target = torch.arange(length)[None]
    sharp = torch.linspace(1.0, 12.0, length)[None]  # the last positions are the most confident
    first = {}
    decode(
        _oracle(target, 17, sharp, []),
        1,
        length,
        mask_token=16,
        config=DecodeConfig(rounds=4),
        generator=torch.Generator().manual_seed(0),
        on_round=lambda t, tok: first.setdefault(t, (tok[0] != 16).nonzero().ravel().tolist()),
    )
    committed_round_1 = first[1]
    assert committed_round_1 and min(committed_round_1) >= length - len(committed_round_1)


REMASKING = [
    DecodeConfig(rounds=6, remask_threshold=(0.5, 0.99)),
    DecodeConfig(rounds=6, residual_drop=0.0),
    DecodeConfig(rounds=6, remask_threshold=(1.1, 1.1), residual_drop=0.0),  # re-mask everything, every round
]


@pytest.mark.parametrize("config", REMASKING)
def test_remasking_never_leaves_a_position_masked_at_the_end(config):
    """Posteriors that change every call (so committed tokens lose confidence and are re-masked)."""
    gen = torch.Generator().manual_seed(3)
    remasked = []

    def noisy(tokens):
        return torch.randn(*tokens.shape, 33, generator=gen) * 3

    previous = [None]

    def watch(t, tokens):
        if previous[0] is not None:
            remasked.append(int(((previous[0] != 32) & (tokens == 32)).sum()))
        previous[0] = tokens.clone()

    out = decode(noisy, 4, 20, mask_token=32, config=config, generator=gen, on_round=watch)
    assert int((out == 32).sum()) == 0 and int(out.max()) < 32
    assert sum(remasked) > 0  # re-masking happened along the way


def test_decoding_without_remasking_never_changes_a_committed_token():
    gen = torch.Generator().manual_seed(4)
    history = []
    decode(
        lambda tok: torch.randn(*tok.shape, 9, generator=gen),
        2,
        16,
        mask_token=8,
        config=DecodeConfig(rounds=5),
        generator=gen,
        on_round=lambda t, tok: history.append(tok.clone()),
    )
    for before, after in itertools.pairwise(history):
        kept = before != 8
        assert torch.equal(after[kept], before[kept])


@pytest.mark.parametrize("remask", [True, False])
def test_the_maskgit_reference_variant_recovers_a_confident_target_and_ends_complete(remask):
    vocab, length = 257, 24
    target = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(5))
    calls, masked = [], []
    out = decode(
        _oracle(target, vocab, torch.full((2, length), 40.0), calls),
        2,
        length,
        mask_token=256,
        config=DecodeConfig(rounds=6, variant="maskgit", maskgit_remask=remask),
        generator=torch.Generator().manual_seed(6),
        on_round=lambda t, tok: masked.append(int((tok == 256).sum(1).max())),
    )
    assert len(calls) == 6 and torch.equal(out, target)
    assert masked[-1] == 0 and all(m >= 1 for m in masked[:-1])  # clamped to [1, L - 1] before the last round
    assert masked[:-1] == [max(1, math.floor(length * math.cos(math.pi * t / 12))) for t in range(1, 6)]
