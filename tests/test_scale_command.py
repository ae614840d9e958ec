"""`archlab scale`: compound scaling measured against the formula's (alpha*beta^2*gamma^2)^phi."""

from __future__ import annotations

import json

import pytest

import archlab
from archlab.cli import main
from archlab.scaling import compound
from archlab.analysis.scaling import scaling_table


def test_phi_zero_is_b0_and_released_rows_are_the_registered_models():
    rows = scaling_table([0, 1])
    assert [(r.model, r.kind) for r in rows] == [
        ("efficientnet (phi=0)", "formula"), ("efficientnet (phi=1)", "formula"), ("efficientnet_b1", "released")]
    b0, phi1, b1 = rows
    assert b0.params == archlab.model_card("efficientnet_b0").params and b0.macs_ratio == 1.0
    assert b0.resolution == 224 and b0.expected_ratio == 1.0
    # The released B1 is the registered model at its own resolution, with its published size.
    card = archlab.model_card("efficientnet_b1")
    assert (b1.params, b1.resolution, b1.width_mult, b1.depth_mult) == (card.params, 240, 1.0, 1.1)
    assert b1.macs == pytest.approx(card.macs, rel=0.01)
    # The formula network at phi=1 is built from compound(1) and run at its resolution.
    s = compound(1)
    assert (phi1.depth_mult, phi1.width_mult, phi1.resolution) == (s.depth_mult, s.width_mult, 256)
    assert phi1.expected_ratio == pytest.approx(1.92027, abs=1e-5)


def test_measured_growth_follows_the_formula_at_large_phi_and_rounding_at_small():
    rows = {r.model: r for r in scaling_table([0.5, 7], released=False)}
    # Depth is rounded up per stage: at small phi every stage of 1-4 blocks gains a whole block, so the measured
    # growth overshoots 1.92^phi by far; at phi=7 the rounding is small against the stage depths.
    small, large = rows["efficientnet (phi=0.5)"], rows["efficientnet (phi=7)"]
    assert small.macs_ratio > 1.25 * small.expected_ratio
    assert large.macs_ratio == pytest.approx(large.expected_ratio, rel=0.1)


def test_custom_coefficients_change_the_constraint(capsys):
    assert main(["scale", "--phi", "1", "--alpha", "1.0", "--beta", "1.0", "--gamma", "1.5", "--no-released",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["constraint"] == pytest.approx(2.25)
    (row,) = out["rows"]
    # Resolution alone: 224*1.5 = 336, depth and width unchanged, so MACs grow by about 1.5^2 (a little more:
    # 336 / 32 = 10.5, and the stride-2 layers round the odd 21x21 map up to 11x11, not 10.5x10.5).
    assert (row["resolution"], row["depth_mult"], row["width_mult"]) == (336, 1.0, 1.0)
    assert 2.25 <= row["macs_ratio"] <= 2.25 * 1.05


def test_table_output(capsys):
    assert main(["scale", "--phi", "0,2"]) == 0
    out = capsys.readouterr().out
    assert "alpha*beta^2*gamma^2 = 1.9203" in out
    assert "efficientnet (phi=2)" in out and "efficientnet_b2 (released)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--phi", "-1"], "phi must be a finite number >= 0"),
        (["--phi", "a,b"], "expected comma-separated numbers"),
        (["--alpha", "0.9"], "must be a finite number >= 1"),
        (["--phi", "60"], "choose a smaller phi"),
        (["--plot", "growth.csv"], ".png, .svg or .pdf"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    assert main(["scale", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_plot_of_growth_against_phi(capsys, tmp_path):
    png = tmp_path / "growth.png"
    assert main(["scale", "--phi", "0,1,2.5", "--plot", str(png)]) == 0
    assert f"plot written to {png}" in capsys.readouterr().out.replace("\n", "")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
