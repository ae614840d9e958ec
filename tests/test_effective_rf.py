"""Effective receptive fields (archlab.analysis.effective_rf, `archlab erf`): how much of its theoretical field a
unit's input gradient actually covers."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import archlab
from archlab.analysis.effective_rf import centred_square_holding, effective_receptive_field
from archlab.analysis.trace import stage_trace
from archlab.cli import main
from helpers import positive


def test_centred_square_holding() -> None:
    delta = torch.zeros(9, 9)
    delta[4, 4] = 1.0
    assert centred_square_holding(delta, 0.95) == 1
    flat = torch.ones(9, 9)
    assert centred_square_holding(flat, 1.0) == 9
    assert centred_square_holding(flat, 25 / 81) == 5  # the 5x5 square holds exactly 25/81
    off_centre = torch.zeros(9, 9)
    off_centre[1:4, 5:8] = 1.0  # a 3x3 patch away from the map centre: found around its own centre of mass
    assert centred_square_holding(off_centre, 1.0) == 3


def test_effective_field_of_a_linear_positive_network_is_the_theoretical_field() -> None:
    # No non-linearity and positive weights: every pixel of the theoretical field reaches the unit, so the square
    # holding all of the gradient is the theoretical field — an independent check of both computations.
    model = positive(archlab.create_model("vgg11"))
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, nn.Identity())
    erf = effective_receptive_field(model, 64, mass=1.0, samples=1)
    # VGG-11 (config A) by hand: conv 3; pool, conv: 8; pool, conv, conv: 26; pool, conv, conv: 62; then > 64
    assert [s.theoretical for s in erf.stages] == [3, 8, 26, 62, 64, 64]  # clipped to the 64-pixel image
    assert [s.effective for s in erf.stages] == [s.theoretical for s in erf.stages]


def test_effective_field_is_a_fraction_of_the_theoretical_one() -> None:
    # Luo et al. 2016: the gradient concentrates in the middle, so 95% of it fits well inside the window.
    erf = effective_receptive_field("cifar_plain56", samples=2)
    assert all(s.effective <= s.theoretical for s in erf.stages)
    first = erf.stages[0]
    assert first.theoretical == 32 and first.effective < 0.8 * first.theoretical
    loose = effective_receptive_field("cifar_plain56", samples=2, mass=0.5)
    assert all(a.effective <= b.effective for a, b in zip(loose.stages, erf.stages))


def test_erf_command(capsys, tmp_path) -> None:
    png = tmp_path / "erf.png"
    assert main(["erf", "cifar_resnet20", "--samples", "1", "--plot", str(png), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "cifar_resnet20" and out["mass"] == 0.95
    assert [s["stage"] for s in out["stages"]] == ["stage0", "stage1", "stage2"]
    assert all(0 < s["effective"] <= s["theoretical"] for s in out["stages"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["erf", "cifar_resnet20", "--samples", "1"]) == 0
    assert "area used" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["erf", "vgg11", "--mass", "0"], "must be in (0, 1]"),
    (["erf", "vgg11", "--input", "8"], "minimum"),
    (["erf", "vgg11", "--input", "4096"], "use 1024 or less"),
    (["erf", "vgg11", "--plot", "/no/such/dir/e.png"], "does not exist"),
    (["erf", "resnet5O"], "did you mean"),
])
def test_erf_command_bad_input(capsys, argv, message) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_squeeze_excitation_reaches_past_the_local_field() -> None:
    # MobileNetV3's SE blocks pool the whole feature map: a stage output after one depends on every input pixel, so
    # its gradient is non-zero outside the local (theoretical) field, and the stage is marked as trace marks it.
    erf = effective_receptive_field("mobilenet_v3_small", input_size=96, samples=1)
    trace = stage_trace("mobilenet_v3_small", 96)
    assert [s.global_context for s in erf.stages] == [s.global_context for s in trace.stages[1:-1]]
    first = next(s for s in erf.stages if s.global_context and s.theoretical < 96 - 8)
    g = torch.tensor(first.gradient)
    lo = (96 - first.theoretical) // 2 - 1
    outside = g.clone()
    outside[lo:lo + first.theoretical + 2, lo:lo + first.theoretical + 2] = 0
    assert outside.max() > 0
