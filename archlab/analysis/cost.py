"""The analytic multiply-add counts of a convolution, as the papers write them.

A standard k x k convolution producing an H x W x Cout map from Cin channels costs H*W*Cin*Cout*k^2 multiply-adds
(each of the ``groups`` groups sees Cin/groups inputs, so a grouped conv costs 1/groups of that; ResNeXt, Xie et
al. 2016, arXiv:1611.05431). MobileNet's depthwise separable convolution (Howard et al. 2017, "MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications", arXiv:1704.04861, eq. 5-6) replaces it by a k x k
depthwise conv (H*W*Cin*k^2) and a 1x1 pointwise conv (H*W*Cin*Cout), a reduction of 1/Cout + 1/k^2 — about 8-9x
fewer operations for 3x3 kernels. ``H`` and ``W`` are the OUTPUT size; bias additions are not counted.
"""

from __future__ import annotations


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def conv_cost(
    h: int, w: int, c_in: int, c_out: int, k: int, groups: int = 1, depthwise_separable: bool = False
) -> int:
    """Multiply-adds of a k x k convolution with an ``h`` x ``w`` output (see the module docstring)."""
    _check_positive(h=h, w=w, c_in=c_in, c_out=c_out, k=k, groups=groups)
    if depthwise_separable:
        if groups != 1:
            raise ValueError("a depthwise separable conv fixes its own groups; leave groups=1")
        return h * w * (c_in * k * k + c_in * c_out)
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    return h * w * c_in * c_out * k * k // groups


def separable_reduction(c_out: int, k: int) -> float:
    """Cost of a depthwise separable conv relative to a standard one: 1/Cout + 1/k^2 (MobileNet, eq. 5/eq. 4)."""
    _check_positive(c_out=c_out, k=k)
    return 1 / c_out + 1 / k**2


def output_size(size: int, k: int, stride: int = 1) -> int:
    """Output height (= width) of a k x k convolution with padding k//2 on a ``size`` x ``size`` input."""
    return (size + 2 * (k // 2) - k) // stride + 1


def counted_macs(c_in: int, c_out: int, k: int, size: int, stride: int = 1, groups: int = 1) -> int:
    """Multiply-adds of a real ``nn.Conv2d`` (padding k//2) on a ``size`` x ``size`` input, counted by
    :func:`archlab.analysis.profile` on the meta device: the check that the formulas describe real layers."""
    import torch
    from torch import nn

    from archlab.analysis.profile import profile

    with torch.device("meta"):
        conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    return profile(conv, size, training_memory=False).macs


def cost_rows(c_in: int, c_out: int, k: int, size: int, stride: int = 1, groups: list[int] = ()) -> list[dict]:
    """Standard, grouped and depthwise-separable versions of one conv layer: params, multiply-adds by the
    formula and as counted on a real layer, and cost relative to the standard conv."""
    if k % 2 == 0:
        raise ValueError(f"kernel must be odd (padding k//2 keeps the size), got {k}")
    out = output_size(size, k, stride)
    standard = conv_cost(out, out, c_in, c_out, k)
    rows = [dict(layer=f"standard {k}x{k}", params=c_in * c_out * k * k, macs=standard,
                 counted=counted_macs(c_in, c_out, k, size, stride))]
    for g in groups:
        if g > 1:
            rows.append(dict(layer=f"grouped {k}x{k}, {g} groups", params=c_in * c_out * k * k // g,
                             macs=conv_cost(out, out, c_in, c_out, k, groups=g),
                             counted=counted_macs(c_in, c_out, k, size, stride, g)))
    depthwise = counted_macs(c_in, c_in, k, size, stride, c_in)
    pointwise = counted_macs(c_in, c_out, 1, out)
    rows.append(dict(layer=f"depthwise separable: {k}x{k} depthwise + 1x1 pointwise",
                     params=c_in * k * k + c_in * c_out, macs=conv_cost(out, out, c_in, c_out, k,
                                                                         depthwise_separable=True),
                     counted=depthwise + pointwise))
    for r in rows:
        r["relative"] = r["macs"] / standard
    return rows
