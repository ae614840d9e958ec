"""Gradient checkpointing (archlab.checkpointing): less memory in training, exactly the same training."""

from __future__ import annotations

import copy

import pytest
import torch

import archlab
from archlab.checkpointing import is_checkpointed
from archlab.models.base import block_names


def smallest_per_family() -> list[str]:
    best: dict[str, tuple[int, str]] = {}
    for name in archlab.list_models():
        card = archlab.model_card(name)
        if card.params and (card.family not in best or card.params < best[card.family][0]):
            best[card.family] = (card.params, name)
    return sorted(name for _, name in best.values())


def saved_bytes_and_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, float]:
    """Bytes autograd keeps for backward (outside checkpointed blocks), then the loss after backward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    torch.manual_seed(1)  # the same dropout / drop-path draws for both models
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.training_loss(model(x), y)  # GoogLeNet: with its auxiliary classifiers' losses
    loss.backward()
    return total, loss.item()


@pytest.mark.parametrize("name", smallest_per_family())
def test_checkpointed_training_step_is_exact_and_keeps_less(name):
    card = archlab.model_card(name)
    torch.manual_seed(0)
    # Inception-v3's auxiliary classifier needs 299x299 inputs in training mode; at 64 it trains without it.
    kwargs = dict(aux_logits=False) if name == "inception_v3" else {}
    try:  # stochastic depth where the family has residual branches: the rerun must draw the same masks
        plain = archlab.create_model(name, num_classes=5, drop_path_rate=0.2, **kwargs).train()
    except ValueError:
        plain = archlab.create_model(name, num_classes=5, **kwargs).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    assert block_names(ckpt) and all(is_checkpointed(ckpt.get_submodule(b)) for b in block_names(ckpt))
    assert ckpt.state_dict().keys() == plain.state_dict().keys()  # checkpoints load either way
    size = max(card.min_input_size, 64 if card.input_size > 64 else card.input_size)
    x, y = torch.randn(2, 3, size, size), torch.tensor([1, 3])
    plain_bytes, plain_loss = saved_bytes_and_step(plain, x, y)
    ckpt_bytes, ckpt_loss = saved_bytes_and_step(ckpt, x, y)
    assert ckpt_loss == plain_loss
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.equal(a.grad, b.grad), n
    for (n, a), b in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(a, b), n  # BatchNorm running statistics and counters saw each batch once
    assert ckpt_bytes < plain_bytes


def test_eval_disable_and_copies():
    model = archlab.create_model("resnet18", num_classes=3)
    model.set_grad_checkpointing()
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    reference = copy.deepcopy(model)
    reference.set_grad_checkpointing(False)
    assert not any(is_checkpointed(m) for m in reference.modules())
    assert type(reference.layer1[0]).__name__ == "BasicBlock"
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    # A deep copy (an EMA of the weights) runs its own weights, not the original's.
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        assert not torch.equal(twin(x), model(x))
