"""The policy speed benchmark's pure logic: run order, medians, speedup direction, goals, table, worker output."""

from __future__ import annotations

import pytest

from tests.benchmarks.bench_modules import load_bench

bench = load_bench("bench_policy_speed")


def test_schedule_interleaves_sides_within_each_repeat():
    order = bench.schedule(["a", "b"], 2, ["robopolicy", "lerobot"])
    assert order == [
        ("a", 0, "robopolicy"), ("a", 0, "lerobot"), ("a", 1, "robopolicy"), ("a", 1, "lerobot"),
        ("b", 0, "robopolicy"), ("b", 0, "lerobot"), ("b", 1, "robopolicy"), ("b", 1, "lerobot"),
    ]


def test_speedup_is_throughput_ratio_for_training_and_inverse_latency_ratio_for_chunks():
    train, chunk = bench.CASES["diffusion_train"], bench.CASES["diffusion_ddim"]
    assert bench.speedup(train, 6.0, 4.0) == pytest.approx(1.5)
    assert bench.speedup(chunk, 1.0, 2.5) == pytest.approx(2.5)


def test_summarize_takes_medians_and_checks_the_goal_side_by_side():
    case = bench.CASES["diffusion_train"]  # goal 1.5x
    row = bench.summarize(case, {"robopolicy": [6.0, 1.0, 7.0], "lerobot": [4.0, 100.0, 3.0]})
    assert row["robopolicy"] == 6.0 and row["lerobot"] == 4.0
    assert row["speedup"] == pytest.approx(1.5) and row["goal_met"]
    chunk = bench.summarize(bench.CASES["diffusion_ddpm"], {"robopolicy": [12.0], "lerobot": [23.0]})
    assert chunk["speedup"] == pytest.approx(23 / 12) and not chunk["goal_met"]  # goal: half the latency


def test_summarize_without_lerobot_compares_with_the_reference_figures():
    case = bench.CASES["act_chunk"]  # LeRobot reference 65 ms
    row = bench.summarize(case, {"robopolicy": [0.030, 0.020, 0.040]})
    assert row["lerobot"] is None
    assert row["speedup"] == pytest.approx(0.065 / 0.030) and row["goal_met"]


def test_reference_figures_match_issue_3():
    ref = {name: c.reference for name, c in bench.CASES.items()}
    assert ref == {"diffusion_train": 3.75, "diffusion_ddim": 2.38, "diffusion_ddpm": 23.6,
                   "act_train": 4.5, "act_chunk": 0.065}
    assert {c.unit for c in bench.CASES.values()} == {"samples/s", "s/chunk"}


def test_format_table_prints_one_line_per_case_with_units():
    rows = [bench.summarize(bench.CASES["diffusion_ddim"], {"robopolicy": [1.2], "lerobot": [3.3]}),
            bench.summarize(bench.CASES["act_chunk"], {"robopolicy": [0.02]})]
    lines = bench.format_table(rows).splitlines()
    assert len(lines) == 4
    assert "1.20 s" in lines[2] and "3.30 s" in lines[2] and "2.75x" in lines[2] and "yes" in lines[2]
    assert "20 ms" in lines[3] and "65 ms" in lines[3]


def test_last_json_line_skips_log_noise_and_reports_missing_results():
    out = 'loading...\n{"value": 1.5, "case": "x"}\nwarning: something\n'
    assert bench.last_json_line(out) == {"value": 1.5, "case": "x"}
    with pytest.raises(ValueError, match="no JSON result line"):
        bench.last_json_line("Traceback ...\nboom\n")
