"""Loading the reference fixtures (tests/fixtures/*.pt, made by the original SDT/STAtten code; see its README)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

import model  # noqa: F401  (registers "sdt" with timm)

FIXTURE_DIR = Path(__file__).parent / "fixtures"
FIXTURES = sorted(FIXTURE_DIR.glob("*.pt"))


def load_fixture(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def reference_of(fixture: dict) -> str:
    """The code base a fixture came from decides the ``reference`` behaviour."""
    return "statten" if "STAtten" in fixture["meta"]["repo"] else "sdt"


# Model options that must not change the numbers: our fast default, and the spikingjelly neurons on T copies.
VARIANTS = {"fused": {}, "spikingjelly": {"neuron_backend": "spikingjelly", "encode_once": False}}


def build_seeded(fixture: dict, **options) -> torch.nn.Module:
    """The model as the reference script built it: ``torch.manual_seed(seed)`` then ``create_model``."""
    torch.manual_seed(fixture["seed"])
    return timm.create_model("sdt", reference=reference_of(fixture), **fixture["config"], **options)


def unpack_hook(entry: dict) -> torch.Tensor:
    """Hook tensors are stored as bit planes: value = number of planes i with ``v >= i``."""
    n = int(np.prod(entry["shape"]))
    bits = np.unpackbits(entry["planes"].numpy(), axis=1, count=n)
    return torch.from_numpy(bits.sum(0).astype(np.float32)).reshape(entry["shape"])


def reference_loss(fixture: dict, output: torch.Tensor) -> torch.Tensor:
    """The loss the fixture used: CE, or SDT's ``TET_loss(means=1.0, lamb=0.001)`` for TET models."""
    labels = fixture["labels"]
    if not fixture["config"].get("TET"):
        return F.cross_entropy(output, labels)
    per_step = torch.stack([F.cross_entropy(o, labels) for o in output]).mean()
    return 0.999 * per_step + 0.001 * F.mse_loss(output, torch.full_like(output, 1.0))
