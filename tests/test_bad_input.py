"""The README's promise, walked over every command: bad input is answered with one line on stderr,
"archlab: error: ...", exit code 2, never a traceback. A new command gets rows in BAD_INPUTS (a test fails until it
has them). Then the library's side of the same promise: public functions that say what they take, spec values that
are no numbers, data with bad files, memory that cannot suffice, temporary files left by a killed write."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import archlab
from archlab.cli import main
from archlab.cli.main import COMMANDS


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Things a user might give by mistake: text, JSON, random bytes, a pickle that runs code, a file where a folder
    is expected."""
    root = tmp_path_factory.mktemp("bad")
    made = {"text": "hello\n", "json": '{"weights": 1}\n'}
    paths = {}
    for name, text in made.items():
        (root / f"{name}.pt").write_text(text)
        paths[name] = str(root / f"{name}.pt")
    (root / "random.bin").write_bytes(os.urandom(4096))
    paths["random"] = str(root / "random.bin")
    (root / "evil.pth").write_bytes(pickle.dumps({"state_dict": _RunsCode()}))
    paths["evil"] = str(root / "evil.pth")
    paths["file"] = paths["text"]  # a file where a folder must be
    paths["dir"] = str(root)
    return paths


NOT_A_CHECKPOINT = "not a checkpoint, or truncated or corrupt"
# command -> rows of (argv after the command, with {name} filled from `files`; what the one line must say)
BAD_INPUTS: dict[str, list[tuple[list[str], str]]] = {
    "list": [(["no-such-model*"], "no model matches")],
    "card": [(["resnet5"], "unknown model 'resnet5'; did you mean")],
    "summary": [(["resnet18", "--depth", "0"], "--depth must be >= 1"),
                (["mobilenet_v2:width_mult=nan"], "width_mult wants a finite number, got 'nan'"),
                (["mobilenet_v2:width_mult=abc"], "width_mult wants a finite number"),
                (["regnet:wa=-1"], "wa (width slope) must be >= 0"),
                (["regnet:wm=1"], "wm (width multiplier) must be > 1"),
                (["roadmap_7_kernel7:norm=foo"], "norm must be one of batch, layer")],
    "trace": [(["resnet18", "--plot", "{file}/p.png"], "does not exist"),
              (["resnet50:output_stride=abc"], "output_stride wants an integer")],
    "erf": [(["resnet18", "--mass", "2"], "must be in (0, 1]")],
    "cost": [(["--cin", "8", "--cout", "8", "--size", "8", "-k", "4"], "--kernel must be odd")],
    "scale": [(["--phi", "-1"], "finite number >= 0")],
    "compare": [(["resnet18", "--no-bench", "--out", "{file}/out"], "--out {file}/out: cannot write there"),
                (["no_such_net"], "unknown model")],
    "bench": [(["resnet50", "--input", "4000", "--batch", "64"], "needs at least"),
              (["torchvision:resnet50", "--input", "4000", "--batch", "64"], "needs at least"),
              (["resnet18", "--vs", "caffe"], "--vs takes")],
    "export": [(["resnet18", "--onnx", "{dir}"], "is a folder"),
               (["resnet18", "--pt2", "{file}/x.pt2"], "does not exist"),
               (["resnet50", "--onnx", "{dir}/big.onnx", "--input", "4096"], "may hold up to")],
    "train": [(["cifar_resnet20", "--data", "digits", "--out", "{file}/run"], "--out {file}/run: cannot write there"),
              (["cifar_resnet20", "--data", "digits", "--epochs", "2", "--warmup-epochs", "2"], "not shorter than"),
              (["cifar_resnet20", "--data", "digits", "--resume", "{text}"], "--resume takes a run folder"),
              (["cifar_resnet20", "--data", "digits", "--resume", "{dir}/none"], "no checkpoint")],
    "study": [(["no-such-stdy"], "unknown study 'no-such-stdy'"),
              (["degradation", "--workers", "0"], "--workers: must be >= 1")],
    "search": [(["compound", "--grid", "1.0:1.05:0.05"], "no grid point has alpha*beta^2*gamma^2 within 0.08 of 2; "
                "the nearest, alpha=1.05 beta=1.05 gamma=1.05, gives 1.2763 (0.7237 away)"),
               (["compound", "--grid", "0.9:1.4:0.05"], "alpha, beta and gamma must be >= 1"),
               (["compound", "--base", "cifar_resnet20:width_mult=abc"],
                "--base 'cifar_resnet20:width_mult=abc' does not build: model spec"),
               (["compound", "--base", "mobilenet_v2"], "compound scaling needs a builder that takes depth and width"),
               (["compound", "--trials", "0"], "--trials: must be >= 1"),
               (["compound", "--time-limit", "0"], "expected a duration > 0"),
               (["mnas", "--sampler", "cmaes"], "unknown --sampler 'cmaes'; choose random, tpe, nsga2"),
               (["mnas", "--cost", "flops"], "unknown --cost 'flops'; choose latency, macs"),
               (["mnas", "--target-ms", "0"], "--target-ms must be > 0"),
               (["mnas", "--target-ms", "-2.5"], "--target-ms must be > 0"),
               (["mnas", "--cost", "macs", "--target-ms", "5"], "it needs --cost latency"),
               (["mnas", "--trials", "0"], "--trials: must be >= 1"),
               (["space", "--macs", "0.001:0.002", "--max-tries", "3"],
                "space anynet: no sample within the multiply-add band 0.001M-0.002M after 3 tries (the nearest had"),
               (["space", "--space", "anynet,nowhere.toml"], "--space 'nowhere.toml': neither a built-in space"),
               (["space", "--macs", "8:4"], "--macs '8:4': needs 0 <= LO <= HI")],
    "eval": [(["cifar_resnet20", "--data", "digits", "--weights", "{text}"], NOT_A_CHECKPOINT),
             (["cifar_resnet20", "--data", "digits", "--weights", "{json}"], NOT_A_CHECKPOINT),
             (["cifar_resnet20", "--data", "digits", "--weights", "{random}"], NOT_A_CHECKPOINT),
             (["cifar_resnet20", "--data", "digits", "--weights", "{evil}"],
              "refused: a pickle holding objects that are not tensors (posix.system)")],
}
if not torch.cuda.is_available():
    BAD_INPUTS["eval"].append((["cifar_resnet20", "--data", "digits", "--weights", "{text}", "--device", "cuda"],
                               "no CUDA device"))
    BAD_INPUTS["bench"].append((["resnet18", "--device", "cuda"], "no CUDA GPU"))
CASES = [(command, argv, expected) for command, rows in BAD_INPUTS.items() for argv, expected in rows]


def test_every_command_has_bad_inputs_in_the_table() -> None:
    assert set(COMMANDS) <= set(BAD_INPUTS), f"add rows for {sorted(set(COMMANDS) - set(BAD_INPUTS))}"


@pytest.mark.parametrize(("command", "argv", "expected"), CASES,
                         ids=[f"{c}-{i}" for c, rows in BAD_INPUTS.items() for i in range(len(rows))])
def test_bad_input_is_one_line_and_exit_2(command, argv, expected, files, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # anything a command might write by mistake lands here
    argv = [a.format(**files) for a in argv]
    capsys.readouterr()
    assert main([command, *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("archlab: error: ") and expected.format(**files) in err, err
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------------ the Python API


@pytest.mark.parametrize("call", [
    lambda: __import__("archlab.deploy", fromlist=["fuse"]).fuse("resnet50"),
    lambda: __import__("archlab.checkpointing", fromlist=["x"]).set_grad_checkpointing("resnet50"),
    lambda: archlab.load_reference_weights("resnet50", {}),
], ids=["fuse", "set_grad_checkpointing", "load_reference_weights"])
def test_functions_that_take_a_model_say_so_when_given_a_name(call) -> None:
    with pytest.raises(TypeError, match=r"takes a model .*got str 'resnet50'; pass archlab.create_model\('resnet50'\)"):
        call()


def _numeric_keys() -> list[tuple[str, str]]:
    from archlab.registry import _accepted_arguments, _entry, _numeric_arguments

    one_per_family = {}
    for name in archlab.list_models():
        one_per_family.setdefault(archlab.model_card(name).family, name)
    own_checks = {"num_classes", "in_chans", "drop_rate", "drop_path_rate"}  # create_model checks these itself
    return [(name, key) for name in one_per_family.values()
            for key in sorted(set(_numeric_arguments(_entry(name).builder))
                              & (_accepted_arguments(_entry(name).builder) or set())) if key not in own_checks]


@pytest.mark.parametrize(("name", "key"), _numeric_keys())
@pytest.mark.parametrize("value", ["abc", "nan", float("nan"), float("inf"), True])
def test_every_numeric_builder_key_refuses_what_is_no_number(name: str, key: str, value) -> None:
    with pytest.raises(ValueError, match=rf"{key} wants (a finite number|an integer)"):
        archlab.create_model(name, **{key: value})


def test_a_spec_with_no_number_names_the_spec() -> None:
    from archlab.registry import create_from_spec

    with pytest.raises(ValueError, match=r"model spec 'mobilenet_v2:width_mult=nan': width_mult wants a finite"):
        create_from_spec("mobilenet_v2:width_mult=nan")


# -------------------------------------------------------------------------------------------------- data


def _image_folder(root: Path, bad: dict[str, bytes]) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(root / split / cls / f"{i}.png")
    for rel, content in bad.items():
        (root / rel).write_bytes(content)
    return root


BAD_FILES = {"train/a/x.png": b"not an image", "train/b/y.jpg": b"\x00" * 64, "val/a/z.png": b"GIF89a"}


def test_every_undecodable_image_is_named_in_one_error(tmp_path) -> None:
    from archlab.preprocessing import Preprocessing
    from archlab.train.data import DataError, build_data

    root = _image_folder(tmp_path, BAD_FILES)
    prep = Preprocessing(8, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(DataError, match="3 undecodable images") as info:
        build_data(str(root), lambda kind: prep)
    assert all(str(root / rel) in str(info.value) for rel in BAD_FILES)
    bundle = build_data(str(root), lambda kind: prep, bad_images="skip")
    assert sorted(bundle.skipped) == sorted(str(root / rel) for rel in BAD_FILES)
    assert len(bundle.train) == 6 and len(bundle.val) == 6


def test_training_without_bad_images_names_them_in_the_run_folder(tmp_path, capsys) -> None:
    root = _image_folder(tmp_path / "data", BAD_FILES)
    run = tmp_path / "run"
    assert main(["train", "cifar_resnet20", "--data", str(root), "--epochs", "1", "--batch-size", "4",
                 "--input-size", "8", "--workers", "0", "--bad-images", "skip", "--out", str(run), "--json"]) == 0
    assert sorted((run / "skipped_images.txt").read_text().split()) == sorted(str(root / r) for r in BAD_FILES)
    assert '"bad_images": "skip"' in (run / "config.json").read_text()


def test_a_cifar_folder_with_a_truncated_batch_names_the_file(tmp_path) -> None:
    from torchvision.datasets import CIFAR10

    from archlab.preprocessing import Preprocessing
    from archlab.train.data import DataError, build_data

    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    for name in [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]:
        (folder / name).write_bytes(b"truncated")
    with pytest.raises(DataError) as info:
        build_data(str(tmp_path), lambda kind: Preprocessing(32, (0.5,) * 3, (0.5,) * 3))
    assert "data_batch_1" in str(info.value) and "truncated or corrupt" in str(info.value)
    assert "download=True" not in str(info.value)


# -------------------------------------------------------------------------------------- settings and runs


def test_a_default_warmup_is_scaled_to_a_short_run_and_recorded() -> None:
    from archlab.train.recipe import resolve_config

    assert resolve_config({"model": "cifar_resnet20", "data": "digits", "epochs": 2}, "r").warmup_epochs == 0.4
    assert resolve_config({"model": "cifar_resnet20", "data": "digits"}, "r").warmup_epochs == 1.0
    given = {"model": "cifar_resnet20", "data": "digits", "epochs": 2, "warmup_epochs": 0.5}
    assert resolve_config(given, "r").warmup_epochs == 0.5
    with pytest.raises(ValueError, match="not shorter than --epochs 2"):
        resolve_config({**given, "warmup_epochs": 3}, "r")


def test_a_killed_writes_temporary_file_is_removed_and_a_live_ones_kept(tmp_path) -> None:
    from archlab.train.checkpoint import remove_stale_temporaries

    dead_pid = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = tmp_path / f".checkpoint.pt.{dead_pid}.tmp"
    live = tmp_path / f".checkpoint.pt.{os.getpid()}.tmp"
    for f in (stale, live):
        f.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists()


def test_memory_floor_is_refused_up_front_and_never_above_what_runs() -> None:
    from archlab.analysis.profile import check_fits, profile

    p = profile("resnet18", 64, batch_size=2, training_memory=True)
    assert 4 * p.params < p.minimum_memory_bytes() <= 4 * p.params + p.activation_bytes
    assert p.minimum_memory_bytes("train") > p.minimum_memory_bytes()
    check_fits("resnet18", 64, 2)  # fits: returns its profile
    with pytest.raises(ValueError, match=r"resnet50 at 4096x4096, batch 64: one infer step needs at least"):
        check_fits("resnet50", 4096, 64)
