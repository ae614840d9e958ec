"""Model specs (``NAME:key=value,...``): the analysis commands and functions take a registered model with its
builder's arguments changed, so a user can see what a design choice does (dilation instead of striding, width)."""

from __future__ import annotations

import json

import pytest

import archlab
from archlab.analysis.summary import summarize
from archlab.analysis.trace import stage_trace
from archlab.cli import main
from archlab.registry import create_from_spec, parse_model_spec
from helpers import count_params


def test_parse_model_spec() -> None:
    assert parse_model_spec("resnet50") == ("resnet50", {})
    assert parse_model_spec("efficientnet:phi=1.5, drop_rate=0") == ("efficientnet", {"phi": 1.5, "drop_rate": 0})
    assert parse_model_spec("resnet50:zero_init_last_bn=False")[1] == {"zero_init_last_bn": False}
    assert parse_model_spec("resnet50:repeats=(2,2,2,2),groups=32")[1] == {"repeats": (2, 2, 2, 2), "groups": 32}
    for bad in ("resnet50:", "resnet50:output_stride", "resnet50:=8", "resnet50:output stride=8"):
        with pytest.raises(ValueError, match="expected NAME or NAME:key=value"):
            parse_model_spec(bad)
    with pytest.raises(archlab.UnknownModelError):
        parse_model_spec("resnt50:output_stride=8")


def test_spec_builds_the_model_with_those_arguments() -> None:
    half = create_from_spec("mobilenet_v2:width_mult=0.5", num_classes=10)
    assert count_params(half) == count_params(archlab.create_model("mobilenet_v2", width_mult=0.5, num_classes=10))
    assert create_from_spec("resnet18:num_classes=7", num_classes=10).fc.out_features == 7  # the spec wins


def test_dilation_keeps_the_resolution_and_the_receptive_field() -> None:
    """The seed's third way to handle spatial size: past output stride 8, ResNet-50's stages 3 and 4 dilate
    their 3x3 convs instead of striding, so they stay at 28x28 and still see as far as the strided network."""
    strided, dilated = stage_trace("resnet50"), stage_trace("resnet50:output_stride=8")
    assert dilated.name == "resnet50:output_stride=8"
    assert [s.resolution for s in dilated.stages[3:6]] == [(28, 28)] * 3
    assert [s.resolution for s in strided.stages[3:6]] == [(28, 28), (14, 14), (7, 7)]
    for a, b in zip(strided.stages[:6], dilated.stages[:6]):
        assert a.receptive_field == b.receptive_field and a.channels == b.channels
    assert summarize("resnet50:output_stride=8").macs > 4 * summarize("resnet50").macs  # 16x the positions late


def test_cli_takes_specs_and_refuses_bad_ones_in_one_line(capsys) -> None:
    capsys.readouterr()
    assert main(["trace", "resnet50", "resnet50:output_stride=16", "--json"]) == 0
    traces = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in traces] == ["resnet50", "resnet50:output_stride=16"]
    assert main(["summary", "mobilenet_v2:width_mult=0.5", "--depth", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == count_params(
        archlab.create_model("mobilenet_v2", width_mult=0.5))
    assert main(["summary", "resnet50:se=FALSE", "--depth", "1", "--json"]) == 0  # true/false in any case
    assert json.loads(capsys.readouterr().out)["params"] == count_params(archlab.create_model("resnet50"))
    for argv, expected in ((["trace", "resnet50:output_strde=8"], "does not take output_strde"),
                           (["summary", "resnet50:output_stride"], "expected NAME"),
                           (["erf", "resnet50:output_stride=7"], "output_stride must be one of"),
                           (["trace", "mobilenet_v2:width_mult=abc"], "mobilenet_v2:width_mult=abc"),
                           (["summary", "vgg11:output_stride=16"], "vgg11 does not take output_stride"),
                           (["erf", "efficientnet_b0:bogus=1"], "does not take bogus"),
                           (["trace", "resnet50:output_stride=8,output_stride=16"], "output_stride given twice")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
