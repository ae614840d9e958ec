"""archlab search: the grid and its constraint, the bases that scale, candidates as specs that build, the design
spaces as data; then micro searches (tiny models, digits at a small data fraction, one epoch) through the command:
reports written, a bound that stops a search early, a rerun that continues it without training anything twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from archlab.cli import main
from archlab.registry import create_from_spec
from archlab.search import SearchError
from archlab.search import compound as cs
from archlab.search import mnas as ms
from archlab.search.runner import study_toml
from archlab.search.scalable import scalable_base
from archlab.studies.files import study_from_toml

MICRO = ["--data", "digits", "--data-fraction", "0.05", "--epochs", "1", "--seeds", "1"]
TINY_BASE = "cifar_resnet20:width_mult=0.25"


# ------------------------------------------------------------------------------------------------ the grid


def test_the_default_grid_holds_the_papers_point_and_every_point_meets_the_constraint() -> None:
    grid = cs.parse_grid(cs.DEFAULT_GRID)
    assert grid[0] == (1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.35, 1.4)
    points = cs.constrained_points(grid, cs.DEFAULT_TOLERANCE)
    assert len(points) == 57
    assert cs.Coefficients(1.2, 1.1, 1.15) in points  # constraint 1.9203
    assert all(abs(p.constraint - 2) <= 0.08 + 1e-9 for p in points)
    assert len(cs.constrained_points(grid, 0.05)) == 39 and len(cs.constrained_points(grid, 0.1)) == 75


def test_three_ranges_and_bad_grids() -> None:
    a, b, g = cs.parse_grid("1.0:1.2:0.1,1.0:1.1:0.1,1.1:1.1:0.1")
    assert (a, b, g) == ((1.0, 1.1, 1.2), (1.0, 1.1), (1.1,))
    for bad, message in (("1:2", "START:STOP:STEP"), ("1.2:1.0:0.1", "START <= STOP"), ("1:1.4:0", "STEP > 0"),
                         ("0.5:1:0.1", ">= 1"), ("1:2:0.1,1:2:0.1", "one START:STOP:STEP range or three")):
        with pytest.raises(SearchError, match=message):
            cs.parse_grid(bad)
    with pytest.raises(SearchError, match=r"nearest, alpha=1.05 beta=1.05 gamma=1.05, gives 1.2763"):
        cs.constrained_points(cs.parse_grid("1.0:1.05:0.05"), 0.1)


# ------------------------------------------------------------------------------------------------ the bases


def test_each_kind_of_base_scales_by_the_formula() -> None:
    resnet = scalable_base("cifar_resnet20:width_mult=0.5")
    spec, scale = resnet.scaled(1, 1.2, 1.1, 1.15)
    assert spec == "cifar_resnet20:width_mult=0.55,depth=26" and scale == pytest.approx(1.15)  # 3 blocks -> 4
    assert resnet.scaled(3, 1.2, 1.1, 1.15)[0] == "cifar_resnet20:width_mult=0.6655,depth=32"  # 3 * 1.728 -> 5
    assert resnet.scaled(1, 1.15, 1.0, 1.0)[0].endswith("depth=20")  # 3.45 rounds to 3
    b0 = scalable_base("efficientnet_b0:width_mult=0.25")
    assert b0.scaled(2, 1.2, 1.1, 1.15)[0] == "efficientnet_b0:width_mult=0.3025,depth_mult=1.44"
    formula = scalable_base("efficientnet")
    assert formula.scaled(1, 1.2, 1.1, 1.15)[0] == "efficientnet:phi=1,alpha=1.2,beta=1.1,gamma=1.15"
    for base in (resnet, b0, formula):  # every scaled spec builds
        with torch.device("meta"):
            create_from_spec(base.scaled(2, 1.3, 1.05, 1.1)[0], num_classes=10)
    with pytest.raises(SearchError, match="the base is the unscaled network"):
        scalable_base("efficientnet:phi=1")
    with pytest.raises(SearchError, match="needs a builder that takes depth and width multipliers"):
        scalable_base("resnet18")


def test_points_that_round_to_one_network_are_trained_once() -> None:
    base = scalable_base("cifar_resnet20:width_mult=0.5")
    points = [cs.Coefficients(1.0, 1.2, 1.2), cs.Coefficients(1.05, 1.2, 1.2), cs.Coefficients(1.2, 1.1, 1.15)]
    candidates = cs.step1_candidates(base, points, 16)
    assert len(candidates) == 2  # 3 * 1.05 = 3.15 blocks rounds to 3, as 3 * 1.0
    shared = next(c for c in candidates if c.same_as)
    assert {shared.coefficients, *shared.same_as} == set(points[:2])
    assert shared.coefficients == points[0]  # 2.07 beats 2.18: the one nearer 2 represents them
    paper, near = cs.Coefficients(1.2, 1.1, 1.15), cs.Coefficients(1.25, 1.1, 1.15)  # 3.6 and 3.75 blocks: 4
    (only,) = cs.step1_candidates(base, [near, paper], 16)
    assert only.coefficients == paper and only.same_as == [near]  # the paper's point represents its network


def test_a_round_travels_to_the_workers_as_a_study_file() -> None:
    arms = [cs._arm("a1-b1.2-g1.2@phi1", "cifar_resnet20:width_mult=0.3,depth=20", 1.2), cs._arm("base", TINY_BASE, 1)]
    study = cs._study("search-compound-step1", "claim with \"quotes\" and ≈", arms, 2, "notes")
    again = study_from_toml(study_toml(study))
    assert again.fingerprint(x=1) == study.fingerprint(x=1)


# ------------------------------------------------------------------------------------------------ the mnas space


def test_every_point_of_the_mnas_space_is_a_spec_that_builds() -> None:
    import optuna

    dists = ms.distributions()
    assert len(dists) == 6 * 4 + 1
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"])
    for _ in range(5):
        spec = ms.spec_of(study.ask(dists).params)
        with torch.device("meta"):
            model = create_from_spec(spec, num_classes=10)
        assert spec.startswith("mnasnet1_0:stages=") and model.layers[1].momentum == pytest.approx(0.1)
    b1 = {f"s{i}_{k}": v for i, s in enumerate(__import__("archlab").models.mnasnet.MNASNET_B1, start=1)
          for k, v in (("kernel", s.kernel), ("expand", s.expand), ("layers", 0), ("se", False))}
    b1["width_mult"] = 1.0
    ours, ref = create_from_spec(ms.spec_of(b1)), create_from_spec("mnasnet1_0")  # B1 is a point of the space
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_mnasnet_stages_key_and_se() -> None:
    se = create_from_spec("mnasnet1_0:stages=k3e3r3-k5e3r3se-k5e6r3-k3e6r2-k7e6r4se-k3e6r1", num_classes=10)
    plain = create_from_spec("mnasnet1_0", num_classes=10)
    extra = sum(p.numel() for p in se.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra > 0 and se.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    for bad, message in (("k3e3r3", "takes 6 stages"), ("k4e3r3-k5e3r3-k5e6r3-k3e6r2-k5e6r4-k3e6r1", "stage 1"),
                         ("k3e3r0-k5e3r3-k5e6r3-k3e6r2-k5e6r4-k3e6r1", "repeats >= 1")):
        with pytest.raises(ValueError, match=message):
            create_from_spec(f"mnasnet1_0:stages={bad}")


def test_the_reward_is_mnasnets() -> None:
    assert ms.reward(80.0, 10.0, 10.0) == pytest.approx(0.8)
    assert ms.reward(80.0, 20.0, 10.0) == pytest.approx(0.8 * 2 ** -0.07)  # twice the target costs ~4.7%
    for bad, message in ((dict(sampler="grid"), "unknown --sampler"), (dict(cost="flops"), "unknown --cost"),
                         (dict(target_ms=0.0), "must be > 0"), (dict(cost="macs", target_ms=3.0), "--cost latency")):
        with pytest.raises(SearchError, match=message):
            ms.check_options(ms.MnasOptions(**bad))


# --------------------------------------------------------------------------------------------- micro searches


def _trained(out: Path) -> list[dict]:
    """Every engine trial of every round in the search folder that trained (completed), from trials.csv."""
    import csv

    with open(out / "trials.csv") as f:
        return [r for r in csv.DictReader(f) if r["state"] == "COMPLETE"]


def test_compound_search_stopped_by_trials_then_continued(tmp_path, capsys) -> None:
    out = tmp_path / "compound"
    argv = ["search", "compound", "--base", TINY_BASE, "--grid", "1.0:1.2:0.2", "--phi", "1", *MICRO,
            "--out", str(out), "--json"]
    assert main(argv + ["--trials", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["stopped"] == "trial bound (--trials 1) reached" and first["step2"]["rows"] == []
    assert [(r["alpha"], r["beta"], r["gamma"], r["rank"]) for r in first["step1"]] == [(1.0, 1.2, 1.2, 1)]
    assert main(argv) == 0  # continues: step 1 is reused, step 2 runs
    second = json.loads(capsys.readouterr().out)
    assert second["stopped"] is None and second["step2"]["status"] == "complete"
    rows = {(r["coefficients"], r["phi"]): r for r in second["step2"]["rows"]}
    assert set(rows) == {("base", 0), ("found", 1), ("paper", 1)}
    assert rows[("found", 1)]["acc_mean"] == second["step1"][0]["acc_mean"]  # the same run folder, read again
    assert rows[("paper", 1)]["spec"] == "cifar_resnet20:width_mult=0.275,depth=26"
    assert rows[("paper", 1)]["input_size"] == 18  # 16 * 1.15 = 18.4
    (versus,) = second["versus"]  # found vs paper at phi = 1, tested as a study tests an ordering
    assert versus["where"] == "step 2, phi = 1" and versus["verdict"] == "inconclusive"
    assert versus["reason"] == "fewer than 2 finished seeds for found, paper"
    assert main(argv) == 0  # nothing left: every result reused, nothing trained twice
    third = json.loads(capsys.readouterr().out)
    assert third["step1"] == second["step1"] and third["step2"]["rows"] == second["step2"]["rows"]
    keys = [r["key"] for r in _trained(out) if r["round"] == "step1"]
    assert keys == ["a1-b1.2-g1.2@phi1|seed=0"]
    text = (out / "report.md").read_text()
    assert "not the released EfficientNet-B1..B7 rows" in text and "is not ImageNet" in text
    assert (out / "compound.png").stat().st_size > 0 and (out / "step2.csv").read_text().count("\n") == 4


def _archlab_json(argv: list[str], **env: str) -> dict:
    """`python -m archlab ARGV` in its own process (signals of its own, whatever this test process has loaded: a
    pytest worker that ran ONNX Runtime / OpenVINO in-process crashed here); its --json output."""
    proc = subprocess.run([sys.executable, "-m", "archlab", *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_compound_search_stopped_by_the_time_limit_resumes(tmp_path) -> None:
    out = tmp_path / "timed"
    argv = ["search", "compound", "--base", TINY_BASE, "--grid", "1.0:1.2:0.2", "--phi", "1", *MICRO, "--out",
            str(out), "--json"]
    # The trial waits after its first step until a signal stops it: the time limit's.
    first = _archlab_json(argv + ["--time-limit", "2s"], ARCHLAB_TEST_HANG_AFTER_STEP="1")
    assert first["stopped"] == "time limit (2 s) reached" and first["step1_complete"] is False
    assert [(t["state"], t["failure"]) for t in first["trials"]] == [("FAIL", "interrupted"), ("WAITING", None)]
    assert first["step1"][0]["seeds_done"] == 0 and first["step2"]["rows"] == []
    second = _archlab_json(argv)  # resumes the interrupted trial from its checkpoint, then step 2
    assert second["stopped"] is None and second["step1_complete"] and second["step1"][0]["seeds_done"] == 1
    step1 = [t for t in second["trials"] if t["round"] == "step1"]
    assert [t["state"] for t in step1] == ["FAIL", "COMPLETE"] and step1[1]["retry_of"] == step1[0]["number"]


def test_mnas_search_on_macs_and_latency(tmp_path, capsys, monkeypatch) -> None:
    from archlab.search import latency

    monkeypatch.setattr(latency, "REPEATS", 3)
    monkeypatch.setattr(latency, "WARMUP", 1)
    out = tmp_path / "mnas"
    argv = ["search", "mnas", "--sampler", "random", "--trials", "2", "--batch", "2", *MICRO, "--out", str(out),
            "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert len(r["candidates"]) == 2 and r["front"] and r["counts"]["complete"] == 2
    for c in r["candidates"]:
        assert c["latency_q1_ms"] <= c["latency_ms"] <= c["latency_q3_ms"] and c["search_latency_ms"] > 0
        with torch.device("meta"):
            create_from_spec(c["spec"], num_classes=10)
    assert main(argv) == 0  # rerun: the two candidates stand, nothing asked or trained again
    again = json.loads(capsys.readouterr().out)
    assert [c["spec"] for c in again["candidates"]] == [c["spec"] for c in r["candidates"]]
    assert "Pareto front" in (out / "report.md").read_text() and (out / "pareto.png").exists()
    assert main(argv[:-3] + ["--cost", "macs", "--out", str(tmp_path / "other"), "--json"]) == 0
    macs = json.loads(capsys.readouterr().out)
    assert macs["cost_key"] == "macs" and all(c["search_latency_ms"] is None for c in macs["candidates"])
    assert main(argv[:-1] + ["--cost", "macs"]) == 2  # the folder holds a search with other settings
    assert "another space, sampler, cost or budget" in capsys.readouterr().err
    reward = ["search", "mnas", "--trials", "1", "--batch", "1", "--target-ms", "5", *MICRO, "--out",
              str(tmp_path / "reward"), "--json"]
    assert main(reward) == 0
    (best,) = json.loads(capsys.readouterr().out)["candidates"]
    assert best["reward"] == pytest.approx(ms.reward(best["acc_mean"], best["latency_ms"], 5.0))


# ------------------------------------------------------------------------------------------ design spaces


def test_the_analytic_count_is_the_profilers_for_both_spaces() -> None:
    import random

    from archlab.analysis import profile
    from archlab.search import space as sp

    checked = 0
    for s in (sp.ANYNET, sp.REGNET):
        rng = random.Random(3)
        while checked < 6 * (1 + (s is sp.REGNET)):
            spec = s.spec(s.sample(rng))
            try:
                estimate = sp.regnet_macs(spec, 19)
            except ValueError:
                continue
            with torch.device("meta"):
                assert profile(create_from_spec(spec, num_classes=10), input_size=19,
                               training_memory=False).macs == estimate, spec
            checked += 1


def test_samples_are_in_the_band_distinct_and_the_same_every_time() -> None:
    from archlab.search import space as sp

    band = (2e6, 6e6)
    first = sp.sample_space(sp.ANYNET, 4, band, 32, 500)
    assert [s.spec for s in first] == [s.spec for s in sp.sample_space(sp.ANYNET, 4, band, 32, 500)]
    assert len({s.spec for s in first}) == 4 and all(band[0] <= s.macs <= band[1] for s in first)
    with pytest.raises(SearchError, match=r"no sample within the multiply-add band 0.001M-0.002M after 5 tries"):
        sp.sample_space(sp.REGNET, 1, (1e3, 2e3), 32, 5)


def test_a_space_file(tmp_path) -> None:
    from archlab.search import space as sp

    path = tmp_path / "narrow.toml"
    path.write_text('name = "narrow"\nmodel = "regnet:w0={w0},wa=20.0,wm=2.5,depth={depth},group_width=8"\n'
                    '[params.w0]\nint = [16, 48]\nstep = 8\n[params.depth]\nchoice = [6, 8, 10]\n')
    space = sp.load_space(str(path))
    (sample,) = sp.sample_space(space, 1, (0, 1e9), 32, 5)
    assert sample.values["w0"] in (16, 24, 32, 40, 48) and sample.values["depth"] in (6, 8, 10)
    path.write_text('name = "bad"\nmodel = "regnet:w0={w0},depth={d}"\n[params.w0]\nint = [16, 48]\n')
    with pytest.raises(SearchError, match="names a parameter the file does not define"):
        sp.load_space(str(path))
    path.write_text('name = "bad"\nmodel = "regnet:w0={w0}"\n[params.w0]\nint = [16, 48]\nfloat = [1, 2]\n')
    with pytest.raises(SearchError, match="exactly one of"):
        sp.load_space(str(path))


def test_space_search_draws_both_edfs_with_the_ks_statistic(tmp_path, capsys) -> None:
    out = tmp_path / "space"
    argv = ["search", "space", "--samples", "2", "--macs", "1:3", *MICRO, "--out", str(out), "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert [s["space"] for s in r["spaces"]] == ["anynet", "regnet"] and all(s["trained"] == 2 for s in r["spaces"])
    from scipy import stats

    errors = {s["space"]: [e for e, _ in s["edf"]] for s in r["spaces"]}
    assert r["ks"][0]["statistic"] == pytest.approx(stats.ks_2samp(errors["anynet"], errors["regnet"]).statistic)
    assert [f for _, f in r["spaces"][0]["edf"]] == [0.5, 1.0]
    assert (out / "edf.png").exists() and "Kolmogorov-Smirnov" in (out / "report.md").read_text()
