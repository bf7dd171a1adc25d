"""The model with its measuring points removed from the source: the baseline of the probe-overhead benchmark.

``module.sps`` and ``module.ms_conv`` are re-compiled from their source with every ``with timer(...):`` replaced
by its body, every ``sparsity(...)`` statement dropped and every ``probe=`` keyword argument removed (the label
of the probe inside ``module.bn_lif.bn_lif``), as if the instrumentation had never been written.
Inside :func:`probes_compiled_out`, ``model.spikeformer`` builds its stem and blocks from those copies, so
``timm.create_model("sdt", ...)`` gives the same network (same parameters, same seed, same outputs) without a
single measuring point.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import types
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

__all__ = ["INSTRUMENTED_MODULES", "probes_compiled_out", "stripped_module"]

INSTRUMENTED_MODULES = ("module.sps", "module.ms_conv")


def _calls(node: ast.AST, name: str) -> bool:
    """``node`` is a call of ``name`` (or of ``something.name``)."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Name) and func.id == name) or (isinstance(func, ast.Attribute) and func.attr == name)


class _StripProbes(ast.NodeTransformer):
    def visit_With(self, node: ast.With):
        self.generic_visit(node)
        if all(_calls(item.context_expr, "timer") for item in node.items):
            return node.body
        return node

    def visit_Expr(self, node: ast.Expr):
        self.generic_visit(node)
        return ast.Pass() if _calls(node.value, "sparsity") else node

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        node.keywords = [keyword for keyword in node.keywords if keyword.arg != "probe"]
        return node


def stripped_module(name: str) -> types.ModuleType:
    """A fresh copy of module ``name`` compiled without its measuring points (``timer``, ``sparsity``, ``probe=``)."""
    original = importlib.import_module(name)
    tree = ast.fix_missing_locations(_StripProbes().visit(ast.parse(inspect.getsource(original))))
    module = types.ModuleType(f"{name}_without_probes", original.__doc__)
    module.__package__, module.__file__ = original.__package__, original.__file__
    exec(compile(tree, original.__file__, "exec"), module.__dict__)  # noqa: S102  (our own source, transformed)
    return module


@contextmanager
def probes_compiled_out() -> Iterator[dict[str, types.ModuleType]]:
    """Within the block, models built through ``model.spikeformer`` use the stripped stem and blocks."""
    from model import spikeformer

    stripped = {name: stripped_module(name) for name in INSTRUMENTED_MODULES}
    replacements = {key: getattr(stripped[value.__module__], key) for key, value in vars(spikeformer).items()
                    if getattr(value, "__module__", None) in stripped and hasattr(stripped[value.__module__], key)}
    with mock.patch.dict(spikeformer.__dict__, replacements):
        yield stripped
