"""Deployment: the inference form of a model and its export, each step checked against the model it came from.

- :mod:`~archlab.deploy.graph`: the model's torch.fx dataflow graph (tracing, sub-trees, module replacement).
- :mod:`~archlab.deploy.fold`: BatchNorm folded into the conv before it (exact on every registered model).
- :mod:`~archlab.deploy.onednn`: on CPU, each conv run with its activation / residual add as one oneDNN primitive.
- :mod:`~archlab.deploy.onednn_graph`: on CPU, a plain call runs the whole model as a primitive plan or compiled by
  oneDNN Graph.
- :mod:`~archlab.deploy.primitive_plan`: the model as a fixed list of oneDNN primitives, called through oneDNN's C
  API (:mod:`~archlab.deploy.dnnl_capi`); the plan and the oneDNN objects it owns in
  :mod:`~archlab.deploy.plan_objects`, the steps that only move bytes in :mod:`~archlab.deploy.plan_layout`, its
  weights and activations in buffers placed by :mod:`~archlab.deploy.arena`.
- :mod:`~archlab.deploy.form`: :func:`fuse`, the three above as one call, in fp32 or bf16.
- :mod:`~archlab.deploy.memory`: freed memory kept for reuse (glibc), so a forward pass reuses its pages.
- :mod:`~archlab.deploy.precision`: fp32 / bf16, and whether this CPU computes bf16 natively.
- :mod:`~archlab.deploy.export`: ONNX, torch.export (``.pt2``) and OpenVINO IR files, checked by running them.
- :mod:`~archlab.deploy.runtimes`: the model made ready in eager, fused, compile, ONNX Runtime or OpenVINO.
- :mod:`~archlab.deploy.timing`: those runtimes timed side by side, each in its own process.
"""

from archlab.deploy.fold import FuseSummary, fold_bn_into_conv
from archlab.deploy.form import fuse
from archlab.deploy.memory import keep_freed_memory

__all__ = ["FuseSummary", "fold_bn_into_conv", "fuse", "keep_freed_memory"]
