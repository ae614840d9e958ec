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
