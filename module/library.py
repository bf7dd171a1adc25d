"""The ``sdt::`` operator library: the model's opaque ops (LIF, BN + LIF, max-pool, and their backwards).

Each op has one implementation for every device (it picks its Triton kernels or its PyTorch code itself, see
:func:`module.fused_lif.runs_triton`), a fake implementation (shapes and layouts, for ``torch.compile`` and the
meta device) and, for a forward op, an autograd formula.  That is what ``torch.library.custom_op`` registers, and
the ops behave the same (opaque to ``torch.compile``, one op under dispatch modes and profilers); but custom_op
also runs generic Python on every call (default filling, alias checks, dynamo guards): about 30 us more per
forward and backward of an op on the CPU than registering the same directly (benchmarks/op_overhead.py), about
2 ms per SDT-2-512 training step.  The CIFAR steps are bound by the host, so the ops are registered here
(docs/speed.md, "Host time").
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch._ops import OpOverload

__all__ = ["define_op", "register_fake", "register_autograd"]

_LIBRARY = torch.library.Library("sdt", "FRAGMENT")


def define_op(name: str) -> Callable[[Callable], OpOverload]:
    """Decorator: define ``sdt::name`` with the decorated function's signature as its schema (as ``custom_op``
    infers it) and the function as its implementation on every device; returns the op."""
    def define(implementation: Callable) -> OpOverload:
        _LIBRARY.define(name + torch.library.infer_schema(implementation, mutates_args=()))
        _LIBRARY.impl(name, implementation, "CompositeExplicitAutograd")
        return getattr(torch.ops.sdt, name).default
    return define


def register_fake(op: OpOverload) -> Callable[[Callable], Callable]:
    """Decorator: the fake implementation of ``op`` (output shapes, dtypes and strides from the inputs')."""
    return torch.library.register_fake(op, lib=_LIBRARY)


def register_autograd(op: OpOverload, backward: Callable, setup_context: Callable) -> None:
    """Differentiate ``op`` as ``torch.library.register_autograd`` does: ``setup_context(ctx, inputs, output)``
    saves what ``backward(ctx, *grads)`` needs; ``backward`` returns a gradient (or None) per input."""
    def below_autograd(keyset, args):
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    def forward(ctx, *inputs):
        *args, keyset = inputs
        output = below_autograd(keyset, args)
        setup_context(ctx, tuple(args), output)
        return output

    def backward_with_keyset(ctx, *grads):
        return *backward(ctx, *grads), None

    # the autograd node is named after the class: "sdt_multistep_lifBackward" in profiles and graphs
    Function = type(f"sdt_{op._opname}", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward_with_keyset)})

    def autograd_kernel(keyset, *args):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            return Function.apply(*args, keyset)
        return below_autograd(keyset, args)

    _LIBRARY.impl(op._opname, autograd_kernel, "Autograd", with_keyset=True)
