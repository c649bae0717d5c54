"""Chunk executors and the observation history on hand-computed sequences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from robopolicy.runtime import (
    ObservationHistory,
    RecedingHorizon,
    TemporalEnsembler,
    make_executor,
    now_index,
)

# exp(-0.01) and exp(-0.02), the ACT weights of the 2nd and 3rd oldest predictions with m = 0.01
W1 = 0.9900498337491681
W2 = 0.9801986733067553


@dataclass(frozen=True)
class Cfg:
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    temporal_ensemble_coeff: float | None = None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1 - self.n_obs_steps + self.horizon))


def tagged_chunk(query: int, batch: int = 2, horizon: int = 16, dim: int = 3) -> torch.Tensor:
    """chunk[b, j, d] = 1000 * query + 100 * b + j + d / 10: every entry says where it came from."""
    b = torch.arange(batch).view(-1, 1, 1)
    j = torch.arange(horizon).view(1, -1, 1)
    d = torch.arange(dim).view(1, 1, -1)
    return (1000 * query + 100 * b + j + d / 10).double()


def test_now_index():
    assert now_index(range(-1, 15)) == 1  # diffusion, T_o = 2
    assert now_index(range(0, 100)) == 0  # ACT
    with pytest.raises(ValueError, match="offset 0"):
        now_index([1, 2, 3])
    with pytest.raises(ValueError, match="consecutive"):
        now_index([-1, 0, 2])


def test_receding_horizon_index_bookkeeping_diffusion_windows():
    """T_o=2, H=16, n_action_steps=8: chunk indices 1..8 (offsets 0..7) run, then a new chunk is asked for."""
    ex = make_executor(Cfg())
    assert isinstance(ex, RecedingHorizon) and ex.now == 1 and ex.n_action_steps == 8
    queried_at, executed = [], []
    for t in range(24):
        if ex.needs_chunk():
            queried_at.append(t)
            ex.push(tagged_chunk(query=len(queried_at) - 1))
        executed.append(ex.pop())
    assert queried_at == [0, 8, 16]
    for t, action in enumerate(executed):
        q, j = t // 8, 1 + t % 8  # chunk q, index j = now + steps since the query
        expected = torch.tensor(
            [[1000 * q + j + d / 10 for d in range(3)], [1000 * q + 100 + j + d / 10 for d in range(3)]]
        )
        torch.testing.assert_close(action, expected.double())


def test_receding_horizon_act_style_and_errors():
    ex = RecedingHorizon(n_action_steps=3, now=0)
    with pytest.raises(RuntimeError, match="push"):
        ex.pop()
    ex.push(tagged_chunk(0, batch=1, horizon=4, dim=1))
    assert [float(ex.pop()[0, 0]) for _ in range(3)] == [0.0, 1.0, 2.0]
    assert ex.needs_chunk()
    with pytest.raises(ValueError, match="at least 3"):
        ex.push(torch.zeros(1, 2, 1))
    with pytest.raises(ValueError, match=r"\(B, H, D\)"):
        ex.push(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="exceeds the chunk length"):
        make_executor(Cfg(horizon=8, n_action_steps=8))  # now = 1, so at most 7
    ex.reset()
    assert ex.needs_chunk()


def test_temporal_ensembling_three_steps_by_hand():
    """H=3, m=0.01, chunks pushed at t=0,1,2; env 1 predicts exact zeros, which must count as predictions."""
    ex = TemporalEnsembler(horizon=3, coeff=0.01)
    chunks = [
        torch.tensor([[[1.0], [2.0], [3.0]], [[0.0], [0.0], [0.0]]]),
        torch.tensor([[[10.0], [20.0], [30.0]], [[4.0], [4.0], [4.0]]]),
        torch.tensor([[[100.0], [200.0], [300.0]], [[8.0], [8.0], [8.0]]]),
    ]
    out = []
    for chunk in chunks:
        assert ex.needs_chunk()
        ex.push(chunk.double())
        assert not ex.needs_chunk()
        out.append(ex.pop()[:, 0])
    # t=0: only chunk 0 -> 1 | 0
    # t=1: oldest first (chunk 0 idx 1, chunk 1 idx 0):
    #      (2*1 + 10*W1) / (1 + W1) = 5.98000017 | (0 + 4*W1) / (1 + W1) = 1.99000008
    # t=2: (3*1 + 20*W1 + 100*W2) / (1 + W1 + W2) = 40.67702205 | (0 + 4*W1 + 8*W2) / (1 + W1 + W2) = 3.97333378
    expected = [[1.0, 0.0], [5.9800001666650004, 1.9900000833325], [40.677022046689004, 3.9733337777681483]]
    for got, exp in zip(out, expected):
        torch.testing.assert_close(got, torch.tensor(exp, dtype=torch.float64), rtol=0, atol=1e-9)
    assert abs((2 + 10 * W1) / (1 + W1) - expected[1][0]) < 1e-12
    # t=3 without a new chunk: chunk 0 no longer covers it; chunk 1 idx 2 (oldest) and chunk 2 idx 1
    assert ex.needs_chunk()
    torch.testing.assert_close(
        ex.pop()[:, 0], torch.tensor([(30 + 200 * W1) / (1 + W1), (4 + 8 * W1) / (1 + W1)]).double()
    )
    # t=4: only chunk 2 idx 2; t=5: nothing covers it
    torch.testing.assert_close(ex.pop()[:, 0], torch.tensor([300.0, 8.0]).double())
    with pytest.raises(RuntimeError, match="covers step 5"):
        ex.pop()


def test_temporal_ensembling_skips_past_entries_and_weights_oldest_most():
    """Diffusion-style chunk (now = 1): index 0 is the previous step and is never used."""
    ex = make_executor(Cfg(horizon=4, temporal_ensemble_coeff=1.0))
    assert isinstance(ex, TemporalEnsembler) and ex.now == 1 and ex.span == 3
    ex.push(torch.tensor([[[-99.0], [1.0], [1.0], [1.0]]]))
    assert float(ex.pop()) == 1.0
    ex.push(torch.tensor([[[-99.0], [0.0], [0.0], [0.0]]]))
    # oldest (1.0) has weight 1, newer (0.0) has exp(-1)
    assert float(ex.pop()) == pytest.approx(1 / (1 + np.exp(-1.0)))
    ex.reset()
    assert ex.needs_chunk()
    with pytest.raises(RuntimeError, match="no chunk"):
        ex.pop()


def test_temporal_ensembling_matches_act_reference_loop():
    """Against ACT's all_time_actions formulation (with a boolean populated mask) on random chunks."""
    g = torch.Generator().manual_seed(0)
    horizon, steps, dim, m = 5, 12, 2, 0.01
    chunks = [torch.randn(1, horizon, dim, generator=g, dtype=torch.float64) for _ in range(steps)]
    ex = TemporalEnsembler(horizon, m)
    table = torch.zeros(steps, steps + horizon, dim, dtype=torch.float64)
    populated = torch.zeros(steps, steps + horizon, dtype=torch.bool)
    for t in range(steps):
        ex.push(chunks[t])
        table[t, t : t + horizon] = chunks[t][0]
        populated[t, t : t + horizon] = True
        preds = table[:, t][populated[:, t]]
        w = torch.exp(-m * torch.arange(len(preds), dtype=torch.float64))
        torch.testing.assert_close(ex.pop()[0], (w[:, None] * preds).sum(0) / w.sum())


def test_make_executor_overrides():
    assert make_executor(Cfg(), n_action_steps=4).n_action_steps == 4
    ex = make_executor(Cfg(), "temporal_ensembling")
    assert isinstance(ex, TemporalEnsembler) and ex.coeff == 0.01
    assert make_executor(Cfg(temporal_ensemble_coeff=0.1), "receding_horizon").n_action_steps == 8
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor(Cfg(), "bogus")


def test_observation_history_pads_with_first_frame():
    h = ObservationHistory(3)
    h.reset({"s": np.array([[1.0], [10.0]]), "img": np.zeros((2, 3, 4, 4), np.uint8)})
    w = h.window()
    assert w["s"].shape == (2, 3, 1) and w["img"].shape == (2, 3, 3, 4, 4) and w["img"].dtype == torch.uint8
    assert w["s"][:, :, 0].tolist() == [[1.0, 1.0, 1.0], [10.0, 10.0, 10.0]]
    h.push({"s": np.array([[2.0], [20.0]]), "img": np.ones((2, 3, 4, 4), np.uint8)})
    h.push({"s": np.array([[3.0], [30.0]]), "img": np.ones((2, 3, 4, 4), np.uint8)})
    h.push({"s": np.array([[4.0], [40.0]]), "img": np.ones((2, 3, 4, 4), np.uint8)})
    assert h.window()["s"][:, :, 0].tolist() == [[2.0, 3.0, 4.0], [20.0, 30.0, 40.0]]
    with pytest.raises(KeyError, match="keys changed"):
        h.push({"s": np.array([[5.0], [50.0]])})
    with pytest.raises(ValueError, match="changed shape"):
        h.push({"s": np.zeros((2, 2)), "img": np.ones((2, 3, 4, 4), np.uint8)})
