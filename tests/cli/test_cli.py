"""The `robopolicy` command: every subcommand has --help; `info` summarizes real datasets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from robopolicy.cli.main import SUBCOMMANDS, main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "robopolicy.cli.main", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(command):
    out = _run(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: robopolicy {command}")
    assert SUBCOMMANDS[command].split(":")[0] in " ".join(out.stdout.split())


def test_top_level_help_lists_subcommands():
    out = _run("--help")
    assert out.returncode == 0
    for command in SUBCOMMANDS:
        assert command in out.stdout


def test_info_on_pusht_zarr(pusht_zarr, capsys):
    assert main(["info", str(pusht_zarr), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "zarr" and s["episodes"] == 206 and s["frames"] == 25650
    assert s["features"]["img"] == {"dtype": "float32", "shape": [96, 96, 3], "kind": "image"}
    assert s["episode_length"]["min"] > 0


def test_info_on_bad_path_exits_with_message(tmp_path):
    out = _run("info", str(tmp_path / "missing"))
    assert out.returncode != 0
    assert "no such dataset" in out.stderr


def test_validate_reports_missing_videos(so101_record, capsys):
    assert main(["validate", str(so101_record)]) == 1
    out = capsys.readouterr().out
    assert "observation.images.front" in out and "problem(s)" in out


def test_validate_clean_zarr(pusht_zarr, capsys):
    assert main(["validate", str(pusht_zarr)]) == 0
    assert "no problems found" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["serve", "--checkpoint", "{missing}"],
    ["deploy", "--checkpoint", "{missing}", "--robot", "real/so101_follower.yaml", "--emulate"],
    ["deploy", "--checkpoint", "{missing}", "--robot", "real/so101_follower.yaml", "--emulate", "--inference",
     "process"],
])
def test_policy_commands_name_a_missing_checkpoint_without_a_traceback(argv, tmp_path, capsys):
    missing = tmp_path / "no_run"
    rc = main([a.format(missing=missing) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and f"{missing}: checkpoint file config.json is missing" in err and "Traceback" not in err
