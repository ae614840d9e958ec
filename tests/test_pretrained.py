"""Released ImageNet weights: which exist, that they fit our models, and loading them (download simulated: the
test machines have no network, so the download writes the reference implementation's own seeded weights)."""

from __future__ import annotations

import re
import urllib.error

import pytest
import torch

import archlab
from archlab.pretrained import TIMM_WEIGHTS, pretrained_weights, resolve_pretrained
from archlab.weights import WeightsError
from helpers import build_reference, count_params

WITH_WEIGHTS = [n for n in archlab.list_models() if pretrained_weights(archlab.model_card(n))]
# Cards whose preprocessing is the paper's, not that of the released weights' evaluation (the card's notes say so).
CARD_DIFFERS_FROM_RELEASE = {"efficientnet_b2": "card: the paper's 260 px; torchvision evaluates its weights at 288"}


def test_every_model_with_a_released_reference_checkpoint_offers_it() -> None:
    expected = {n for n in archlab.list_models()
                if archlab.model_card(n).reference_source == "torchvision" or n in TIMM_WEIGHTS}
    assert set(WITH_WEIGHTS) == expected
    assert not pretrained_weights(archlab.model_card("cifar_resnet20")) and not pretrained_weights(archlab.model_card("seresnet101"))


@pytest.mark.parametrize("name", WITH_WEIGHTS)
def test_released_weights_fit_the_model_and_the_card(name: str) -> None:
    weights = pretrained_weights(archlab.model_card(name))
    assert [w.default for w in weights].count(True) == 1 and weights[0].default
    # torchvision counts GoogLeNet's released layout, without the auxiliary heads its pretrained builder drops.
    released_layout = dict(aux_logits=False) if name == "googlenet" else {}
    with torch.device("meta"):
        params = count_params(archlab.create_model(name, **released_layout))
    for w in weights:
        assert w.num_params in (None, params), w.tag  # torchvision's registry gives the count; it must be ours
    card, default = archlab.model_card(name), weights[0]
    if card.top1 is not None and card.top1_source and "torchvision" in card.top1_source:
        assert default.top1 == pytest.approx(card.top1)  # pretrained=True gives the weights the card quotes
    if name not in CARD_DIFFERS_FROM_RELEASE:
        prep = default.preprocessing
        assert (prep.input_size, prep.interpolation, tuple(prep.mean), tuple(prep.std)) == (
            card.input_size, card.interpolation, tuple(card.mean), tuple(card.std))
        assert round(prep.input_size / prep.crop_pct) == round(card.input_size / card.crop_pct)


def test_timm_weights_table_is_timms_default_configuration() -> None:
    from timm.models import get_pretrained_cfg

    for name, (repo, crop_pct, interpolation, mean, std) in TIMM_WEIGHTS.items():
        cfg = get_pretrained_cfg(archlab.model_card(name).reference_name)
        assert (cfg.hf_hub_id, cfg.crop_pct, cfg.interpolation) == (repo, crop_pct, interpolation), name
        assert tuple(cfg.mean) == mean and tuple(cfg.std) == std and cfg.input_size[1:] == (224, 224)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's cache in tmp_path, and a download that writes the reference's seeded weights as the
    published file would hold them (DenseNet: torchvision's legacy 'norm.1' names)."""
    calls = []
    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        name = next(w.model for n in WITH_WEIGHTS for w in pretrained_weights(archlab.model_card(n)) if w.url == url)
        torch.manual_seed(0)
        state = build_reference(archlab.model_card(name)).state_dict()
        if url.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, dst)
        else:
            legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
            torch.save(legacy, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    yield calls
    torch.hub.set_dir(old_dir)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenet_v3_small", "mobilenet_v1"])
def test_pretrained_model_computes_what_the_reference_does_with_the_released_file(hub, name: str) -> None:
    ours = archlab.create_model(name, pretrained=True).eval()
    torch.manual_seed(0)
    ref = build_reference(archlab.model_card(name)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    (url, hash_prefix), = hub
    assert ours.pretrained_weights.url == url
    if "download.pytorch.org" in url:  # torchvision's file names carry a SHA-256 prefix: it is checked
        assert hash_prefix and url.rsplit("/", 1)[-1].endswith(f"-{hash_prefix}.pth")
    archlab.create_model(name, pretrained=True)
    assert len(hub) == 1  # the second build reads the cached file


def test_pretrained_with_other_classes_keeps_the_backbone_and_replaces_the_classifier(hub) -> None:
    model = archlab.create_model("resnet18", pretrained="imagenet1k_v1", num_classes=10)
    torch.manual_seed(0)
    ref = build_reference(archlab.model_card("resnet18")).state_dict()
    ours = model.state_dict()
    assert ours["fc.weight"].shape == (10, 512)
    for key, value in ref.items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key


def test_pretrained_errors_say_what_is_wrong(hub, monkeypatch) -> None:
    with pytest.raises(ValueError, match="available: IMAGENET1K_V1, IMAGENET1K_V2"):
        archlab.create_model("resnet50", pretrained="IMAGENET1K_V3")
    with pytest.raises(ValueError, match="no released pretrained weights"):
        archlab.create_model("cifar_resnet20", pretrained=True)
    with pytest.raises(ValueError, match="3-channel"):
        archlab.create_model("resnet18", pretrained=True, in_chans=1)
    with pytest.raises(WeightsError, match="wrong shapes"):  # another architecture than the released one
        archlab.create_model("efficientnet", phi=1, pretrained=True)
    assert resolve_pretrained(archlab.model_card("resnet50"), "imagenet1k_v2").tag == "IMAGENET1K_V2"

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as info:
        archlab.create_model("vgg11", pretrained=True)
    w = resolve_pretrained(archlab.model_card("vgg11"))
    assert w.url in str(info.value) and str(w.cache_path) in str(info.value) and "\n" not in str(info.value)


def _one_line_failure(capsys, argv: list[str]) -> str:
    from archlab.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_eval_pretrained_uses_the_released_preprocessing_and_refuses_other_classes(hub, tmp_path, capsys) -> None:
    import json

    from PIL import Image

    from archlab.cli import main

    root = tmp_path / "imagenet"
    for i in range(1000):  # an ImageNet-shaped val/ folder: 1000 classes, one tiny image each
        (root / "val" / f"n{i:08d}").mkdir(parents=True)
        Image.new("RGB", (12, 12), (i % 256, (7 * i) % 256, (13 * i) % 256)).save(root / "val" / f"n{i:08d}" / "a.png")
    capsys.readouterr()
    assert main(["eval", "mobilenet_v3_small", "--pretrained", "--data", str(root), "--batch-size", "250",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pretrained"] == "IMAGENET1K_V1" and result["images"] == 1000
    assert result["preprocessing"] == resolve_pretrained(archlab.model_card("mobilenet_v3_small")).preprocessing.to_dict()
    err = _one_line_failure(capsys, ["eval", "resnet18", "--pretrained", "--data", "digits"])
    assert "1000 classes" in err and "10" in err
    assert "available" in _one_line_failure(capsys, ["eval", "resnet18", "--pretrained", "V9", "--data", "digits"])
    _one_line_failure(capsys, ["eval", "resnet18", "--pretrained", "--weights", "x.pt", "--data", "digits"])


def test_train_pretrained_starts_from_the_released_weights(hub, tmp_path, capsys) -> None:
    import json

    from archlab.cli import main

    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "resnet18", "--data", "digits", "--pretrained", "--epochs", "1", "--lr", "1e-12",
                 "--weight-decay", "0", "--warmup-epochs", "0", "--out", str(run), "--json"]) == 0, capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["pretrained"] is True
    trained = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    ref = build_reference(archlab.model_card("resnet18")).state_dict()
    assert trained["fc.weight"].shape == (10, 512)  # digits: a new 10-class classifier
    torch.testing.assert_close(trained["layer4.1.conv2.weight"], ref["layer4.1.conv2.weight"], rtol=0, atol=1e-9)


def test_a_file_put_in_the_cache_by_hand_must_be_the_released_one(tmp_path) -> None:
    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        w = resolve_pretrained(archlab.model_card("resnet18"))
        w.cache_path.parent.mkdir(parents=True)
        torch.save(build_reference(archlab.model_card("resnet18")).state_dict(), w.cache_path)
        with pytest.raises(WeightsError, match="not the released file"):
            archlab.create_model("resnet18", pretrained=True)
    finally:
        torch.hub.set_dir(old_dir)
    assert archlab.create_model("resnet18", pretrained=None).fc.out_features == 1000  # None: no weights



def test_export_of_the_released_weights(hub, tmp_path, capsys) -> None:
    import json

    from archlab.cli import main

    path = tmp_path / "m.pt2"
    argv = ["export", "mobilenet_v3_small", "--pretrained", "--pt2", str(path), "--input", "64", "--repeats", "1",
            "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["weights"].startswith("released weights IMAGENET1K_V1")
    torch.manual_seed(0)
    ref = build_reference(archlab.model_card("mobilenet_v3_small")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(path)).module()(x), ref(x), rtol=1e-5, atol=1e-5)
