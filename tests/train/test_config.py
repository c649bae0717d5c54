"""Training config: every invalid value is an error naming the field, the value and what is allowed."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from robopolicy.cli.main import main
from robopolicy.config_parsing import ConfigError, NormMode
from robopolicy.data.normalize import MODES
from robopolicy.policies.common.denoiser import UnetConfig
from robopolicy.policies.common.encoders import EncoderConfig
from robopolicy.policies.registry import from_plain
from robopolicy.train.config import load_config

PRESETS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return str(info.value)


@pytest.mark.parametrize(("override", "expected"), [
    ("--policy.inference_scheduler=ddin", "policy.inference_scheduler='ddin': must be one of 'ddim', 'ddpm'"),
    ("--policy.prediction_type=epsilom", "policy.prediction_type='epsilom': must be one of 'epsilon', 'sample'"),
    ("--train.amp=fp16", "train.amp='fp16': must be one of 'auto', 'bf16', 'off'"),
    ("--policy.denoiser.backbone=resnet", "policy.denoiser.backbone='resnet': must be one of 'unet', 'transformer'"),
    ("--policy.state_norm=minmax", "policy.state_norm='minmax': must be one of 'min_max', 'mean_std'"),
    ("--policy.beta_schedule=cosine", "policy.beta_schedule='cosine': must be one of 'linear'"),
])
def test_choices_name_field_value_and_choices(override, expected):
    assert expected in _error(override)


def test_close_choice_is_suggested():
    assert "did you mean 'epsilon'?" in _error("--policy.prediction_type=epsilom")


def test_float_for_int_is_an_error():
    msg = _error("--train.steps=2.7")
    assert "train.steps" in msg and "2.7" in msg and "int" in msg
    msg = _error("--policy.denoiser.unet.down_dims=[64,128.5]")
    assert "policy.denoiser.unet.down_dims[1]" in msg and "128.5" in msg and "list of int" in msg


@pytest.mark.parametrize(("override", "expected"), [
    ("--optim.lr=fast", "optim.lr: Couldn't parse 'fast' into a float"),
    ("--train.steps=true", "train.steps=True: must be int"),
    ("--train.steps=null", "train.steps=None: must be int (this field cannot be null)"),
    ("--data.input_keys=state", "data.input_keys='state': must be a list of str or null"),
    ("--data.uri=[a]", "data.uri=['a']: must be str"),
    ("--optim.betas=[0.9]", "optim.betas: Expected 2 items, got 1"),
    ("--train=5", "train=5: must be a mapping of TrainLoopConfig fields"),
])
def test_wrong_types(override, expected):
    assert expected in _error(override)


def test_bools_are_true_or_false_only():
    assert load_config(None, ["--train.overwrite=true"]).train.overwrite is True
    assert load_config(None, ["--train.tensorboard=false"]).train.tensorboard is False
    assert "train.overwrite: Couldn't parse 'yes' into a bool" in _error("--train.overwrite=yes")
    with pytest.raises(ConfigError, match="pretrained: Couldn't parse 'yes' into a bool"):
        from_plain(EncoderConfig, {"pretrained": "yes"})
    # YAML 1.1 would read `off` as false; here it stays the string the amp choices expect
    assert load_config(None, ["--train.amp=off"]).train.amp == "off"


def test_unknown_keys_at_every_level():
    assert "unknown config fields trian (did you mean 'train'?)" in _error("--trian.steps=3")
    msg = _error("--train.stepz=3")
    assert "unknown config fields train.stepz (did you mean 'steps'?)" in msg and "train has: steps, " in msg
    msg = _error("--policy.denoiser.unet.down_dimz=[64]")
    assert "policy.denoiser.unet.down_dimz (did you mean 'down_dims'?)" in msg
    assert "policy.type='dif': must be one of 'act', 'dd_vla', 'diffusion', 'flow'" in _error("--policy.type=dif")
    assert "policy.input_features: comes from the dataset" in _error("--policy.input_features={}")


@pytest.mark.parametrize(("overrides", "expected"), [
    (["--train.steps=0"], "train.steps=0: must be >= 1"),
    (["--train.batch_size=0"], "train.batch_size=0: must be >= 1"),
    (["--optim.lr=0"], "optim.lr=0.0: must be > 0"),
    (["--train.ema_power=-1"], "train.ema_power=-1.0: must be >= 0"),
    (["--policy.horizon=0"], "policy.horizon=0: must be >= 1"),
    (["--policy.num_inference_steps=0"], "policy.num_inference_steps=0: must be >= 1"),
    (["--policy.n_action_steps=16"], "policy.n_action_steps=16: must be <= horizon - n_obs_steps + 1 (15)"),
    (["--policy.horizon=10"], "policy.horizon=10: must be divisible by 4"),
    (["--policy.type=act", "--policy.dropout=1.0"], "policy.dropout=1.0: must be in [0, 1)"),
    (["--policy.type=act", "--policy.horizon=20"], "policy.n_action_steps=100: must be in [1, horizon] ([1, 20])"),
    (["--policy.denoiser.unet.down_dims=[60,128]"], "policy.denoiser.unet.down_dims=(60, 128): must be divisible"),
    (["--train.eval_every=5"], "train.eval_every=5: needs eval.env"),
])
def test_ranges(overrides, expected):
    assert expected in _error(*overrides)


def test_from_plain_validates_head_configs():
    with pytest.raises(ConfigError, match=r"kernel_size=4: must be odd and >= 1"):
        from_plain(UnetConfig, {"kernel_size": 4})
    with pytest.raises(ConfigError, match=r"down_dims\[0\]: Couldn't parse 'x' into an int"):
        from_plain(UnetConfig, {"down_dims": ["x"]})
    assert from_plain(UnetConfig, {"down_dims": (32, 64)}).down_dims == (32, 64)


def test_norm_modes_match_the_normalizer():
    assert typing.get_args(NormMode) == MODES


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    head = cfg.policy_config()
    assert head.name == cfg.policy["type"] and cfg.train.steps >= 1


def test_dotted_override_of_a_nested_tuple():
    preset = next(p for p in PRESETS if p.stem == "diffusion_lift_lowdim")
    cfg = load_config(preset, ["--policy.denoiser.unet.down_dims=[32,64,128]", "--data.episodes=[0,2]"])
    assert cfg.policy_config().denoiser.unet.down_dims == (32, 64, 128)
    assert cfg.policy_config().denoiser.unet.step_embed_dim == 64  # the preset's sibling field is kept
    assert cfg.data.episodes == (0, 2)


def test_preset_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: {type: diffusion, inference_scheduler: ddin}\n")
    with pytest.raises(ConfigError, match="policy.inference_scheduler='ddin'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read the preset"):
        load_config(tmp_path / "missing.yaml")


def test_help_lists_fields_with_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "--train.steps=1000" in out and "optimizer steps" in out
    assert "--train.amp=auto" in out and "one of 'auto', 'bf16', 'off'" in out
    # a choice field keeps its description (draccus' comment parser skips annotations with quotes)
    assert "one of 'unet', 'transformer': the conditional network" in " ".join(out.split())
    assert "--policy.language.encoder=" in out and "learned embedding per training task" in out
    assert "--data.uri=" in out and "--optim.lr=0.0001" in out and "--eval.episodes=10" in out
    assert "--policy.denoiser.unet.down_dims=[256,512,1024]" in out and "--policy.inference_scheduler=ddim" in out
    with pytest.raises(SystemExit):
        main(["train", "--policy.type=act", "--help"])
    out = capsys.readouterr().out
    assert "--policy.kl_weight=10.0" in out and "inference_scheduler" not in out


def test_cli_invalid_value_exits_2_without_traceback(capsys):
    preset = next(p for p in PRESETS if p.stem == "diffusion_lift_lowdim")
    assert main(["train", "--config", str(preset), "--train.steps=2.7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robopolicy train: error: train.steps") and "Traceback" not in err
    assert main(["train", "--policy.type=act", "--policy.horizon=0"]) == 2
    assert "policy.horizon=0: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, expected", [
    (["--train.fsdp=true"], "train.ema_power=0.75: must be 0 with fsdp=true"),
    (["--train.fsdp=true", "--train.ema_power=0", "--train.eval_every=10"], "train.eval_every=10: must be 0 with fsdp"),
])
def test_fsdp_refuses_what_cannot_be_sharded(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_config(None, overrides)


def test_fsdp_in_one_process_is_one_clear_line(pusht_zarr, tmp_path, capsys):
    code = main(["train", f"--data.uri={pusht_zarr}", "--data.input_keys=[state]", "--train.fsdp=true",
                 "--train.ema_power=0", f"--train.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "this run has one; launch several" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()
