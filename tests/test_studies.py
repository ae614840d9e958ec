"""`archlab study`: the built-in tables, the verdicts, and the engine's promises on micro studies (tiny nets, one
epoch, a tiny IDX dataset the tests write): results and reports, nothing lost, nothing twice, bad input in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from archlab.cli.main import main
from archlab.registry import create_from_spec
from archlab.studies import STUDIES, Settings, StudyError, StudyRun, get_study
from archlab.studies.files import study_from_toml
from archlab.studies.speed import TABLES
from archlab.studies.stats import overall, paired_log_ratio, welch
from archlab.studies.study import validate
from archlab.train.loop import WarmupCosine
from idx_data import tiny_idx_folder

ROOT = Path(__file__).resolve().parents[1]
TINY_RES = "cifar_resnet20:depth=8,width_mult=0.25"
TINY_PLAIN = "cifar_plain20:depth=8,width_mult=0.25"


def micro_toml(arms: list[tuple[str, str, str]], seeds: str = "[0, 1]", epochs: int = 1) -> str:
    """A study file: tiny CIFAR nets at 8x8, ``epochs`` epoch(s) of batch 30 (3 steps on 90 images)."""
    text = f"""
name = "micro"
claim = "a tiny residual net beats its plain twin"
seeds = {seeds}

[source]
paper = "none"
arxiv = "0000.00000"
where = "nowhere"
figures = "none"

[budgets.quick]
epochs = {epochs}
batch_size = 30
lr = 0.05
warmup_epochs = 0.0
input_size = 8
channels_last = false
"""
    for label, model, recipe in arms:
        text += f'\n[[arms]]\nlabel = "{label}"\nmodel = "{model}"\n' + (f"recipe = {recipe}\n" if recipe else "")
    labels = [a[0] for a in arms]
    text += f'\n[[expect]]\nbetter = "{labels[0]}"\nworse = "{labels[1]}"\n' if len(labels) > 1 else ""
    return text


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_idx_folder(tmp_path_factory.mktemp("idx") / "fm", train=100, test=20)


def study_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "micro.toml"
    path.write_text(text)
    return path


def trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    pointer = json.loads((out / "study.json").read_text())
    return optuna.load_study(study_name=pointer["study"], storage=pointer["storage"]).trials


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------- tables


def test_builtin_studies_are_valid_tables_whose_arms_build() -> None:
    assert {"degradation", "cardinality", "squeeze-excitation", "depthwise-separable", "linear-bottleneck",
            "compound-scaling", "shufflenet-guidelines"} <= set(STUDIES)
    for study in STUDIES.values():
        validate(study)
        assert study.claim.endswith(".") and study.source.arxiv and study.source.where
        if study.kind == "train":
            assert len(study.seeds) >= 3 and study.expect and set(study.budgets) == {"quick", "paper"}
            with torch.device("meta"):
                for arm in study.arms:
                    create_from_spec(arm.model, num_classes=10)
    # The papers' figures sit on the arms (as errors, %): ResNet Table 6, ResNeXt Table 3, MobileNet Table 4.
    assert get_study("degradation").arm("ResNet-56").published == 6.97
    assert [a.published for a in get_study("cardinality").arms] == [23.9, 23.0, 22.6, 22.3, 22.2]
    assert get_study("depthwise-separable").arm("full 3x3 conv").published == pytest.approx(100 - 71.7)
    assert get_study("degradation").budgets["paper"]["epochs"] == 164


def test_paper_budget_trials_get_the_papers_recipe() -> None:
    from archlab.studies.plan import plan_trials
    from archlab.train.recipe import resolve_config

    # ResNet's CIFAR recipe (arXiv:1512.03385 Sec. 4.2) for every study but cardinality, which has ResNeXt's (arXiv:
    # 1611.05431 Sec. 5.3: 300 epochs, weight decay 5e-4); SGD with momentum 0.9, batch 128, lr 0.1 stepped.
    for study in STUDIES.values():
        if study.kind != "train":
            continue
        plans = plan_trials(study, Settings(budget="paper", data="fashion-mnist"))
        assert len(plans) == len(study.arms_at("paper")) * len(study.seeds)
        epochs, decay = (300, 5e-4) if study.name == "cardinality" else (164, 1e-4)
        for plan in plans:
            cfg = resolve_config(dict(plan.config), "unused")
            assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.sched, cfg.weight_decay, cfg.momentum) == (
                epochs, 128, 0.1, "step", decay, 0.9), (study.name, plan.key)
    labels = {p.arm for p in plan_trials(get_study("degradation"), Settings(budget="paper"))}
    assert {"plain-110", "ResNet-110"} <= labels  # the 110-layer arms run at the paper budget only


def test_paper_budget_runs_end_to_end(tmp_path, capsys) -> None:
    """Every arm of degradation at the paper budget, the 110-layer nets included, cut to one epoch and one seed."""
    data = tiny_idx_folder(tmp_path / "fm300", train=300, test=20)  # batch 128 needs more than 128 images
    code, stdout, err = run_cli(capsys, "study", "degradation", "--budget", "paper", "--epochs", "1", "--seeds", "1",
                                "--data", str(data), "--out", str(tmp_path / "paper"), "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["progress"]["done"] == 6 and not result["progress"]["failed"]
    config = json.loads((tmp_path / "paper" / "trials" / "ResNet-110" / "seed0" / "config.json").read_text())
    assert (config["model"], config["lr"], config["sched"], config["batch_size"]) == ("cifar_resnet110", 0.1,
                                                                                       "step", 128)


def test_speed_rows_keep_the_multiply_adds_of_their_table() -> None:
    from archlab.analysis import profile

    for table in TABLES:
        macs = [profile(row.build(), input_size=56).macs for row in table.rows]
        assert max(macs) / min(macs) < 1.06, (table.name, macs)
        assert all(len(col) == len(table.rows) for col in table.paper.values())


def test_step_schedule_divides_by_ten_at_half_and_three_quarters() -> None:
    schedule = WarmupCosine(100, 0, "step")
    assert [schedule(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


# ----------------------------------------------------------------------------------------------- verdicts


def test_welch_verdicts() -> None:
    assert welch([1.0, 1.1, 0.9], [5.0, 5.2, 4.9], ("a", "b"), "val_error").verdict == "holds"
    assert welch([5.0, 5.2, 4.9], [1.0, 1.1, 0.9], ("a", "b"), "val_error").verdict == "contradicted"
    noisy = welch([1.0, 3.0, 2.0], [2.5, 1.5, 2.2], ("a", "b"), "val_error")
    assert noisy.verdict == "inconclusive" and noisy.p_value > 0.05
    missing = welch([1.0], [5.0, 5.1], ("a", "b"), "val_error")
    assert missing.verdict == "inconclusive" and "fewer than 2 finished seeds for a" in missing.reason
    assert welch([0.0, 0.0], [0.0, 0.0], ("a", "b"), "val_error").verdict == "inconclusive"
    assert welch([0.0, 0.0], [1.0, 1.0], ("a", "b"), "val_error").verdict == "holds"
    assert overall([]) == "inconclusive"
    times = [1.0 + 0.01 * i for i in range(16)]
    slow = [(1.8 + 0.02 * i) * t for i, t in enumerate(times)]
    times[3] *= 20  # one repeat of the faster row hit by a neighbour's burst of load
    fast = paired_log_ratio(times, slow, ("fast", "slow"))
    assert fast.verdict == "holds" and fast.p_value < 0.05
    assert paired_log_ratio(slow, times, ("slow", "fast")).verdict == "contradicted"


# -------------------------------------------------------------------------------------------------- engine


def test_micro_study_report_and_rerun_reuses_every_trial(tmp_path, data, capsys) -> None:
    path = study_file(tmp_path, micro_toml([("res", TINY_RES, ""), ("plain", TINY_PLAIN, "")]))
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "study", str(path), "--data", str(data), "--out", str(out), "--json")
    assert code == 0, stdout
    result = json.loads(stdout)
    assert result["progress"]["done"] == 4 and not result["missing"]
    assert [a["seeds_done"] for a in result["arms"]] == [2, 2] and result["arms"][0]["macs"] > 0
    assert result["comparisons"][0]["verdict"] in ("holds", "contradicted", "inconclusive")
    for name in ("report.md", "results.json", "trials.csv", "curves.png", "metric_vs_macs.png"):
        assert (out / name).stat().st_size > 0, name
    assert "| res |" in (out / "report.md").read_text() and "Welch" in (out / "report.md").read_text()
    for arm in ("res", "plain"):
        assert (out / "trials" / arm / "seed1" / "checkpoint.pt").is_file()
    # Again: every trial is reused, none is run twice.
    code, stdout, _ = run_cli(capsys, "study", str(path), "--data", str(data), "--out", str(out), "--json")
    assert code == 0 and json.loads(stdout)["arms"] == result["arms"]
    assert [t.state.name for t in trials(out)] == ["COMPLETE"] * 4
    code, shown, _ = run_cli(capsys, "study", "show", str(out), "--json")
    assert code == 0 and json.loads(shown)["arms"] == result["arms"]


def _start_hanging(tmp_path: Path, path: Path, data: Path, out: Path) -> subprocess.Popen:
    """`archlab study` in a subprocess that stops after the first training step, until it gets a signal."""
    marker = tmp_path / "hanging"
    env = {**os.environ, "ARCHLAB_TEST_HANG_AFTER_STEP": "1", "ARCHLAB_TEST_HANG_MARKER": str(marker),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "archlab", "study", str(path), "--data", str(data), "--out",
                             str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the study never reached its first step"
        time.sleep(0.1)
    return proc


def test_interrupted_trial_resumes_from_its_checkpoint_exactly(tmp_path, data, capsys) -> None:
    path = study_file(tmp_path, micro_toml([("res", TINY_RES, "")], seeds="[0]", epochs=2))
    out = tmp_path / "interrupted"
    proc = _start_hanging(tmp_path, path, data, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert (out / "trials" / "res" / "seed0" / "checkpoint.pt").is_file()
    assert [t.state.name for t in trials(out)] == ["FAIL", "WAITING"]  # marked, and enqueued again
    code, stdout, _ = run_cli(capsys, "study", str(path), "--data", str(data), "--out", str(out), "--json")
    assert code == 0
    resumed = [t for t in json.loads(stdout)["trials"] if t["state"] == "COMPLETE"]
    code, stdout, _ = run_cli(capsys, "study", str(path), "--data", str(data), "--out", str(tmp_path / "straight"),
                              "--json")
    straight = [t for t in json.loads(stdout)["trials"] if t["state"] == "COMPLETE"]
    assert len(resumed) == len(straight) == 1
    assert resumed[0]["weights_sha256"] == straight[0]["weights_sha256"]  # bit-identical to an uninterrupted run


def test_killed_worker_leaves_its_trial_to_the_next_one_counted_once(tmp_path, data, capsys) -> None:
    path = study_file(tmp_path, micro_toml([("res", TINY_RES, ""), ("plain", TINY_PLAIN, "")], seeds="[0]"))
    out = tmp_path / "killed"
    proc = _start_hanging(tmp_path, path, data, out)
    proc.kill()  # SIGKILL: no checkpoint, no word to the storage
    proc.communicate(timeout=60)
    assert [t.state.name for t in trials(out)] == ["RUNNING", "WAITING"]
    code, stdout, _ = run_cli(capsys, "study", str(path), "--data", str(data), "--out", str(out), "--json")
    assert code == 0
    result = json.loads(stdout)
    states = [(t["key"], t["state"]) for t in result["trials"]]
    assert states.count(("res|seed=0", "COMPLETE")) == 1 and states.count(("plain|seed=0", "COMPLETE")) == 1
    lost = [t for t in result["trials"] if t["state"] == "FAIL"]
    assert len(lost) == 1 and "worker lost" in lost[0]["failure"]
    assert [a["seeds_done"] for a in result["arms"]] == [1, 1]


def test_two_workers_take_every_trial_once(tmp_path, data, capsys) -> None:
    path = study_file(tmp_path, micro_toml([("res", TINY_RES, ""), ("plain", TINY_PLAIN, "")]))
    out = tmp_path / "two"
    code, stdout, err = run_cli(capsys, "study", str(path), "--data", str(data), "--out", str(out), "--workers", "2",
                                "--json")
    assert code == 0, err
    done = [t for t in json.loads(stdout)["trials"] if t["state"] == "COMPLETE"]
    assert sorted(t["key"] for t in done) == sorted(f"{a}|seed={s}" for a in ("res", "plain") for s in (0, 1))
    assert all(t["threads"] == max(1, (os.cpu_count() or 1) // 2) for t in done)


def test_a_storage_url_holds_the_study_and_show_finds_it(tmp_path, data, capsys) -> None:
    path = study_file(tmp_path, micro_toml([("res", TINY_RES, "")], seeds="[0]"))
    db = tmp_path / "shared" / "studies.db"
    db.parent.mkdir()
    out = tmp_path / "machine-a"
    code, _, err = run_cli(capsys, "study", str(path), "--data", str(data), "--out", str(out), "--storage",
                           f"sqlite:///{db}")
    assert code == 0, err
    assert db.is_file() and not (out / "study.db").exists()
    code, shown, _ = run_cli(capsys, "study", "show", str(out), "--json")
    assert code == 0 and json.loads(shown)["progress"]["done"] == 1


def test_a_storage_url_whose_driver_is_missing_names_the_module(tmp_path, capsys) -> None:
    import importlib.util

    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("MySQLdb is installed here: the URL's driver is not missing")
    code, _, err = run_cli(capsys, "study", "degradation", "--storage", "mysql://u@localhost/db", "--out",
                           str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot open the study storage" in err and "No module named 'MySQLdb'" in err


def test_a_diverging_trial_is_recorded_and_the_study_goes_on(tmp_path, data, capsys) -> None:
    path = study_file(tmp_path, micro_toml([("res", TINY_RES, ""), ("wild", TINY_RES, "{ lr = 1e30 }")]))
    out = tmp_path / "diverged"
    code, stdout, _ = run_cli(capsys, "study", str(path), "--data", str(data), "--out", str(out), "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["arms"][0]["seeds_done"] == 2 and result["arms"][1]["seeds_done"] == 0
    assert all("diverged: non-finite loss" in m["why"] for m in result["missing"]) and len(result["missing"]) == 2
    assert result["verdict"] == "inconclusive" and "fewer than 2" in result["comparisons"][0]["reason"]
    assert "Missing" in (out / "report.md").read_text()
    run_cli(capsys, "study", str(path), "--data", str(data), "--out", str(out))
    assert len(trials(out)) == 4  # a divergence is a result: not run again


def test_speed_study_times_its_rows_beside_the_paper(tmp_path) -> None:
    from archlab.studies.report import write_report
    from archlab.studies.results import collect
    from archlab.studies.speed import SpeedRow, SpeedTable
    from archlab.studies.study import Expect, Source, Study

    table = SpeedTable("T", "dense beats grouped", "Table 2", (SpeedRow("g=1", "g2", dict(c=16, groups=1)),
                       SpeedRow("g=4", "g2", dict(c=32, groups=4))), {"CPU": (10.0, 8.0), "GPU": (5.0, 2.0)},
                       cpu_column="CPU", gpu_column="GPU", expect=(Expect("g=1", "g=4", "time"),))
    study = Study(name="speed-micro", claim="a claim.", source=Source("p", "0", "T2", "f"), kind="speed",
                  seeds=(0,), metric="time", tables=(table,), budgets={"quick": dict(repeats=3, warmup=1)})
    run = StudyRun(study, Settings(device="cpu"), tmp_path / "speed", source={"test": True})
    assert run.work() == 1
    result = collect(run)
    rows = result["tables"][0]["rows"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["paper_ratio"] == pytest.approx(0.8) and rows[0]["per_s"] > 0
    assert result["tables"][0]["comparisons"][0]["verdict"] in ("holds", "contradicted", "inconclusive")
    write_report(result, tmp_path / "speed")
    assert "| g=4 |" in (tmp_path / "speed" / "report.md").read_text()
    assert (tmp_path / "speed" / "speed.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_line_and_exit_2(tmp_path, data, capsys) -> None:
    good = micro_toml([("res", TINY_RES, ""), ("plain", TINY_PLAIN, "")])
    missing = study_file(tmp_path, good.replace('claim = "a tiny residual net beats its plain twin"\n', ""))
    bad_field = tmp_path / "bad_field.toml"
    bad_field.write_text(good.replace("seeds = [0, 1]", 'seeds = "three"'))
    bad_arm = tmp_path / "bad_arm.toml"
    bad_arm.write_text(good.replace(TINY_PLAIN, "cifar_plain20:depth=7"))
    unwritable = tmp_path / "file"
    unwritable.write_text("")
    cases = {
        "unknown study": (["study", "degredation"], "did you mean degradation"),
        "missing field": (["study", str(missing)], "missing field 'claim'"),
        "bad field": (["study", str(bad_field)], "field 'seeds' must be a list"),
        "arm that does not build": (["study", str(bad_arm), "--out", str(tmp_path / "o1")], "arm 'plain'"),
        "storage": (["study", "degradation", "--storage", "nosuchdb://x", "--out", str(tmp_path / "o2")],
                    "cannot open the study storage"),
        "workers 0": (["study", "degradation", "--workers", "0"], "must be >= 1"),
        "budget": (["study", "degradation", "--budget", "huge"], "unknown --budget 'huge'"),
        "out unwritable": (["study", "degradation", "--out", str(unwritable / "sub")], "cannot write there"),
        "show nothing": (["study", "show", str(tmp_path)], "holds no study"),
    }
    for name, (argv, expected) in cases.items():
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, f"{name}: {err}"


def test_the_study_file_example_in_the_docs_is_a_valid_study() -> None:
    text = (ROOT / "docs" / "studies.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    study = study_from_toml(example, "docs/studies.md")
    assert study.arms and study.expect
    with pytest.raises(StudyError, match="unknown field 'epoch'"):
        study_from_toml(example.replace("epochs =", "epoch ="), "docs/studies.md")


def test_compound_scaling_arms_cost_what_their_labels_say(tmp_path) -> None:
    from archlab.studies.results import arm_costs

    costs = arm_costs(StudyRun(get_study("compound-scaling"), Settings(budget="paper"), tmp_path))
    base = costs.pop("base 1x")["macs"]
    for label, cost in costs.items():
        factor = float(label.split()[-1].rstrip("x"))
        assert abs(cost["macs"] / base / factor - 1) < 0.03, (label, cost["macs"] / base)
