"""`archlab compare` and `archlab list`: the main job's tables, files and plots, and its answers to bad input."""

from __future__ import annotations

import json

import pytest

import archlab
from archlab.cli import main
from archlab.analysis.compare import DEFAULT_MODELS, compare
from archlab.plots import pareto_front


def test_default_rows_cover_the_seed_table() -> None:
    seed_rows = ["alexnet", "vgg16", "resnet50", "resnet152", "densenet201", "mobilenet_v2", "efficientnet_b0",
                 "efficientnet_b7"]
    assert DEFAULT_MODELS[: len(seed_rows)] == seed_rows
    assert {"resnext50_32x4d", "seresnet50", "mobilenet_v1", "mobilenet_v3_large"} <= set(DEFAULT_MODELS)
    for name in DEFAULT_MODELS:
        archlab.model_card(name)


def test_measured_rows_match_cards() -> None:
    rows = compare(["resnet18", "mobilenet_v2"], bench=False)
    by_name = {r.name: r for r in rows}
    r18 = by_name["resnet18"]
    assert r18.params == r18.params_published == 11_689_512
    assert abs(r18.macs_delta) < 1.0 and r18.latency_ms is None
    assert r18.activation_bytes > 0 and r18.year == 2015
    assert by_name["mobilenet_v2"].macs < r18.macs


# Figures whose published precision is coarser than 1%: MobileNetV3-Small 0.75's "44M" (paper Table 3, whole
# millions) is 1.4% above our 43.40M count; the same table's Small 1.0 "56M" is 0.9% *below* our 56.51M, so the
# table's rounding, not the counter, is off (torchvision counts 57M for Small 1.0).
COARSE = {"mobilenet_v3_small_075": 0.015}
# torchvision publishes ShuffleNetV2 x0.5 as 0.04 GFLOPS, two decimals: our 40.48M is 1.2% above it (the paper's 41M
# is 1.3% the other way).
COARSE["shufflenet_v2_x0_5"] = 0.0125


def test_every_published_macs_figure_is_matched_within_one_percent() -> None:
    # The accuracy goal for the counter, over every card that publishes multiply-adds.
    from archlab.analysis import profile

    for name in archlab.list_models():
        card = archlab.model_card(name)
        if card.macs is None:
            continue
        assert card.macs_source, name
        counted = profile(name, training_memory=False).macs
        assert abs(counted - card.macs) <= COARSE.get(name, 0.01) * card.macs, (name, counted, card.macs)


def test_cli_writes_tables_and_plots(tmp_path, capsys) -> None:
    out = tmp_path / "report"
    argv = ["compare", "resnet18", "mobilenet_v3_small", "resnet18", "--no-bench", "--out", str(out), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in printed] == ["resnet18", "mobilenet_v3_small"]  # a model named twice: one row
    for f in ("compare.md", "compare.csv", "compare.json", "top1_vs_macs.png", "design_patterns.png"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "top1_vs_macs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "top1_vs_latency.png").exists()  # no latency measured, no latency plot
    md = (out / "compare.md").read_text()
    assert "resnet18" in md and "torchvision IMAGENET1K_V1 weights" in md
    assert json.loads((out / "compare.json").read_text())[0]["params"] == 11_689_512


def test_cli_with_latency(tmp_path, capsys) -> None:
    assert main(["compare", "mobilenet_v3_small", "--out", str(tmp_path)]) == 0
    assert "mobilenet_v3_small" in capsys.readouterr().out
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert rows[0]["latency_ms"] > 0
    assert (tmp_path / "top1_vs_latency.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "resnet5"], "unknown model 'resnet5'; did you mean"),
        (["compare", "resnet18", "--out", "/proc/no/such/dir"], "--out"),
        (["list", "zzz*"], "no model matches"),
        (["compare", "--bogus"], "unrecognized arguments"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_list_json(capsys) -> None:
    assert main(["list", "efficientnet_b*", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in cards] == [f"efficientnet_b{i}" for i in range(8)]
    assert cards[7]["input_size"] == 600


def test_pareto_front() -> None:
    # (cost, accuracy): the second point is beaten by the third (cheaper and better).
    points = [(1.0, 70.0), (5.0, 72.0), (3.0, 75.0), (10.0, 80.0)]
    assert pareto_front(points) == [0, 2, 3]


def test_card_command(capsys) -> None:
    assert main(["card", "efficientnet_b2"]) == 0
    out = capsys.readouterr().out
    assert "arXiv:1905.11946" in out and "260x260" in out and "80.1%" in out and "288" in out
    assert main(["card", "mobilenet_v2", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["reference"] == "torchvision:mobilenet_v2" and card["params"] == 3_504_872


def test_the_seeds_table_stands_beside_ours_with_what_each_figure_is(capsys) -> None:
    from archlab.analysis.seed_table import SEED_TABLE

    assert [s.model for s in SEED_TABLE] == DEFAULT_MODELS[:8]  # the seed's rows, in its order
    rows = {r.name: r for r in compare([s.model for s in SEED_TABLE], bench=False)}
    for seed in SEED_TABLE:
        row = rows[seed.model]
        assert row.seed == seed and row.year == seed.year
        # The seed's rounded figures describe the models built here (its "FLOPs" are multiply-adds).
        assert abs(seed.params - row.params) <= 0.02 * row.params, seed.model
        assert abs(seed.macs - row.macs) <= 0.025 * row.macs, seed.model
        assert seed.note
    assert "ensemble of seven" in rows["alexnet"].seed.note and "single-crop" in rows["densenet201"].seed.note
    assert main(["card", "alexnet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"]["top1"] == 63.3
    assert main(["card", "resnet18", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] is None
