"""Spike-driven Transformer (SDT) and STAtten.

Papers: "Spike-driven Transformer", Yao et al., NeurIPS 2023 (arXiv 2307.01694);
"Spiking Transformer with Spatial-Temporal Attention", Lee et al., CVPR 2025 (arXiv 2409.19764).
Original code: https://github.com/BICLab/Spike-Driven-Transformer (SDT) and
https://github.com/Intelligent-Computing-Lab-Yale/STAtten (STAtten).

Same modules, state-dict keys, weight init and maths as the reference code.  What we changed:

* neurons are stateless fused LIF ops (one Triton kernel per direction on CUDA; ``neuron_backend="fused"``) or
  spikingjelly 2.0 modules (``neuron_backend="spikingjelly"``); CuPy is not needed;
* a static image is convolved once by the first stem conv and broadcast over T (``encode_once``) instead of
  convolving T identical copies: the same numbers, T times less work for the first conv and BN (which have the
  largest activations of the network);
* ``forward(x)`` returns the logits; the legacy ``forward(x, hook=dict())`` returns ``(logits, hook)`` and fills
  the reference hook keys from forward hooks on the neurons and :class:`~module.Probe` points;
* no membrane potential leaks from one batch into the next: fused neurons keep no state, spikingjelly neurons are
  reset at the start of every forward (``auto_reset=True``); with ``neuron_backend="spikingjelly"`` set
  ``model.auto_reset = False`` and call :meth:`reset_neurons` yourself to reproduce runs that carry state across
  inputs;
* bad arguments raise ``ValueError`` at construction instead of failing (or silently computing) later;
* ``reference="sdt"|"statten"`` selects the two places where the code bases differ (see :mod:`module.ms_conv`).
"""
from __future__ import annotations

import numbers
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from module import ATTENTION_MODES, NEURON_BACKENDS, REFERENCES, SPIKE_MODES, MS_Block_Conv, MS_SPS, \
    TensorRecorder, create_lif, is_neuron

__all__ = ["SpikeDrivenTransformer", "VARIANTS", "validate_config", "variant_defaults"]


def validate_config(*, img_size_h: int, img_size_w: int, in_channels: int, embed_dims: int, num_heads: int,
                    depths: int, T: int, pooling_stat: str, spike_mode: str, attention_mode: str, chunk_size: int,
                    reference: str, neuron_backend: str = "fused", mlp_ratios: float = 4,
                    num_classes: int = 1) -> None:
    """Raise ``ValueError`` naming the first argument that the model cannot be built with."""
    counts = (("depths", depths, 1, "the number of blocks"), ("T", T, 1, "the number of time steps"),
              ("in_channels", in_channels, 1, "input channels"), ("embed_dims", embed_dims, 1, "the width"),
              ("num_heads", num_heads, 1, "attention heads"), ("img_size_h", img_size_h, 1, "input height"),
              ("img_size_w", img_size_w, 1, "input width"), ("num_classes", num_classes, 0, "0: no head"))
    for name, value, least, meaning in counts:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            kind = "a positive int" if least else "an int of at least 0"
            raise ValueError(f"{name}={value!r} must be {kind} ({meaning})")
    if neuron_backend not in NEURON_BACKENDS:
        raise ValueError(f"neuron_backend={neuron_backend!r} is not supported; choose one of {NEURON_BACKENDS}")
    if attention_mode not in ATTENTION_MODES:
        raise ValueError(f"attention_mode={attention_mode!r} is not supported; choose one of {ATTENTION_MODES}")
    if spike_mode not in SPIKE_MODES:
        raise ValueError(f"spike_mode={spike_mode!r} is not supported; choose one of {sorted(SPIKE_MODES)}")
    if reference not in REFERENCES:
        raise ValueError(f"reference={reference!r} is not supported; choose one of {REFERENCES}")
    if embed_dims < 8:
        raise ValueError(f"embed_dims={embed_dims} must be a positive multiple of 8 (the stem widths are D/8, D/4, "
                         "D/2)")
    if mlp_ratios <= 0 or int(embed_dims * mlp_ratios) < 1:
        raise ValueError(f"mlp_ratios={mlp_ratios} must be positive (the MLP's hidden width is embed_dims * "
                         "mlp_ratios)")
    if embed_dims % num_heads:
        raise ValueError(f"embed_dims={embed_dims} must be divisible by num_heads={num_heads}")
    if embed_dims % 8:
        raise ValueError(f"embed_dims={embed_dims} must be divisible by 8 (the stem widths are D/8, D/4, D/2)")
    if not isinstance(pooling_stat, str) or len(pooling_stat) != 4 or set(pooling_stat) - {"0", "1"}:
        raise ValueError(f"pooling_stat={pooling_stat!r} must be 4 characters of '0'/'1', e.g. '1111' or '0011'")
    stride = 2 ** pooling_stat.count("1")
    for name, size in (("img_size_h", img_size_h), ("img_size_w", img_size_w)):
        if size % stride:
            raise ValueError(f"{name}={size} is not divisible by {stride}, the total stride of "
                             f"pooling_stat={pooling_stat!r}; use a multiple of {stride} or fewer pooling stages")
    if attention_mode == "STAtten":
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive int (the time steps per chunk)")
        if T % chunk_size:
            raise ValueError(f"T={T} is not divisible by chunk_size={chunk_size}; STAtten splits the time steps "
                             f"into chunks of chunk_size, so pick a chunk_size that divides T")
        if img_size_h != img_size_w:
            raise ValueError(f"STAtten scales attention by 1/H and needs a square token grid; got "
                             f"img_size_h={img_size_h}, img_size_w={img_size_w}")


class SpikeDrivenTransformer(nn.Module):
    """SDT / STAtten classifier: ``MS_SPS`` stem, ``depths`` x ``MS_Block_Conv``, token mean, ``head_lif``, ``head``.

    Args (as in the reference; arguments marked inert are accepted for config compatibility and do nothing there
    either): img_size_h, img_size_w, patch_size (inert), in_channels, num_classes, embed_dims, num_heads,
    mlp_ratios, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, norm_layer, sr_ratios, attn_mode,
    get_embed, cml (all inert), depths (int: number of blocks), T (time steps), pooling_stat (4 chars, see
    ``MS_SPS``), spike_mode ("lif", "plif"; "alif"/"blif" mean "lif"), dvs_mode (DVS pooling in attention; input
    ``[B, T, C, H, W]``), TET (return per-step logits ``[T, B, K]``), attention_mode ("SDT" or "STAtten"),
    chunk_size (STAtten), reference ("sdt" or "statten"; default "statten" for attention_mode STAtten, else "sdt"),
    auto_reset (reset every neuron at the start of each forward; stateless fused neurons need no reset),
    skip_blocks (blocks whose attention branch is bypassed, ASTER; also settable later through the ``skip_blocks``
    property), neuron_backend ("fused": stateless fused LIF op, the default; "spikingjelly": stateful spikingjelly
    neurons), encode_once (static input: run the first stem conv once instead of on T identical copies),
    fuse_bn_lif (each BatchNorm followed by a LIF runs as one op, ``module.bn_lif``; also settable later through
    the ``fuse_bn_lif`` property).

    Input: static images ``[B, C, H, W]`` (repeated over T) or event frames ``[B, T, C, H, W]``.
    Output: logits ``[B, K]`` (mean over T), or ``[T, B, K]`` with TET.
    """

    def __init__(self, img_size_h: int = 128, img_size_w: int = 128, patch_size: int = 16, in_channels: int = 2,
                 num_classes: int = 11, embed_dims: int = 512, num_heads: int = 8, mlp_ratios: float = 4,
                 qkv_bias: bool = False, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, norm_layer: Any = None,
                 depths: int = 2, sr_ratios: Any = None, T: int = 4, pooling_stat: str = "1111",
                 attn_mode: str = "direct_xor", spike_mode: str = "lif", get_embed: bool = False,
                 dvs_mode: bool = False, TET: bool = False, cml: bool = False, attention_mode: str = "SDT",
                 chunk_size: int = 2, reference: str | None = None, auto_reset: bool = True,
                 skip_blocks: tuple[int, ...] = (), neuron_backend: str = "fused", encode_once: bool = True,
                 fuse_bn_lif: bool = False, **kwargs):
        super().__init__()
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        if kwargs.pop("pretrained", False):  # the reference accepted (and ignored) it
            raise ValueError("pretrained=True: there are no downloadable weights; load a checkpoint instead (the "
                             "released SDT ImageNet checkpoints load with strict=True)")
        if kwargs:
            raise TypeError(f"SpikeDrivenTransformer got unexpected arguments {sorted(kwargs)}")
        reference = reference or ("statten" if attention_mode == "STAtten" else "sdt")
        validate_config(img_size_h=img_size_h, img_size_w=img_size_w, in_channels=in_channels,
                        embed_dims=embed_dims, num_heads=num_heads, depths=depths, T=T, pooling_stat=pooling_stat,
                        spike_mode=spike_mode, attention_mode=attention_mode, chunk_size=chunk_size,
                        reference=reference, neuron_backend=neuron_backend, mlp_ratios=mlp_ratios,
                        num_classes=num_classes)
        # numpy ints pass the checks; Python ints reach the JSON files (trace meta.json, aster_eval.json)
        T, depths, num_classes, embed_dims, num_heads, in_channels = map(
            int, (T, depths, num_classes, embed_dims, num_heads, in_channels))
        chunk_size = int(chunk_size) if isinstance(chunk_size, numbers.Integral) else chunk_size
        self.num_classes = num_classes
        self.depths = depths
        self.T = T
        self.TET = TET
        self.dvs = dvs_mode
        self.attention_mode = attention_mode
        self.chunk_size = chunk_size
        self.reference = reference
        self.neuron_backend = neuron_backend
        self.auto_reset = auto_reset
        self.encode_once = encode_once
        self.num_features = self.embed_dim = embed_dims

        self.patch_embed = MS_SPS(in_channels=in_channels, embed_dims=embed_dims, pooling_stat=pooling_stat,
                                  spike_mode=spike_mode if reference == "sdt" else "lif",
                                  neuron_backend=neuron_backend)
        self.block = nn.ModuleList([
            MS_Block_Conv(embed_dims, num_heads=num_heads, mlp_ratio=mlp_ratios, spike_mode=spike_mode,
                          dvs=dvs_mode, layer=j, attention_mode=attention_mode, chunk_size=chunk_size,
                          reference=reference, neuron_backend=neuron_backend)
            for j in range(depths)
        ])
        self.head_lif = create_lif(spike_mode, backend=neuron_backend)
        self.head = nn.Linear(embed_dims, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        self._neurons = [m for m in self.modules() if is_neuron(m)]
        self.skip_blocks = skip_blocks
        self.fuse_bn_lif = fuse_bn_lif

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Conv2d: truncated normal (std .02), zero bias; BN: 1 / 0.  The Linear head and the Conv1d keep
        # PyTorch's default init, as in the reference.
        if isinstance(m, nn.Conv2d):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    @property
    def auto_reset(self) -> bool:
        """Reset the neurons at the start of every forward (always true in effect for stateless neurons)."""
        return self._auto_reset

    @auto_reset.setter
    def auto_reset(self, value: bool) -> None:
        if not value and self.neuron_backend == "fused":
            raise ValueError("auto_reset=False carries membrane state across forwards, but neuron_backend='fused' "
                             "neurons are stateless; build the model with neuron_backend='spikingjelly'")
        self._auto_reset = bool(value)

    @property
    def skip_blocks(self) -> list[int]:
        """Indices of the blocks whose attention branch is bypassed (ASTER); the MLPs always run."""
        return [i for i, blk in enumerate(self.block) if blk.skip_attention]

    @skip_blocks.setter
    def skip_blocks(self, blocks) -> None:
        blocks = sorted({int(blocks)} if isinstance(blocks, numbers.Integral) else set(int(b) for b in blocks))
        bad = [b for b in blocks if not 0 <= b < self.depths]
        if bad:
            raise ValueError(f"skip_blocks={bad} out of range: the model has blocks 0..{self.depths - 1}")
        for i, blk in enumerate(self.block):
            blk.skip_attention = i in blocks

    @property
    def fuse_bn_lif(self) -> bool:
        """Run each BatchNorm followed by a LIF as one op (``module.bn_lif``; pairs with hooks stay unfused)."""
        return self.patch_embed.fuse_bn_lif

    @fuse_bn_lif.setter
    def fuse_bn_lif(self, value: bool) -> None:
        if value and self.neuron_backend != "fused":
            raise ValueError("fuse_bn_lif=True fuses BatchNorms into the fused LIF op; build the model with "
                             "neuron_backend='fused'")
        for m in self.modules():
            if hasattr(m, "fuse_bn_lif") and m is not self:
                m.fuse_bn_lif = bool(value)

    def reset_neurons(self) -> None:
        """Reset the membrane state of every neuron (what ``spikingjelly...functional.reset_net`` does)."""
        for m in self._neurons:
            m.reset()

    @contextmanager
    def encoding_on_copies(self) -> Iterator[None]:
        """Within the block, the first stem conv sees the T repeated copies of a static image, as in the reference
        (for per-layer meters that count ``T * B`` rows); the numbers are the same either way."""
        encode_once, self.encode_once = self.encode_once, False
        try:
            yield
        finally:
            self.encode_once = encode_once

    def legacy_hook_points(self) -> list[tuple[str, nn.Module]]:
        """``(reference hook key, module)`` pairs, in the reference's forward order."""
        sps = self.patch_embed
        points = [("MS_SPS_lif", sps.proj_lif), ("MS_SPS_lif1", sps.proj_lif1), ("MS_SPS_lif2", sps.proj_lif2),
                  ("MS_SPS_lif3", sps.proj_lif3)]
        for i, blk in enumerate(self.block):
            attn, prefix = blk.attn, f"MS_SSA_Conv{i}"
            points += [(f"{prefix}_first_lif", attn.shortcut_lif), (f"{prefix}_q_lif", attn.q_spikes),
                       (f"{prefix}_k_lif", attn.k_spikes), (f"{prefix}_v_lif", attn.v_spikes)]
            if self.attention_mode == "SDT":
                points += [(f"{prefix}_kv_before", attn.kv_before), (f"{prefix}_kv", attn.talking_heads_lif),
                           (f"{prefix}_x_after_qkv", attn.x_after_qkv)]
            else:
                points.append((f"{prefix}_after_qkv", attn.after_qkv))
            points += [(f"MS_MLP_Conv{i}_fc1_lif", blk.mlp.fc1_lif), (f"MS_MLP_Conv{i}_fc2_lif", blk.mlp.fc2_lif)]
        points.append(("head_lif", self.head_lif))
        return points

    def to_time_major(self, x: torch.Tensor) -> torch.Tensor:
        """Static ``[B, C, H, W]`` -> ``[T, B, C, H, W]`` (same image every step); DVS ``[B, T, ...]`` -> time-major."""
        if x.dim() < 5:
            return x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        if x.shape[1] != self.T:
            raise ValueError(f"the event input has {x.shape[1]} time steps ([B, T, C, H, W] = {list(x.shape)}) but "
                             f"the model was built with T={self.T}")
        return x.transpose(0, 1).contiguous()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and blocks: ``[T, B, D, H', W']`` real-valued features (an unbatched ``[C, H, W]`` image is a batch
        of one, as in the reference)."""
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() < 5 and self.encode_once:
            x = self.patch_embed(x, T=self.T)
        else:
            x = self.patch_embed(self.to_time_major(x))
        for blk in self.block:
            x = blk(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Token mean, ``head_lif``, ``head``; mean over T unless TET."""
        x = self.head(self.head_lif(x.flatten(3).mean(3)))
        return x if self.TET else x.mean(0)

    def forward(self, x: torch.Tensor, hook: dict | None = None):
        """Logits; with ``hook`` (a dict) returns ``(logits, hook)`` with the reference hook tensors added."""
        if self.auto_reset and self.neuron_backend != "fused":
            self.reset_neurons()
        if hook is None:
            return self.forward_head(self.forward_features(x))
        with TensorRecorder(self.legacy_hook_points(), hook):
            out = self.forward_head(self.forward_features(x))
        return out, hook


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Unwrap timm/DDP checkpoints (``state_dict``/``state_dict_ema``, ``module.`` prefix) into model keys."""
    if "state_dict_ema" in state_dict and "state_dict" not in state_dict:
        state_dict = state_dict["state_dict_ema"]
    state_dict = state_dict.get("state_dict", state_dict)
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def timm_size_kwargs(kwargs: dict) -> dict:
    """Map timm's ``in_chans`` and ``img_size`` (int or (H, W)) onto ``in_channels`` and ``img_size_h``/``_w``."""
    kwargs = dict(kwargs)
    renames = {"in_chans": {"in_channels": kwargs.pop("in_chans")}} if "in_chans" in kwargs else {}
    if "img_size" in kwargs:
        size = kwargs.pop("img_size")
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        renames["img_size"] = {"img_size_h": height, "img_size_w": width}
    for timm_name, values in renames.items():
        for name, value in values.items():
            if kwargs.get(name, value) != value:
                raise ValueError(f"{timm_name} and {name} disagree ({name}={kwargs[name]!r}); pass one of them")
            kwargs[name] = value
    return kwargs


def _create_sdt(variant: str, pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    kwargs = timm_size_kwargs(kwargs)
    return build_model_with_cfg(SpikeDrivenTransformer, variant, pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn, kwargs_filter=("img_size", "in_chans"),
                                **kwargs)


def _cfg(**kwargs) -> dict:
    return {"num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
            "interpolation": "bicubic", "fixed_input_size": True, "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "first_conv": "patch_embed.proj_conv", "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({
    "sdt": _cfg(num_classes=11, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),  # the reference's: timm's ViT cfg
    "sdt_8_384": _cfg(),
    "sdt_8_512": _cfg(),
    "sdt_8_768": _cfg(),
    "sdt_cifar_2_512": _cfg(num_classes=10, input_size=(3, 32, 32)),
    "sdt_dvs_2_256": _cfg(num_classes=10, input_size=(2, 64, 64), mean=(0.0, 0.0), std=(1.0, 1.0)),
    "sdt_test": _cfg(num_classes=10, input_size=(3, 32, 32)),
})

_IMAGENET = dict(img_size_h=224, img_size_w=224, in_channels=3, num_classes=1000, pooling_stat="1111", T=4)

# The constructor arguments each named variant fixes (the caller's keyword arguments still win).
VARIANTS: dict[str, dict] = {
    "sdt_8_384": dict(_IMAGENET, embed_dims=384, depths=8),
    "sdt_8_512": dict(_IMAGENET, embed_dims=512, depths=8),
    "sdt_8_768": dict(_IMAGENET, embed_dims=768, depths=8),
    "sdt_cifar_2_512": dict(img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=512, depths=2,
                            T=4, pooling_stat="0011"),
    "sdt_dvs_2_256": dict(img_size_h=64, img_size_w=64, in_channels=2, num_classes=10, embed_dims=256, depths=2,
                          T=16, pooling_stat="0011", dvs_mode=True),
    "sdt_test": dict(img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=32, num_heads=4,
                     depths=1, T=2, pooling_stat="0011"),
}


def variant_defaults(name: str) -> dict:
    """The constructor arguments the registered variant ``name`` fixes ({} for ``sdt`` and unknown names)."""
    return dict(VARIANTS.get(name, {}))


def _variant(variant: str, pretrained: bool, kwargs: dict) -> SpikeDrivenTransformer:
    return _create_sdt(variant, pretrained=pretrained, **{**VARIANTS[variant], **timm_size_kwargs(kwargs)})


@register_model
def sdt(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """The reference entry point: every argument comes from the caller (``timm.create_model("sdt", ...)``)."""
    return _create_sdt("sdt", pretrained=pretrained, **kwargs)


@register_model
def sdt_8_384(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-8-384 for ImageNet (16.82M parameters)."""
    return _variant("sdt_8_384", pretrained, kwargs)


@register_model
def sdt_8_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-8-512 for ImageNet (29.69M parameters)."""
    return _variant("sdt_8_512", pretrained, kwargs)


@register_model
def sdt_8_768(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-8-768 for ImageNet (66.34M parameters)."""
    return _variant("sdt_8_768", pretrained, kwargs)


@register_model
def sdt_cifar_2_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-2-512 for CIFAR-10, 32x32, T=4 (10.23M parameters)."""
    return _variant("sdt_cifar_2_512", pretrained, kwargs)


@register_model
def sdt_dvs_2_256(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-2-256 for CIFAR10-DVS, 64x64 event frames, T=16 (2.57M parameters)."""
    return _variant("sdt_dvs_2_256", pretrained, kwargs)


@register_model
def sdt_test(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """A tiny model for tests: 1 block of width 32, 32x32 input, T=2."""
    return _variant("sdt_test", pretrained, kwargs)
