"""Host cost of calling an op, forward and backward, by how it is registered (a table; CPU, no GPU needed).

    python benchmarks/op_overhead.py

Every variant computes the same trivial thing (a copy forward, a copy backward) on a tiny tensor, so the table is
the Python and dispatcher time per call: a plain tensor op, a bare ``torch.autograd.Function``, an op registered
the way :mod:`module.library` registers the model's ``sdt::`` ops, and the same op through
``torch.library.custom_op``.  Below, the model's real LIF op on a one-element input (its PyTorch loop on the CPU).
docs/speed.md ("Host time") quotes it.
"""
from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from module import library  # noqa: E402
from module.fused_lif import multistep_lif  # noqa: E402

_logger = logging.getLogger("op_overhead")


# The copy ops have the LIF ops' signatures (module.fused_lif), whose argument count the generic wrappers scale with.
def _copy_forward(x: Tensor, decay: Tensor, v_threshold: float, steps: int) -> Tensor:
    return x.clone()


def _copy_backward(grad: Tensor, x: Tensor, decay: Tensor, v_threshold: float,
                   need_decay_grad: bool) -> tuple[Tensor, Tensor]:
    return grad.clone(), decay.new_zeros(())


def _save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.v_threshold = inputs[2]


def _backward_through(backward_op: Callable) -> Callable:
    def backward(ctx, grad: Tensor):
        x, decay = ctx.saved_tensors
        return backward_op(grad, x, decay, ctx.v_threshold, ctx.needs_input_grad[1])[0], None, None, None
    return backward


class _CopyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, decay: Tensor, v_threshold: float, steps: int) -> Tensor:
        _save_inputs(ctx, (x, decay, v_threshold, steps), None)
        return _copy_forward(x, decay, v_threshold, steps)

    backward = staticmethod(_backward_through(_copy_backward))


@functools.cache
def _registered_ops() -> tuple[Callable, Callable]:
    """The trivial copy op registered as :mod:`module.library` does, and through ``torch.library.custom_op``."""
    direct = library.define_op("overhead_probe")(_copy_forward)
    direct_backward = library.define_op("overhead_probe_backward")(_copy_backward)
    library.register_autograd(direct, _backward_through(direct_backward), _save_inputs)

    wrapped = torch.library.custom_op("sdt_overhead::probe", _copy_forward, mutates_args=())
    wrapped_backward = torch.library.custom_op("sdt_overhead::probe_backward", _copy_backward, mutates_args=())
    wrapped.register_autograd(_backward_through(wrapped_backward), setup_context=_save_inputs)
    return direct, wrapped


def time_call(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean microseconds per call of ``fn`` over ``calls`` calls."""
    for _ in range(calls // 10):
        fn()
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        means.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(means)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args(argv)
    if opts.calls < 1 or opts.repeats < 1:
        parser.error(f"--calls {opts.calls} --repeats {opts.repeats}: give at least 1 of each")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    direct, wrapped = _registered_ops()
    x = torch.randn(4, 8, requires_grad=True)
    decay = torch.tensor(0.5)
    variants = {
        "plain op (clone)": lambda: x.clone(),
        "autograd.Function": lambda: _CopyFunction.apply(x, decay, 1.0, 4),
        "module.library op": lambda: direct(x, decay, 1.0, 4),
        "torch.library.custom_op": lambda: wrapped(x, decay, 1.0, 4),
        "sdt::multistep_lif, 1 element": lambda: multistep_lif(x[:1, :1], decay, 1.0),
    }
    results = {name: time_call(lambda f=f: f().sum().backward(), opts.calls, opts.repeats)
               for name, f in variants.items()}
    _logger.info("%-32s %s", "forward + backward of", "us per call (CPU, 1 thread: %d)" % torch.get_num_threads())
    for name, us in results.items():
        _logger.info("%-32s %8.1f", name, us)
    return results


if __name__ == "__main__":
    main()
