"""What a block of a network is, for every family: the unit that gradient checkpointing wraps and that a stage
trace counts (a residual block of ResNet, an inverted residual of MobileNet, a dense layer of DenseNet, a conv layer
of VGG)."""

from __future__ import annotations

from torch import nn

_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def block_names(model: nn.Module) -> list[str]:
    """Dotted names of the blocks: modules holding a convolution, found under plain containers only
    (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``), in registration order."""
    found: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if not any(isinstance(m, nn.modules.conv._ConvNd) for m in child.modules()):
                continue
            if type(child) is nn.Sequential or isinstance(child, _CONTAINERS):
                visit(name + ".", child)
            else:
                found.append(name)

    visit("", model)
    return found
