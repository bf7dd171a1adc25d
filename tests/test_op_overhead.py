"""CPU smoke test of benchmarks/op_overhead.py (no timing assertions: the times depend on the machine)."""
import pytest
import torch

from benchmarks.op_overhead import _registered_ops, main


def test_registered_probe_ops_compute_the_copy_and_its_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    for op in _registered_ops():
        out = op(x, torch.tensor(0.5), 1.0, 3)
        out.backward(torch.full_like(out, 2.0))
        assert torch.equal(out, x.detach()) and torch.equal(x.grad, torch.full_like(x, 2.0))
        x.grad = None


def test_table():
    results = main(["--calls", "20", "--repeats", "1"])
    assert list(results) == ["plain op (clone)", "autograd.Function", "module.library op", "torch.library.custom_op",
                             "sdt::multistep_lif, 1 element"]
    assert all(us > 0 for us in results.values())


def test_no_calls_is_refused(capsys):
    """--calls 0 divided by zero after timing nothing."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--calls", "0"])
    assert exit_info.value.code == 2 and "--calls 0 --repeats 5: give at least 1 of each" in capsys.readouterr().err
