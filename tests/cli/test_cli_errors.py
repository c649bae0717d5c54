"""Commands fail clearly: every damaged checkpoint, config, dataset or option is one line on stderr,
`robopolicy <cmd>: error: <message naming the file / field / key>`, exit 2 (1 for internal errors), no traceback;
`--debug` (or ROBOPOLICY_DEBUG=1) adds the traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robopolicy.cli import main as cli_main
from robopolicy.cli.main import main

STEP = "step_000002"
TINY = [
    "--policy.type=diffusion",
    "--policy.denoiser.unet.down_dims=[32,64]",
    "--policy.denoiser.unet.step_embed_dim=32",
    "--data.input_keys=[state]",
    "--data.episodes=[0,1]",
    "--train.batch_size=8",
    "--train.log_every=1",
    "--train.tensorboard=false",
    "--train.progress=false",
    "--optim.warmup_steps=1",
]


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit code and the non-empty stderr lines of `robopolicy ARGV` run in this process."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def assert_one_line(rc: int, lines: list[str], command: str, *names: str, code: int = 2) -> str:
    """rc is `code`, stderr is exactly one `robopolicy <command>: error:` line without a traceback, naming `names`."""
    assert rc == code, lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"robopolicy {command}: error: "), line
    assert "Traceback" not in line
    for name in names:
        assert str(name) in line, (name, line)
    return line


@pytest.fixture(scope="module")
def trained_run(pusht_zarr, tmp_path_factory) -> Path:
    """A 2-step training run of a tiny diffusion head (checkpoints/step_000002 + last), built once."""
    run = tmp_path_factory.mktemp("cli_errors") / "run"
    rc = main(["train", *TINY, f"--data.uri={pusht_zarr}", "--train.steps=2", f"--train.output_dir={run}"])
    assert rc == 0 and (run / "checkpoints" / STEP / "model.safetensors").exists()
    return run


@pytest.fixture()
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained run to damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def eval_argv(checkpoint: Path, tmp_path: Path) -> list[str]:
    return ["eval", "--checkpoint", checkpoint, "--env", "pusht", "--episodes", "1", "--videos", "0",
            "--out", tmp_path / "eval_out", "--no-progress"]


# ----- model.safetensors: truncated, random bytes, NaN data ------------------------------------------------------
def _truncate(n: int | float):
    def damage(path: Path) -> None:
        data = path.read_bytes()
        size = int(len(data) * n) if isinstance(n, float) else n
        path.write_bytes(data[:size])
    return damage


def _random(n: int | None):
    def damage(path: Path) -> None:
        size = path.stat().st_size if n is None else n
        path.write_bytes(np.random.default_rng(size).bytes(size))
    return damage


def _nan_data(path: Path) -> None:
    """Header intact, every tensor byte 0xFF (NaN floats): a damaged file that still parses."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header:] = b"\xff" * (len(data) - header)
    path.write_bytes(bytes(data))


WEIGHT_DAMAGE = {
    "truncated to 0 bytes": _truncate(0),
    "truncated to 7 bytes": _truncate(7),
    "truncated to 8 bytes": _truncate(8),
    "truncated to 100 bytes": _truncate(100),
    "truncated to half": _truncate(0.5),
    "truncated by one byte": _truncate(0.999999),
    "64 random bytes": _random(64),
    "random bytes of the same size": _random(None),
    "tensor data NaN": _nan_data,
}


@pytest.mark.parametrize("damage", list(WEIGHT_DAMAGE))
def test_damaged_weights_name_the_file(damage, run_copy, tmp_path, capsys):
    ckpt = run_copy / "checkpoints" / STEP
    WEIGHT_DAMAGE[damage](ckpt / "model.safetensors")
    rc, lines = run_cli(eval_argv(ckpt, tmp_path), capsys)
    line = assert_one_line(rc, lines, "eval", ckpt / "model.safetensors")
    assert ("corrupt" in line or "NaN" in line) and "pick another one" in line


# ----- config.json: not JSON, not an object, wrong types, unknown fields -------------------------------------------
def _config_edit(edit):
    def damage(path: Path) -> None:
        path.write_text(edit(path.read_text()))
    return damage


def _field(name: str, value):
    return _config_edit(lambda text: json.dumps({**json.loads(text), name: value}))


CONFIG_DAMAGE = {  # damage -> (edit, words the error line must hold)
    "truncated JSON": (_config_edit(lambda t: t[: len(t) // 2]), ["not valid JSON"]),
    "empty file": (_config_edit(lambda t: ""), ["not valid JSON"]),
    "a JSON list": (_config_edit(lambda t: "[1, 2]"), ["JSON object"]),
    "no type": (_config_edit(lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "type"})),
                ["'type'", "missing"]),
    "unknown type": (_field("type", "difusion"), ["'type'", "difusion"]),
    "type not a string": (_field("type", 3), ["'type'"]),
    "unknown field": (_field("horizonn", 3), ["horizonn", "did you mean 'horizon'"]),
    "horizon a string": (_field("horizon", "abc"), ["horizon", "int"]),
    "horizon a list": (_field("horizon", [1]), ["horizon", "int"]),
    "n_obs_steps a float": (_field("n_obs_steps", 1.5), ["n_obs_steps", "int"]),
    "input_features a string": (_field("input_features", "state"), ["input_features", "mapping"]),
    "denoiser a number": (_field("denoiser", 3), ["denoiser", "mapping"]),
    "state_norm null": (_field("state_norm", None), ["state_norm"]),
}


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_damaged_config_names_the_file_and_field(damage, run_copy, tmp_path, capsys):
    ckpt = run_copy / "checkpoints" / STEP
    edit, words = CONFIG_DAMAGE[damage]
    edit(ckpt / "config.json")
    rc, lines = run_cli(eval_argv(ckpt, tmp_path), capsys)
    assert_one_line(rc, lines, "eval", ckpt / "config.json", *words)


def test_wrong_config_value_is_a_config_error_from_policy_load(run_copy):
    from robopolicy.config_parsing import ConfigError
    from robopolicy.policies.policy import Policy

    ckpt = run_copy / "checkpoints" / STEP
    _field("horizon", "abc")(ckpt / "config.json")
    with pytest.raises(ConfigError, match=r"config\.json: horizon"):
        Policy.load(ckpt)


# ----- state dict of another size --------------------------------------------------------------------------------
def _edit_config_dims(ckpt: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["denoiser"]["unet"]["down_dims"] = [16, 32]
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _other_size_weights(ckpt: Path) -> None:
    """model.safetensors of a head with other down_dims (config.json and train_config.json untouched)."""
    from robopolicy.policies.registry import config_from_dict, make_head

    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["denoiser"]["unet"]["down_dims"] = [16, 32]
    save_file({k: v.contiguous() for k, v in make_head(config_from_dict(cfg)).state_dict().items()},
              str(ckpt / "model.safetensors"))


def _weights_edit(edit):
    def damage(ckpt: Path) -> None:
        weights = load_file(str(ckpt / "model.safetensors"))
        edit(weights)
        save_file(weights, str(ckpt / "model.safetensors"))
    return damage


FIRST = "model.net.down.0.0.conv1.0.weight"
SHAPE_DAMAGE = {  # damage -> (edit, words the error line must hold)
    "config.json down_dims edited": (_edit_config_dims, [
        f"'{FIRST}' has shape (32, 2, 5) in the file but (16, 2, 5) in the head",
        "train_config.json: set denoiser.unet.down_dims=[32, 64] (config.json has [16, 32])"]),
    "weights of another head size": (_other_size_weights, [
        f"'{FIRST}' has shape (16, 2, 5) in the file but (32, 2, 5) in the head", "different runs"]),
    "a parameter missing": (_weights_edit(lambda w: w.pop(FIRST)), ["1 parameter(s) missing", FIRST]),
    "an unexpected parameter": (_weights_edit(lambda w: w.__setitem__("extra.weight", torch.zeros(2))),
                                ["unexpected", "extra.weight"]),
    "one parameter reshaped": (_weights_edit(lambda w: w.__setitem__(FIRST, torch.zeros(3, 3))),
                               [f"'{FIRST}' has shape (3, 3) in the file but (32, 2, 5)"]),
    "a parameter of integer type": (_weights_edit(lambda w: w.__setitem__(FIRST, w[FIRST].to(torch.int64))),
                                    [FIRST, "torch.int64"]),
}


@pytest.mark.parametrize("damage", list(SHAPE_DAMAGE))
def test_state_dict_mismatch_names_parameter_shapes_and_fix(damage, run_copy, tmp_path, capsys):
    ckpt = run_copy / "checkpoints" / STEP
    edit, words = SHAPE_DAMAGE[damage]
    edit(ckpt)
    rc, lines = run_cli(eval_argv(ckpt, tmp_path), capsys)
    assert_one_line(rc, lines, "eval", ckpt / "model.safetensors", "does not fit", *words)


# ----- stats.json and processor.json ----------------------------------------------------------------------------
def _stats(edit):
    def damage(ckpt: Path) -> None:
        path = ckpt / "stats.json"
        path.write_text(edit(json.loads(path.read_text()), path.read_text()))
    return damage


SIDE_FILE_DAMAGE = {  # damage -> (edit, file named, words)
    "stats.json missing": (lambda c: (c / "stats.json").unlink(), "stats.json", ["missing"]),
    "stats.json truncated": (_stats(lambda d, t: t[: len(t) // 3]), "stats.json", ["not valid JSON"]),
    "stats.json a list": (_stats(lambda d, t: "[]"), "stats.json", ["corrupt normalizer stats"]),
    "stats.json without stats": (_stats(lambda d, t: json.dumps({"modes": d["modes"]})), "stats.json",
                                 ["'stats'"]),
    "stats.json strings": (_stats(lambda d, t: json.dumps(
        {**d, "stats": {k: {s: "x" for s in v} for k, v in d["stats"].items()}})), "stats.json", ["corrupt"]),
    "stats.json NaN": (_stats(lambda d, t: re.sub(r"\[[-0-9.e]+,", "[NaN,", t, count=1)), "stats.json", ["finite"]),
    "stats.json unknown mode": (_stats(lambda d, t: json.dumps({**d, "modes": {k: "bogus" for k in d["modes"]}})),
                                "stats.json", ["bogus"]),
    "stats.json other key": (_stats(lambda d, t: t.replace('"state"', '"other"')), "stats.json", ["'state'"]),
    "processor.json truncated": (lambda c: (c / "processor.json").write_text('{"steps": [{"kind"'),
                                 "processor.json", ["not a processor file"]),
    "processor.json steps not a list": (lambda c: (c / "processor.json").write_text('{"steps": 3}'),
                                        "processor.json", ["'steps' must be a list"]),
    "processor.json step not a mapping": (lambda c: (c / "processor.json").write_text('{"steps": [3]}'),
                                          "processor.json", ["step 0"]),
    "processor.json unknown kind": (lambda c: (c / "processor.json").write_text(
        '{"steps": [{"kind": "nope", "state": {}, "files": "processor/0_nope"}]}'), "processor.json", ["'nope'"]),
}


@pytest.mark.parametrize("damage", list(SIDE_FILE_DAMAGE))
def test_damaged_stats_and_processor_files_are_named(damage, run_copy, tmp_path, capsys):
    ckpt = run_copy / "checkpoints" / STEP
    edit, name, words = SIDE_FILE_DAMAGE[damage]
    edit(ckpt)
    rc, lines = run_cli(eval_argv(ckpt, tmp_path), capsys)
    assert_one_line(rc, lines, "eval", name, *words)


# ----- the checkpoint directory and its `last` pointer ---------------------------------------------------------
DIR_DAMAGE = {  # damage -> (make the path, words)
    "no such directory": (lambda run: run / "nothing_here", ["no such directory"]),
    "a file": (lambda run: _write(run / "a_file", "x"), ["is a file"]),
    "an empty directory": (lambda run: _mkdir(run / "empty"), ["config.json is missing"]),
    "run without last": (lambda run: _unlink(run / "checkpoints" / "last", run), ["no `last` pointer", STEP]),
    "last names a missing step": (lambda run: _write(run / "checkpoints" / "last", "step_999999", run),
                                  ["step_999999", "does not exist", STEP]),
    "last empty": (lambda run: _write(run / "checkpoints" / "last", "", run), ["should name a step directory"]),
    "last binary": (lambda run: _write_bytes(run / "checkpoints" / "last", b"\xff\xfe", run), ["unreadable"]),
}


def _write(path: Path, text: str, result: Path | None = None) -> Path:
    path.write_text(text)
    return result or path


def _write_bytes(path: Path, data: bytes, result: Path) -> Path:
    path.write_bytes(data)
    return result


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _unlink(path: Path, result: Path) -> Path:
    path.unlink()
    return result


@pytest.mark.parametrize("damage", list(DIR_DAMAGE))
def test_bad_checkpoint_directory_is_named(damage, run_copy, tmp_path, capsys):
    make, words = DIR_DAMAGE[damage]
    target = make(run_copy)
    rc, lines = run_cli(eval_argv(target, tmp_path), capsys)
    assert_one_line(rc, lines, "eval", target, *words)


# ----- resume on a damaged checkpoint ---------------------------------------------------------------------------
def _resume_file(rel: str, edit):
    def damage(run: Path) -> None:
        edit(run / "checkpoints" / STEP / rel)
    return damage


def _state_json(edit):
    def damage(path: Path) -> None:
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return damage


def _other_shape_module(path: Path) -> None:
    weights = load_file(str(path))
    weights[sorted(weights)[-1]] = torch.zeros(7)
    save_file(weights, str(path))


RESUME_DAMAGE = {  # damage -> (edit of the run, file named, words)
    "state.json truncated": (_resume_file("train_state/state.json", _truncate(0.5)), "state.json", ["JSON"]),
    "state.json a list": (_resume_file("train_state/state.json", _config_edit(lambda t: "[]")), "state.json",
                          ["cannot be resumed"]),
    "state.json without step": (_resume_file("train_state/state.json",
                                             _state_json(lambda s: {k: v for k, v in s.items() if k != "step"})),
                                "state.json", ["'step'"]),
    "state.json step a string": (_resume_file("train_state/state.json", _state_json(lambda s: {**s, "step": "2"})),
                                 "state.json", ["'step'"]),
    "module weights truncated": (_resume_file("train_state/modules/policy.safetensors", _truncate(0.5)),
                                 "modules/policy.safetensors", ["corrupt"]),
    "module weights random": (_resume_file("train_state/modules/policy.safetensors", _random(4096)),
                              "modules/policy.safetensors", ["corrupt"]),
    "module weights of another shape": (_resume_file("train_state/modules/policy.safetensors", _other_shape_module),
                                        "modules/policy.safetensors", ["has shape (7,) in the file"]),
    "optimizer state truncated": (_resume_file("train_state/optimizers/policy.safetensors", _truncate(100)),
                                  "optimizers/policy.safetensors", ["corrupt"]),
    "rng state truncated": (_resume_file("train_state/rng.safetensors", _truncate(50)), "rng.safetensors",
                            ["corrupt"]),
    "EMA weights truncated": (_resume_file("model.safetensors", _truncate(0.5)), "model.safetensors", ["corrupt"]),
    "stats.json truncated": (_resume_file("stats.json", _truncate(0.5)), "stats.json", ["JSON"]),
    "train_state missing": (_resume_file("train_state", shutil.rmtree), "train_state", ["cannot be resumed"]),
    "last missing": (lambda run: (run / "checkpoints" / "last").unlink(), "checkpoints", ["no `last` pointer"]),
    "last names a missing step": (lambda run: (run / "checkpoints" / "last").write_text("step_000099"),
                                  "step_000099", ["does not exist"]),
}


@pytest.mark.parametrize("damage", list(RESUME_DAMAGE))
def test_resume_on_damaged_checkpoint_is_one_line(damage, run_copy, pusht_zarr, capsys):
    edit, name, words = RESUME_DAMAGE[damage]
    edit(run_copy)
    rc, lines = run_cli(["train", *TINY, f"--data.uri={pusht_zarr}", "--train.steps=3",
                         f"--train.output_dir={run_copy}", "--resume"], capsys)
    assert_one_line(rc, lines, "train", name, *words)
    assert not (run_copy / "checkpoints" / "step_000003").exists()


def test_resume_error_leaves_the_modules_untouched(run_copy):
    """A damaged optimizer file is found before any module weights are replaced."""
    from robopolicy.policies.policy import CheckpointError, Policy
    from robopolicy.train.checkpoint import load_train_state

    ckpt = run_copy / "checkpoints" / STEP
    _truncate(100)(ckpt / "train_state" / "optimizers" / "policy.safetensors")
    policy = Policy.load(ckpt)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    opt = torch.optim.AdamW(policy.parameters())
    with pytest.raises(CheckpointError, match="optimizers/policy.safetensors"):
        load_train_state(ckpt, {"policy": policy}, {"policy": opt}, None)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())


# ----- command-line inputs --------------------------------------------------------------------------------------
INPUT_FILES = {"plain_file": "hello", "list.yaml": "- a\n- b\n", "section.yaml": "train: 3\n",
               "broken.yaml": "train: [\n"}


def _inputs(tmp_path: Path, pusht: Path) -> dict[str, tuple[list[str], str, list[str]]]:
    """name -> (argv, command, words the line must hold)."""
    plain, listed, section, broken = (tmp_path / name for name in INPUT_FILES)
    run = [*TINY, f"--data.uri={pusht}", "--train.steps=1", f"--train.output_dir={tmp_path / 'run'}"]
    return {
        "info: dataset path is a file": (["info", plain], "info", [str(plain), "not a dataset"]),
        "stats: dataset path is a file": (["stats", plain], "stats", [str(plain)]),
        "train: dataset path is a file": (["train", *run, f"--data.uri={plain}"], "train", [str(plain)]),
        "info: missing dataset": (["info", tmp_path / "nope"], "info", ["nope", "no such dataset"]),
        "info: hf uri without owner": (["info", "hf://justname"], "info", ["hf://justname"]),
        "info: empty hf uri": (["info", "hf://"], "info", ["hf://"]),
        "stats: unknown --keys": (["stats", pusht, "--keys", "nokey"], "stats", ["--keys", "nokey"]),
        "eval: unknown --env": (["eval", "--checkpoint", tmp_path, "--env", "pushtt"], "eval", ["pushtt"]),
        "collect: unknown --env": (["collect", "--env", "nosuch:Thing", "--episodes", "1", "--out",
                                    tmp_path / "c.zarr", "--no-progress"], "collect", ["nosuch:Thing"]),
        "collect: --episodes 0": (["collect", "--episodes", "0", "--out", tmp_path / "c.zarr", "--no-progress"],
                                  "collect", ["episodes"]),
        "train: --train.steps=abc": (["train", *run, "--train.steps=abc"], "train", ["train.steps", "abc"]),
        "train: --optim.lr=[1]": (["train", *run, "--optim.lr=[1]"], "train", ["optim.lr"]),
        "train: --train.steps=0": (["train", *run, "--train.steps=0"], "train", ["train.steps"]),
        "train: unknown field": (["train", *run, "--train.stepz=1"], "train", ["train.stepz", "'steps'"]),
        "train: --policy.horizon=x": (["train", *run, "--policy.horizon=x"], "train", ["policy.horizon"]),
        "train: override without value": (["train", *run, "--train.steps"], "train", ["--train.steps"]),
        "train: unknown input key": (["train", *run, "--data.input_keys=[nokey]"], "train",
                                     ["data.input_keys", "nokey"]),
        "train: unknown action key": (["train", *run, "--data.action_key=nokey"], "train",
                                      ["data.action_key", "nokey"]),
        "train: episode outside the dataset": (["train", *run, "--data.episodes=[9999]"], "train",
                                               ["data.episodes", "9999"]),
        "train: no data.uri": (["train", "--train.steps=1"], "train", ["data.uri"]),
        "train: preset not a mapping": (["train", "--config", listed, f"--data.uri={pusht}"], "train",
                                        [str(listed), "mapping"]),
        "train: preset section not a mapping": (["train", "--config", section, f"--data.uri={pusht}"], "train",
                                                ["train=3"]),
        "train: preset invalid YAML": (["train", "--config", broken], "train", [str(broken), "invalid YAML"]),
        "train: missing preset": (["train", "--config", tmp_path / "nope.yaml"], "train", ["nope.yaml"]),
        "train: preset is a directory": (["train", "--config", tmp_path], "train", [str(tmp_path)]),
        "record: robot description missing": (["record", "--robot", tmp_path / "nope.yaml", "--teleop", "keyboard",
                                               "--out", tmp_path / "rec", "--no-keys"], "record", ["nope.yaml"]),
        "record: robot description not a mapping": (["record", "--robot", listed, "--teleop", "keyboard",
                                                     "--out", tmp_path / "rec", "--no-keys"], "record",
                                                    [str(listed)]),
    }


INPUT_CASES = list(_inputs(Path("/x"), Path("/y")))


@pytest.mark.parametrize("case", INPUT_CASES)
def test_bad_command_input_is_one_line(case, pusht_zarr, tmp_path, capsys):
    for name, text in INPUT_FILES.items():
        (tmp_path / name).write_text(text)
    argv, command, words = _inputs(tmp_path, pusht_zarr)[case]
    rc, lines = run_cli(argv, capsys)
    assert_one_line(rc, lines, command, *words)


def test_existing_run_is_one_line(trained_run, pusht_zarr, capsys):
    rc, lines = run_cli(["train", *TINY, f"--data.uri={pusht_zarr}", "--train.steps=1",
                         f"--train.output_dir={trained_run}"], capsys)
    assert_one_line(rc, lines, "train", trained_run, "--resume", "--train.overwrite=true")


RECORD = ["record", "--robot", "real/so101_follower.yaml", "--teleop", "keyboard", "--emulate", "--out", "rec"]
EVAL = ["eval", "--checkpoint", "ckpt", "--env", "pusht"]
USAGE_ERRORS = {  # name -> (argv, command, words)
    "eval --episodes 0": ([*EVAL, "--episodes", "0"], "eval", ["--episodes", "'0'", ">= 1"]),
    "eval --n-envs 0": ([*EVAL, "--n-envs", "0"], "eval", ["--n-envs"]),
    "eval --max-steps 0": ([*EVAL, "--max-steps", "0"], "eval", ["--max-steps"]),
    "eval --n-action-steps -1": ([*EVAL, "--n-action-steps", "-1"], "eval", ["--n-action-steps"]),
    "eval --videos -1": ([*EVAL, "--videos", "-1"], "eval", ["--videos", ">= 0"]),
    "eval --episodes abc": ([*EVAL, "--episodes", "abc"], "eval", ["--episodes", "'abc'", "integer"]),
    "eval without --env": (EVAL[:3], "eval", ["--env"]),
    "record --camera big": ([*RECORD, "--camera", "big"], "record", ["--camera", "'big'", "WIDTHxHEIGHT"]),
    "record --camera 0x10": ([*RECORD, "--camera", "0x10"], "record", ["--camera"]),
    "record --fps 0": ([*RECORD, "--fps", "0"], "record", ["--fps", "> 0"]),
    "record --fps nan": ([*RECORD, "--fps", "nan"], "record", ["--fps"]),
    "record --episodes 0": ([*RECORD, "--episodes", "0"], "record", ["--episodes"]),
    "record --reset-time -1": ([*RECORD, "--reset-time", "-1"], "record", ["--reset-time"]),
    "stats --bins 1": (["stats", "x", "--bins", "1"], "stats", ["--bins", ">= 2"]),
    "info unknown option": (["info", "x", "--nope"], "info", ["--nope"]),
    "unknown command": (["nosuch"], "", ["'nosuch'"]),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_are_one_line(case, capsys):
    argv, command, words = USAGE_ERRORS[case]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    prog = f"robopolicy {command}".strip()
    line = assert_one_line(exit_info.value.code, lines, command, *words) if command else lines[0]
    assert exit_info.value.code == 2 and len(lines) == 1 and f"(see {prog} --help)" in line
    assert all(word in line for word in words)


# ----- zero-episode datasets written by robopolicy's own writers ----------------------------------------------
@pytest.fixture(params=["zarr", "lerobot"])
def empty_dataset(request, tmp_path) -> Path:
    from robopolicy.data.features import Feature
    from robopolicy.data.writer import create_writer

    root = tmp_path / ("empty.zarr" if request.param == "zarr" else "empty")
    features = {"state": Feature("state", "float32", (5,), "state"),
                "action": Feature("action", "float32", (2,), "action")}
    writer = create_writer(root, features, 10.0, format=request.param)
    writer.finalize()
    return root


def test_zero_episode_dataset_info_opens(empty_dataset, capsys):
    capsys.readouterr()
    assert main(["info", str(empty_dataset)]) == 0
    assert "episodes: 0" in capsys.readouterr().out


def test_zero_episode_dataset_stats_says_nothing_to_compute(empty_dataset, capsys):
    rc, lines = run_cli(["stats", empty_dataset], capsys)
    assert_one_line(rc, lines, "stats", empty_dataset, "no frames", "nothing to compute")


def test_zero_episode_dataset_train_says_nothing_to_train_on(empty_dataset, tmp_path, capsys):
    rc, lines = run_cli(["train", *[a for a in TINY if not a.startswith("--data.episodes")],
                         f"--data.uri={empty_dataset}", "--train.steps=1", f"--train.output_dir={tmp_path / 'r'}"],
                        capsys)
    assert_one_line(rc, lines, "train", empty_dataset, "nothing to train on")


# ----- --debug, internal errors, Ctrl-C --------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_debug_shows_the_traceback(where, tmp_path, capsys, monkeypatch):
    argv = ["info", str(tmp_path / "nope")]
    if where == "before":
        argv = ["--debug", *argv]
    elif where == "after":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("ROBOPOLICY_DEBUG", "1")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "DatasetError" in err
    assert err.strip().splitlines()[-1].startswith("robopolicy info: error: ")


def test_debug_off_in_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBOPOLICY_DEBUG", "0")
    rc, lines = run_cli(["info", tmp_path / "nope"], capsys)
    assert_one_line(rc, lines, "info", "nope")


def _raise(error: BaseException):
    def run(args):
        raise error
    return run


def test_internal_error_is_one_line_with_a_debug_hint(tmp_path, capsys, monkeypatch):
    from robopolicy.cli import info

    monkeypatch.setattr(info, "run", _raise(RuntimeError("boom\nsecond line")))
    rc, lines = run_cli(["info", tmp_path], capsys)
    line = assert_one_line(rc, lines, "info", "RuntimeError: boom second line", "--debug", code=1)
    assert "internal error" in line
    capsys.readouterr()
    assert main(["--debug", "info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err


def test_keyboard_interrupt_exits_130(tmp_path, capsys, monkeypatch):
    from robopolicy.cli import info

    monkeypatch.setattr(info, "run", _raise(KeyboardInterrupt()))
    rc, lines = run_cli(["info", tmp_path], capsys)
    assert rc == 130 and lines == ["interrupted"]


def test_key_error_message_loses_its_quotes():
    assert cli_main.one_line(KeyError("no feature 'x'")) == "no feature 'x'"


# ----- through a real process: exit code and stderr --------------------------------------------------------------
def _subprocess(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robopolicy.cli.main", *map(str, argv)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


def test_subprocess_truncated_weights_and_debug(run_copy, tmp_path):
    ckpt = run_copy / "checkpoints" / STEP
    _truncate(0.5)(ckpt / "model.safetensors")
    proc = _subprocess(*eval_argv(ckpt, tmp_path))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert_one_line(proc.returncode, lines, "eval", ckpt / "model.safetensors", "corrupt")
    debug = _subprocess(*eval_argv(ckpt, tmp_path), "--debug")
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert "SafetensorError" in debug.stderr or "CheckpointError" in debug.stderr


def test_subprocess_wrong_override_type(tmp_path):
    proc = _subprocess("train", "--data.uri=x", "--train.steps=abc", f"--train.output_dir={tmp_path}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert_one_line(proc.returncode, lines, "train", "train.steps", "abc")
    assert proc.stdout == ""
