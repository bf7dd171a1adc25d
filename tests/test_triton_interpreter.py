"""The model's Triton kernels (LIF, BN + LIF, max-pool), run by Triton's interpreter on the CPU, inside whole
models: the GPU code path end to end, without a GPU.

Under ``TRITON_INTERPRET=1`` the ops run their Triton kernels on CPU tensors (``module.fused_lif.runs_triton``).
The interpreter is slow (about 20 s for a static fixture's eval forward and training step, ten minutes for an
event-frame one), so the fixtures checked here are static ones, one per kernel family and layout; small
event-frame models (T = 8) check the DVS pools and the LIF backward's register history (fp32) and recomputed
membrane (fp16 autocast) against the PyTorch path, which the fixture tests pin to the reference.
``TRITON_INTERPRET=1 python benchmarks/fixture_diffs.py --device cpu`` gives the whole table.
"""
import pytest

from module.fused_lif import triton_available
from triton_scripts import run_in_interpreter

pytestmark = [pytest.mark.skipif(not triton_available(), reason="Triton is not installed"), pytest.mark.slow]

_COUNT_KERNEL_CALLS = """
import collections
import torch
from module import fused_lif, lif_triton, pool_triton

assert fused_lif.runs_triton(torch.empty(1)), "TRITON_INTERPRET=1 should route CPU tensors to the Triton kernels"
calls = collections.Counter()


def counted(owner, name):
    kernel = getattr(owner, name)

    def call(*args, **kwargs):
        calls[f"{owner.__name__.split('.')[-1]}.{name}"] += 1
        return kernel(*args, **kwargs)
    setattr(owner, name, call)


for name in ("forward", "backward", "batch_norm_backward"):
    counted(lif_triton, name)
for name in ("forward", "backward"):
    counted(pool_triton, name)
"""

_FIXTURE_CHECK = _COUNT_KERNEL_CALLS + """
import copy
from reference_fixtures import FIXTURE_DIR, build_seeded, load_fixture
from test_model_reference import _check_train_step

fixture = load_fixture(FIXTURE_DIR / f"{CASE['name']}.pt")
model = build_seeded(fixture, **CASE["options"])
model.load_state_dict(fixture["state_dict"])
memory_format = getattr(torch, CASE["memory_format"])
model = model.to(memory_format=memory_format).eval()
x = fixture["input"].float().contiguous(memory_format=memory_format)
with torch.no_grad():
    out = model(x)
assert (out - fixture["eval_output"]).abs().max() < 1e-5, (out - fixture["eval_output"]).abs().max()
train = copy.deepcopy(model).train()
_check_train_step(fixture, train, train(x))
assert sorted(calls) == sorted(CASE["kernels"]), dict(calls)
print("ok")
"""


@pytest.mark.parametrize("name, options, memory_format, kernels", [
    # PLIF (decay gradients) and the static encoding run once (a [1, ...] input repeated over T)
    ("sdt_B_plif_static", {}, "contiguous_format",
     ("lif_triton.forward", "lif_triton.backward", "pool_triton.forward", "pool_triton.backward")),
    # BN + LIF in two backward passes, STAtten's attention
    ("statten_A_statten_static", {"fuse_bn_lif": True}, "contiguous_format",
     ("lif_triton.forward", "lif_triton.backward", "lif_triton.batch_norm_backward", "pool_triton.forward",
      "pool_triton.backward")),
    # channels-last kernels, TET output
    ("sdt_D_tet_static", {"fuse_bn_lif": True}, "channels_last",
     ("lif_triton.forward", "lif_triton.backward", "lif_triton.batch_norm_backward", "pool_triton.forward",
      "pool_triton.backward")),
], ids=["plif", "bn_lif", "channels_last"])
def test_triton_kernels_reproduce_fixture(name, options, memory_format, kernels):
    case = dict(name=name, options=options, memory_format=memory_format, kernels=kernels)
    run_in_interpreter(f"CASE = {case!r}\n" + _FIXTURE_CHECK)


_EVENT_FRAMES_CHECK = _COUNT_KERNEL_CALLS + """
import os
import timm
import model  # noqa: F401

config = dict(img_size_h=16, img_size_w=16, in_channels=2, num_classes=4, embed_dims=32, num_heads=4, mlp_ratios=2,
              depths=1, T=8, pooling_stat="0011", dvs_mode=True, attention_mode=CASE["attention_mode"],
              chunk_size=4, fuse_bn_lif=CASE["fuse_bn_lif"])
torch.manual_seed(0)
net = timm.create_model("sdt", **config).train()
x = (torch.rand(3, 8, 2, 16, 16) < 0.3).float()
labels = torch.tensor([0, 1, 3])


def step():
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16, enabled=CASE["fp16"]):
        out = net(x)
    torch.nn.functional.cross_entropy(out.float(), labels).backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


out, grads = step()
assert calls["lif_triton.backward"] + calls["lif_triton.batch_norm_backward"] > 0 and calls["pool_triton.backward"]
os.environ["TRITON_INTERPRET"] = "0"  # the same step through the PyTorch loops and ATen's pools
calls.clear()
out_ref, grads_ref = step()
assert not calls, dict(calls)
torch.testing.assert_close(out, out_ref, rtol=0, atol=0 if CASE["fp16"] else 1e-5)
assert grads.keys() == grads_ref.keys()
for name, grad in grads.items():
    if CASE["fp16"]:
        # fp16 activation gradients round (steps of 2^-11) where fp32 sums differ in order; a conv bias in front
        # of a BatchNorm has a zero true gradient (rounding noise only), hence the absolute floor
        assert (grad - grads_ref[name]).abs().max() <= 4e-3 * grads_ref[name].abs().max() + 1e-5, name
    else:
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-4, atol=1e-5, msg=name)
print("ok")
"""


@pytest.mark.parametrize("attention_mode, fuse_bn_lif, fp16", [("SDT", False, False), ("STAtten", True, False),
                                                               ("SDT", True, True)],
                         ids=["sdt", "statten_bn_lif", "sdt_bn_lif_fp16"])
def test_triton_kernels_match_pytorch_path_on_event_frames(attention_mode, fuse_bn_lif, fp16):
    """T = 8: in fp32 the LIF backward keeps the membrane history in registers, under fp16 autocast it recomputes
    it; the DVS max-pools run on 5-D views.  (Not bf16: Triton's interpreter converts fp32 to bf16 by truncation
    where the GPU rounds to nearest, so a bf16 BN + LIF input can differ by one ulp from PyTorch's; fp16 it
    converts as the GPU does.)"""
    case = dict(attention_mode=attention_mode, fuse_bn_lif=fuse_bn_lif, fp16=fp16)
    run_in_interpreter(f"CASE = {case!r}\n" + _EVENT_FRAMES_CHECK)
