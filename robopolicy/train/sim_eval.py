"""Periodic evaluation in simulation during training, as a trainer callback built by `robopolicy train`
(the trainer itself imports no simulator)."""

from __future__ import annotations

from robopolicy.policies.common import prepacked
from robopolicy.train.callbacks import Every
from robopolicy.train.config import EvalConfig


def sim_eval_callback(eval_cfg: EvalConfig, every: int) -> Every:
    """Every `every` steps (and at the end) evaluate the EMA weights (live ones without EMA) on `eval_cfg.env`,
    writing <run>/eval/step_NNNNNN/ and logging eval/pc_success (+ eval/avg_max_coverage)."""
    from robopolicy.sim.evaluate import evaluate

    def run(trainer, step: int) -> None:
        policy, ema = trainer.policy, trainer.ema
        live = {k: v.clone() for k, v in policy.head.state_dict().items()}
        if ema is not None:
            policy.head.load_state_dict(ema.state_dict())
        policy.eval()
        try:
            result = evaluate(
                policy, eval_cfg.env, n_episodes=eval_cfg.episodes, seed=eval_cfg.seed,
                out_dir=trainer.run_dir / "eval" / f"step_{step:06d}", n_envs=eval_cfg.n_envs,
                max_steps=eval_cfg.max_steps, video_episodes=eval_cfg.videos, overwrite=True, progress=False,
            )
            scalars = {"eval/pc_success": result.pc_success}
            if result.avg_max_coverage is not None:
                scalars["eval/avg_max_coverage"] = result.avg_max_coverage
            trainer.log_scalars(step, scalars)
        finally:
            policy.head.load_state_dict(live)
            policy.train()
            prepacked.release(policy.head)  # the packed inference copies would sit unused through training

    return Every(every, run)
