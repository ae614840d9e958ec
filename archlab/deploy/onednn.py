"""oneDNN inference form: each convolution run together with what follows it (its activation, or a residual add
and the activation after that) as one oneDNN primitive, with weights reordered once into oneDNN's layout.

Why it is faster. Once BatchNorm is folded (:func:`archlab.deploy.fuse`), a CPU forward pass is convolutions,
plus one memory-bound pass over each conv's output per activation and per residual add. oneDNN applies those as
*post-ops* while the conv's output tile is still in cache. And a channels-last conv in PyTorch eager reorders its
weight into oneDNN's blocked layout on every call; a *prepacked* weight is reordered once. torch.compile's
inductor does both on CPU (with freezing); this module does them in eager mode, module by module, so the model
keeps its class and API (``forward_features``, ``feature_info``, ``card``) and its ``state_dict`` keys.

Where it applies: float32 (or, in a bf16 form, bfloat16) channels-last input on CPU, without autograd. That is
oneDNN's native layout; an NCHW input would come back channels-last (and was measured slower on depthwise and
some 1x1 convs). Everywhere else
(another device, dtype or memory format, autograd, fx tracing, TorchScript or ONNX export, torch.compile, which
does its own fusion), each fused conv runs the plain conv, add and activation it replaced, so the model stays
correct everywhere. The post-ops compute the same function, so outputs equal the unfused model up to float
rounding (tested over the registry at 1e-4).

How patterns are found: on the fx dataflow graph, as for the BatchNorm fold: a conv whose output (through the
``nn.Identity`` left by a fold) has exactly one reader, that reader being an activation, or an ``add`` of a
shortcut whose single reader may be an activation. An activation module of its own is a module swap (conv ->
:class:`FusedConv2d` holding the activation, activation -> ``nn.Identity``). A residual add, a functional activation
(``F.relu(x)``, ``x.sigmoid()``) or an activation module shared by several call sites (torchvision's ResNet blocks
call one ``self.relu`` three times) lives in a block's ``forward`` code, so the block whose code performs it is
re-traced and replaced by an ``fx.GraphModule`` of the same name and submodules in which the fused conv takes the
activation's place (and the shortcut as a second input).
"""

from __future__ import annotations

import functools
import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn

from archlab.deploy.fold import FuseSummary
from archlab.deploy.graph import TracedSubtree, Tracer, replace_module, traced_subtrees

# Activation module -> oneDNN eltwise post-op (name, scalars), as PyTorch's mkldnn fusion names them.
_POST_OPS: dict[type[nn.Module], tuple[str, list[float]]] = {
    nn.ReLU: ("relu", []),
    nn.ReLU6: ("hardtanh", [0.0, 6.0]),
    nn.SiLU: ("swish", []),
    nn.Hardswish: ("hardswish", []),
    nn.Hardsigmoid: ("hardsigmoid", []),
    nn.Sigmoid: ("sigmoid", []),
}
_DTYPES = (torch.float32, torch.bfloat16)
_ADDS = (operator.add, operator.iadd, torch.add)
# Activations written as calls in a block's code (torchvision's `self.relu` shared by three call sites is handled
# like these: a shared module cannot be swapped for an identity, so the block's graph is rewritten instead).
_FUNCTIONAL: dict[object, type[nn.Module]] = {
    F.relu: nn.ReLU, torch.relu: nn.ReLU, F.relu6: nn.ReLU6, F.silu: nn.SiLU, F.hardswish: nn.Hardswish,
    F.hardsigmoid: nn.Hardsigmoid, torch.sigmoid: nn.Sigmoid, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
}


@functools.cache
def available() -> bool:
    """Whether this PyTorch build has oneDNN and its fused convolution op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv2d(nn.Conv2d):
    """``act(conv(x) [+ residual])`` as one oneDNN primitive with a prepacked weight (see the module docstring for
    where it applies; elsewhere it computes the same thing with the plain ops). Same parameters as the conv it
    replaces; ``act`` is the original activation module (or None)."""

    fx_leaf = True  # archlab's tracer keeps it as one call (its forward branches on the input's properties)

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None = None, residual: bool = False) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        self.weight, self.bias = conv.weight, conv.bias  # the same Parameters: no copy, same state_dict
        self.act = act
        self.residual = residual
        self.post_op, self.post_op_scalars = _POST_OPS[type(act)] if act is not None else ("none", [])
        self._geometry = (list(self.padding), list(self.stride), list(self.dilation))
        # Per input signature: the prepacked weight, or False where the fused path does not apply (see _call_weight).
        self._packed: dict[tuple, torch.Tensor | bool] = {}

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        """Plain 2-d conv with zero padding given as numbers (not 'same', not reflect)."""
        return type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)

    def extra_repr(self) -> str:
        post = " + residual" if self.residual else ""
        return super().extra_repr() + f", post_ops=conv{post}{' -> ' + self.post_op if self.act else ''}"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_packed"] = {}  # oneDNN tensors neither copy nor pickle; they are rebuilt on the next call
        return state

    def _out_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        spatial = [
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(x.shape[2:], self.padding, self.dilation, self.kernel_size, self.stride)
        ]
        return (x.shape[0], self.out_channels, *spatial)

    def _use_onednn(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        if isinstance(x, fx.Proxy) or torch.jit.is_scripting() or torch.jit.is_tracing():
            return False
        if torch.compiler.is_compiling() or not available() or torch.is_autocast_enabled("cpu"):
            return False  # compile fuses by itself; autocast would not cast the fused op's inputs
        tensors = (x, self.weight) if residual is None else (x, self.weight, residual)
        if x.dtype not in _DTYPES or any(t.device.type != "cpu" or t.dtype != x.dtype or t.layout != torch.strided
                                         for t in tensors):
            return False  # float32, or bfloat16 throughout (fuse(precision="bf16")): oneDNN has both kernels
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return False  # the fused op has no backward
        if x.dim() != 4 or x.numel() == 0 or not x.is_contiguous(memory_format=torch.channels_last):
            return False
        if residual is not None and (tuple(residual.shape) != self._out_shape(x)
                                     or not residual.is_contiguous(memory_format=torch.channels_last)):
            return False
        return True

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        if self._is_matrix_product(x):
            return self.weight.detach().flatten(1)  # a 2-d view: forward runs F.linear
        # oneDNN picks the blocked weight layout for an input shape: packed once per shape (and weight change).
        return torch._C._nn.mkldnn_reorder_conv2d_weight(
            self.weight.detach().to_mkldnn(), *self._geometry, self.groups, list(x.shape))

    def _is_matrix_product(self, x: torch.Tensor) -> bool:
        """A 1x1 conv on a 1x1 map (squeeze-excitation's two convs): a matrix product, for which the fused
        primitive's fixed setup cost (~20 us a call) is most of its time. Measured on a 480 -> 120 SE conv with
        ReLU at batch 1 (benchmarks/per_call_costs.py): this module's call, F.linear then the activation, 13.8 us;
        the fused primitive alone 26.9 us."""
        return (x.shape[2] == x.shape[3] == 1 and self.kernel_size == (1, 1) and self.stride == (1, 1)
                and self.padding == (0, 0) and self.groups == 1)

    def _call_weight(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor | None:
        """The prepacked weight when this call takes the fused path, else None. What :meth:`_use_onednn` decides
        depends on the input's signature (shape, dtype, device, autograd), the weight's, the global modes and the
        memory layout: the global modes and the layout are checked on every call, the rest once per signature
        (a batch-1 MobileNetV2 makes 52 of these calls per image, so their Python cost counts)."""
        if (type(x) is not torch.Tensor or torch.jit.is_scripting() or torch.jit.is_tracing()
                or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu")
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return None
        grad = torch.is_grad_enabled()
        w = self.weight
        # A weight made under torch.inference_mode has no version counter (only inference mode may change it in
        # place, unseen here).
        version = 0 if w.is_inference() else w._version
        key = (x.shape, x.dtype, x.device, grad and x.requires_grad, w.data_ptr(), version, w.dtype, w.device,
               grad and w.requires_grad,
               None if residual is None else (type(residual), residual.shape, residual.dtype, residual.device,
                                              grad and residual.requires_grad))
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= 8:
                self._packed.clear()
            packed = self._packed_weight(x) if self._use_onednn(x, residual) else False
            self._packed[key] = packed
        if packed is False or (residual is not None
                               and not residual.is_contiguous(memory_format=torch.channels_last)):
            return None
        return packed

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        w = self._call_weight(x, residual)
        if (w is None and type(x) is torch.Tensor and x.dim() == 4 and x.stride(1) == 1
                and not x.is_contiguous(memory_format=torch.channels_last) and not torch.jit.is_tracing()):
            # A channel slice of a channels-last tensor (ShuffleNet V2's split, a chunk of a concat): channels-last
            # but not dense. The plain conv would copy it as well; copied channels-last, it takes the fused path.
            # Not while tracing (the oneDNN Graph form, export): a recorded copy would split oneDNN Graph's
            # partitions; the trace records the plain conv, as for a model without this form.
            x = x.contiguous(memory_format=torch.channels_last)
            w = self._call_weight(x, residual)
        if w is not None:
            if w.dim() == 2:  # see _is_matrix_product
                y = F.linear(x.flatten(1), w, self.bias).view(x.shape[0], -1, 1, 1)
                if residual is not None:
                    y = y + residual
                return self.act(y) if self.act is not None else y
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, w, self.bias, *self._geometry, self.groups, self.post_op, self.post_op_scalars, None)
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, w, self.bias, *self._geometry, self.groups, "add", None,
                self.post_op if self.act is not None else None, self.post_op_scalars, None)
        y = self._conv_forward(x, self.weight, self.bias)
        if residual is not None:
            y = y + residual
        return self.act(y) if self.act is not None else y


# ---------------------------------------------------------------------------------------------- pattern search


def _after_identities(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """Follow a node's single reader through ``nn.Identity`` calls (folded BatchNorms, dropped drop-paths)."""
    while len(node.users) == 1:
        (user,) = node.users
        if user.op == "call_module" and isinstance(modules.get(user.target), nn.Identity):
            node = user
        else:
            break
    return node


def _activation_after(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[fx.Node, nn.Module] | None:
    """The node's only reader, with an equivalent activation module, when it is an activation oneDNN can apply
    to this node alone: a module (possibly shared by several call sites) or a functional / method call."""
    if len(node.users) != 1:
        return None
    (user,) = node.users
    if user.args != (node,):
        return None
    if user.op == "call_module" and type(modules.get(user.target)) in _POST_OPS and not user.kwargs:
        return user, modules[user.target]
    if user.op in ("call_function", "call_method") and set(user.kwargs) <= {"inplace"}:
        target = user.target
        if user.op == "call_method":
            target = target.rstrip("_")  # x.relu_() as x.relu(): the conv output is not read elsewhere
        if target in _FUNCTIONAL and (user.op == "call_method") == isinstance(target, str):
            return user, _FUNCTIONAL[target]()
    return None


def _code_owner(node: fx.Node, traced: TracedSubtree | None = None) -> str:
    """The module whose ``forward`` code makes this call ('' for the traced root's own code); a call_module
    node's stack ends with the called module itself, which is not its caller."""
    stack = list(node.meta.get("nn_module_stack") or {})
    if node.op == "call_module":
        stack = stack[:-1]
    if not stack:
        return ""
    return traced.name(stack[-1]) if traced is not None else stack[-1]


def _residual_add(end: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """``(add, shortcut)`` when the conv chain's only reader adds one shortcut tensor to it."""
    if len(end.users) != 1:
        return None
    (add,) = end.users
    if add.op != "call_function" or add.target not in _ADDS or add.kwargs or len(add.args) != 2:
        return None
    first, second = add.args
    # fx records `a += b` as `a + b`, but eager code writes into `a`'s tensor: when the conv output is the second
    # operand, the fused conv returns a new tensor instead, which is the same only if nothing else reads `a`.
    if first is end and isinstance(second, fx.Node):
        return add, second
    if second is end and isinstance(first, fx.Node) and len(first.users) == 1:
        return add, first
    return None


def _conv_nodes(graph: fx.Graph, modules: dict[str, nn.Module]) -> tuple[list[tuple[fx.Node, nn.Conv2d]], Counter]:
    """The graph's fusable convs (each module called once, on one input), and how often each module is called."""
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    return [
        (n, modules[n.target]) for n in graph.nodes
        if n.op == "call_module" and FusedConv2d.supports(modules.get(n.target)) and calls[n.target] == 1
        and len(n.args) == 1 and not n.kwargs
    ], calls


# ---------------------------------------------------------------------------------------------- rewriting


def _rewrite_block(block: nn.Module) -> fx.GraphModule | None:
    """``block`` re-traced with the epilogues its own ``forward`` code performs (a residual add, a functional or
    shared activation) fused into the conv before them; None when there are none. ``block`` is not modified."""
    graph = Tracer().trace(block)
    modules = dict(block.named_modules())
    convs, _ = _conv_nodes(graph, modules)
    fusions = []
    for node, conv in convs:
        end = _after_identities(node, modules)
        found = _residual_add(end)
        if found is not None:
            add, shortcut = found
            if _code_owner(add) != "":
                continue  # performed in a child's code: that child is its own block
            act = _activation_after(add, modules)
            first, args = add, (node.args[0], shortcut)
        else:
            act = _activation_after(end, modules)
            if act is None or _code_owner(act[0]) != "":
                continue
            first, args = act[0], (node.args[0],)
        last = act[0] if act is not None else first
        with graph.inserting_before(first):
            fused = graph.call_module(node.target, args)
        last.replace_all_uses_with(fused)
        dead = [last] + ([first] if first is not last else [])
        cur = end
        while cur is not node:
            dead.append(cur)
            cur = cur.args[0]
        for n in [*dead, node]:
            graph.erase_node(n)
        fusions.append((node.target, act[1] if act is not None else None, found is not None,
                        _describe(act[0]) if act is not None else None))
    if not fusions:
        return None
    graph.lint()
    rewritten = fx.GraphModule(block, graph, class_name=type(block).__name__)
    rewritten.train(block.training)
    rewritten.post_ops = []
    for conv_name, act, residual, act_name in fusions:
        replace_module(rewritten, conv_name, FusedConv2d(block.get_submodule(conv_name), act, residual=residual))
        rewritten.post_ops.append(f"{conv_name}{' + shortcut' if residual else ''}"
                                  f"{' -> ' + act_name if act_name else ''}")
    return rewritten


def _describe(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def fuse_conv_epilogues(model: nn.Module, summary: FuseSummary | None = None) -> nn.Module:
    """Rewrite an eval-mode (BatchNorm-folded) ``model`` in place so that every conv followed by an activation,
    or by a residual add (and an activation), runs as one :class:`FusedConv2d`. Records each fusion in
    ``summary.post_ops``. Returns ``model``."""
    summary = summary if summary is not None else FuseSummary()
    blocks: set[str] = set()  # modules whose forward code holds an epilogue to fuse: rewritten as graphs
    swaps: list[tuple[str, str]] = []
    for traced in traced_subtrees(model):
        modules = dict(traced.root.named_modules())
        convs, calls = _conv_nodes(traced.graph, modules)
        for node, _ in convs:
            end = _after_identities(node, modules)
            act = _activation_after(end, modules)
            if act is not None and act[0].op == "call_module" and calls[act[0].target] == 1:
                # An activation module of its own: a module swap is enough.
                swaps.append((traced.name(node.target), traced.name(act[0].target)))
                continue
            found = _residual_add(end)
            code = found[0] if found is not None else act[0] if act is not None else None
            owner = _code_owner(code, traced) if code is not None else ""
            if owner and traced.name(node.target).startswith(owner + "."):
                blocks.add(owner)
    for conv_name, act_name in swaps:
        replace_module(model, conv_name, FusedConv2d(model.get_submodule(conv_name), model.get_submodule(act_name)))
        replace_module(model, act_name, nn.Identity())
        summary.post_ops.append(f"{conv_name} -> {act_name}")
    for name in sorted(blocks):
        try:
            rewritten = _rewrite_block(model.get_submodule(name))
        except Exception:  # noqa: BLE001 - a block that does not trace on its own keeps its plain adds
            continue
        if rewritten is not None:
            replace_module(model, name, rewritten)
            summary.post_ops += [f"{name}.{d}" for d in rewritten.post_ops]
    for name, m in list(model.named_modules()):
        if FusedConv2d.supports(m):  # the convs left (shortcut convs, convs before a pool ...): prepacked only
            replace_module(model, name, FusedConv2d(m))
    for p in model.parameters():
        p.requires_grad_(False)  # an inference form: without autograd the fused path applies outside no_grad too
    return model


__all__ = ["FusedConv2d", "available", "fuse_conv_epilogues"]
