"""Training augmentations of the reference DVS pipelines, per sample and reproducible.

All transforms take event frames ``[T, C, H, W]`` (float) and a ``torch.Generator``; one draw is shared by every
time step and channel of a sample, as in the reference. :class:`~data.neuromorphic.DVSFrameDataset` applies them in
``__getitem__`` with a generator seeded from ``(seed, epoch, index)``, so a sample gets the same augmentation
whatever the number of workers, ranks or the batch it lands in (works unchanged under ``DistributedSampler``).

=====================  =====================================================================================
transform              reference
=====================  =====================================================================================
:class:`Cutout`        SDT ``--dvs-aug``: ``Cutout(n_holes=1, length=16)``, a square hole of up to 16x16 around a
                       uniform centre, clipped at the border. The reference drew **one mask for the whole batch**
                       (it ran on the ``[B, T, C, H, W]`` GPU batch); here every sample gets its own. Passing a
                       batch to ``Cutout`` still gives the reference's one-mask-per-batch behaviour.
:class:`SNNAugmentWide` SDT ``--dvs-trival-aug``: TrivialAugment over Identity, ShearX (+-0.3 rad), TranslateX/Y
                       (+-5 px, truncated to int), Rotate (+-30 deg), 31 magnitude bins, random sign, NEAREST, fill 0
:class:`FlipRoll`      SDT's TET-style ``DVSCifar10`` loader: horizontal flip with p=0.5, then ``torch.roll`` by
                       independent offsets in [-5, 5] on H and W (``--dvs-flip-roll``)
:class:`NCaltechAugment` STAtten's ``NCaltech101_aug``: one of roll (+-3 px on H and W), RandomRotation(15) or
                       RandomAffine(shear +-15 deg), chosen uniformly (``--dvs-ncaltech-aug``, on by default there)
=====================  =====================================================================================
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["sample_generator", "Cutout", "SNNAugmentWide", "FlipRoll", "NCaltechAugment", "DVSTrainTransform"]


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from ``(seed, epoch, index)`` only (numpy's SeedSequence mixes the three)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high)."""
    return int(torch.randint(low, high, (1,), generator=generator).item())


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator).item())


def _tv():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    return F, InterpolationMode


class Cutout:
    """Zero one or more ``length x length`` squares (clipped at the border) in every frame of a sample."""

    def __init__(self, n_holes: int = 1, length: int = 16):
        self.n_holes = n_holes
        self.length = length

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        mask = torch.ones((h, w), dtype=x.dtype, device=x.device)
        for _ in range(self.n_holes):
            y, xc = _randint(0, h, generator), _randint(0, w, generator)
            y1, y2 = max(y - self.length // 2, 0), min(y + self.length // 2, h)
            x1, x2 = max(xc - self.length // 2, 0), min(xc + self.length // 2, w)
            mask[y1:y2, x1:x2] = 0.0
        return x * mask

    def __repr__(self) -> str:
        return f"Cutout(n_holes={self.n_holes}, length={self.length})"


class SNNAugmentWide:
    """TrivialAugment-Wide restricted to the reference's five geometric ops (one op per sample, all frames)."""

    OPS = ("Identity", "ShearX", "TranslateX", "TranslateY", "Rotate")

    def __init__(self, num_magnitude_bins: int = 31, fill: float | None = None):
        self.num_magnitude_bins = num_magnitude_bins
        self.fill = fill
        bins = num_magnitude_bins
        self.magnitudes = {
            "Identity": None,
            "ShearX": torch.linspace(-0.3, 0.3, bins),
            "TranslateX": torch.linspace(-5.0, 5.0, bins),
            "TranslateY": torch.linspace(-5.0, 5.0, bins),
            "Rotate": torch.linspace(-30.0, 30.0, bins),
        }

    def draw(self, generator: torch.Generator | None = None) -> tuple[str, float]:
        """The reference's draws, in its order: op, magnitude bin, sign."""
        op = self.OPS[_randint(0, len(self.OPS), generator)]
        magnitudes = self.magnitudes[op]
        if magnitudes is None:
            return op, 0.0
        magnitude = float(magnitudes[_randint(0, len(magnitudes), generator)].item())
        if _randint(0, 2, generator):
            magnitude = -magnitude
        return op, magnitude

    def apply(self, x: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
        F, Interp = _tv()
        fill = None if self.fill is None else [float(self.fill)] * x.shape[-3]
        nearest = Interp.NEAREST
        if op == "ShearX":
            return F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(magnitude), 0.0],
                            interpolation=nearest, fill=fill)
        if op == "TranslateX":
            return F.affine(x, angle=0.0, translate=[int(magnitude), 0], scale=1.0, shear=[0.0, 0.0],
                            interpolation=nearest, fill=fill)
        if op == "TranslateY":
            return F.affine(x, angle=0.0, translate=[0, int(magnitude)], scale=1.0, shear=[0.0, 0.0],
                            interpolation=nearest, fill=fill)
        if op == "Rotate":
            return F.rotate(x, magnitude, interpolation=nearest, fill=fill)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, *self.draw(generator))

    def __repr__(self) -> str:
        return f"SNNAugmentWide(num_magnitude_bins={self.num_magnitude_bins}, interpolation=NEAREST, fill={self.fill})"


class FlipRoll:
    """Flip along W with probability ``p``, then roll by offsets in ``[-max_shift, max_shift]`` on H and W."""

    def __init__(self, p: float = 0.5, max_shift: int = 5):
        self.p = p
        self.max_shift = max_shift

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if float(torch.rand(1, generator=generator).item()) < self.p:
            x = torch.flip(x, dims=(-1,))
        dy = _randint(-self.max_shift, self.max_shift + 1, generator)
        dx = _randint(-self.max_shift, self.max_shift + 1, generator)
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))

    def __repr__(self) -> str:
        return f"FlipRoll(p={self.p}, max_shift={self.max_shift})"


class NCaltechAugment:
    """One of roll (+-``max_shift``), rotation (+-``degrees``) or x-shear (+-``shear``), chosen uniformly."""

    def __init__(self, max_shift: int = 3, degrees: float = 15.0, shear: float = 15.0):
        self.max_shift = max_shift
        self.degrees = degrees
        self.shear = shear

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        choice = _randint(0, 3, generator)
        if choice == 0:
            dy = _randint(-self.max_shift, self.max_shift + 1, generator)
            dx = _randint(-self.max_shift, self.max_shift + 1, generator)
            return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        F, Interp = _tv()
        if choice == 1:  # transforms.RandomRotation(degrees=15): NEAREST, fill 0, centre
            return F.rotate(x, _uniform(-self.degrees, self.degrees, generator), interpolation=Interp.NEAREST,
                            fill=[0.0] * x.shape[-3])
        # transforms.RandomAffine(degrees=0, shear=(-15, 15)): x-shear only
        return F.affine(x, angle=0.0, translate=[0, 0], scale=1.0,
                        shear=[_uniform(-self.shear, self.shear, generator), 0.0],
                        interpolation=Interp.NEAREST, fill=[0.0] * x.shape[-3])

    def __repr__(self) -> str:
        return f"NCaltechAugment(max_shift={self.max_shift}, degrees={self.degrees}, shear={self.shear})"


class DVSTrainTransform:
    """Applies the enabled transforms in the reference's order: loader-level (N-Caltech / flip-roll), Cutout,
    then SNNAugmentWide, all with the same per-sample generator."""

    def __init__(self, ncaltech: bool = False, flip_roll: bool = False, cutout: bool = False,
                 trivial: bool = False):
        self.transforms = [t for t, on in ((NCaltechAugment(), ncaltech), (FlipRoll(), flip_roll),
                                           (Cutout(1, 16), cutout), (SNNAugmentWide(), trivial)) if on]

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for transform in self.transforms:
            x = transform(x, generator)
        return x

    def __repr__(self) -> str:
        return f"DVSTrainTransform({', '.join(map(repr, self.transforms))})"
