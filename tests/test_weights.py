"""load_reference_weights: strict, one clear error naming every key that does not fit, never executing code."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import archlab
from archlab.weights import WeightsError, read_state_dict
from helpers import randomize_norms


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    return archlab.create_model("resnet18").state_dict()


def test_missing_unexpected_and_misshapen_keys_are_all_named(resnet18_state) -> None:
    sd = dict(resnet18_state)
    del sd["layer1.0.conv1.weight"]
    sd["layer9.extra.weight"] = torch.zeros(1)
    sd["fc.weight"] = torch.zeros(10, 512)
    with pytest.raises(WeightsError) as err:
        archlab.load_reference_weights(archlab.create_model("resnet18"), sd, source="torchvision")
    msg = str(err.value)
    assert "torchvision checkpoint does not fit resnet18 (parameters named as torchvision:resnet18)" in msg
    assert "missing keys (1): layer1.0.conv1.weight" in msg
    assert "unexpected keys (1): layer9.extra.weight" in msg
    assert "fc.weight: checkpoint (10, 512) vs model (1000, 512)" in msg


def test_checkpoint_of_another_architecture_is_refused(resnet18_state) -> None:
    with pytest.raises(WeightsError, match="does not fit resnet34"):
        archlab.load_reference_weights(archlab.create_model("resnet34"), resnet18_state)


@pytest.mark.parametrize("name, reference, classes", [("resnet18", "resnet18", 10), ("vgg11", "vgg11", 5),
                                                       ("efficientnet_b0", "efficientnet_b0", 37)])
def test_skip_classifier_loads_an_imagenet_checkpoint_into_another_class_count(name, reference, classes) -> None:
    import torchvision

    torch.manual_seed(0)
    ref = getattr(torchvision.models, reference)().eval()
    model = archlab.create_model(name, num_classes=classes)
    with pytest.raises(WeightsError):  # strict by default: the 1000-way classifier does not fit
        archlab.load_reference_weights(model, ref.state_dict())
    archlab.load_reference_weights(model, ref.state_dict(), skip_classifier=True)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # Everything before the classifier is the checkpoint's; the classifier is fresh, of the model's size.
        assert torch.allclose(model.forward_head(model.forward_features(x), True), _pre_logits(ref, x), atol=1e-5)
        assert model(x).shape == (2, classes)


def _pre_logits(ref, x):
    """torchvision's output before its last linear layer."""
    last = [m for m in ref.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen = []
    handle = last.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    ref(x)
    handle.remove()
    return seen[0]


def test_unknown_source() -> None:
    with pytest.raises(ValueError, match="source must be one of"):
        archlab.load_reference_weights(archlab.create_model("resnet18"), {}, source="caffe")


def test_timm_resnet_checkpoint_loads_and_gives_the_same_outputs() -> None:
    import timm

    ref = timm.create_model("resnet50", pretrained=False).eval()
    randomize_norms(ref)
    ours = archlab.load_reference_weights(archlab.create_model("resnet50"), ref.state_dict(), source="timm").eval()
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("fmt", ["pt", "wrapped", "safetensors"])
def test_files_load(tmp_path, fmt, resnet18_state) -> None:
    model = archlab.create_model("resnet18")
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in resnet18_state.items()}, str(path))
    else:
        path = tmp_path / "w.pth"
        # A DDP-style checkpoint: weights under "state_dict", keys prefixed with "module.".
        obj = resnet18_state if fmt == "pt" else {
            "epoch": 3, "state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}}
        torch.save(obj, path)
    archlab.load_reference_weights(model, path)
    assert torch.equal(model.state_dict()["fc.weight"], resnet18_state["fc.weight"])


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_would_run_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": _RunsCode()}, f)
    with pytest.raises(WeightsError, match="refused"):
        read_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_truncated_or_corrupt_files(tmp_path, content, resnet18_state) -> None:
    path = tmp_path / "w.pth"
    if content is None:  # a real checkpoint cut in half
        torch.save(resnet18_state, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError):
        read_state_dict(path)
    with pytest.raises(WeightsError, match="no checkpoint file"):
        read_state_dict(tmp_path / "missing.pth")
