"""Spike-driven self-attention (SDSA) and the spiking MLP/block of SDT and STAtten (module/ms_conv.py).

Tensors are time-major: ``[T, B, C, H, W]``.  The residual stream is real-valued ("membrane shortcut"); each
branch starts with a LIF.  Two attention cores share the q/k/v/projection layers of :class:`MS_SSA_Conv`:

* ``"SDT"``: ``x = Q * SN(sum_tokens(K * V))`` (Spike-driven Transformer, NeurIPS 2023);
* ``"STAtten"``: block-wise spatio-temporal linear attention ``Q (K^T V) * scale`` over chunks of
  ``chunk_size`` consecutive time steps, followed by ``attn_lif`` (STAtten, CVPR 2025).

``reference`` picks which code base the module reproduces where the two differ: with ``"sdt"`` every neuron
follows ``spike_mode``; with ``"statten"`` the attention neurons are always LIF and, in ``"SDT"`` mode with DVS
input, q is max-pooled too.
"""
from __future__ import annotations

import torch
from torch import nn

from .bn_lif import bn_lif
from .instrument import sparsity, timer
from .neuron import ATTENTION_THRESHOLD, create_lif
from .pool import SpatialMaxPool
from .probe import Probe
from .sps import _tb_apply

__all__ = ["ATTENTION_MODES", "REFERENCES", "dvs_pooling", "MS_SSA_Conv", "MS_MLP_Conv", "MS_Block_Conv"]

ATTENTION_MODES = ("SDT", "STAtten")
REFERENCES = ("sdt", "statten")
# Sparsity-probe labels of the instrumented STAtten fork (docs/profiler.md).
_QKV = ("q", "k", "v")
_QKV_CHUNKS = ("Attention q_chunks", "Attention k_chunks", "Attention v_chunks")
_QKV_MERGED = ("Attention postReshape q_chunks", "Attention postReshape k_chunks", "Attention postReshape v_chunks")


def dvs_pooling() -> SpatialMaxPool:
    """3x3 max over the last two axes, keeping the shape (``Erode`` in SDT, ``dvs_pooling`` in STAtten)."""
    return SpatialMaxPool()


def _token_major(x: torch.Tensor) -> bool:
    """Whether ``[T, B, C, H, W]`` ``x`` keeps the channels of a token together in memory (channels-last)."""
    return x.stride(2) < x.stride(-1)


def _to_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[T, B, C, H, W]`` -> ``[T, B, heads, N, C // heads]``; channel c is head ``c // d``, index ``c % d``.

    A view (no copy) in channel-major and in token-major (channels-last) memory alike.
    """
    T, B, C = x.shape[:3]
    return x.reshape(T, B, num_heads, C // num_heads, -1).transpose(-1, -2)


def _from_heads(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_to_heads`: ``[T, B, heads, N, d]`` -> ``like``'s shape (``[T, B, C, H, W]``) in
    ``like``'s layout; a view when ``x`` is :func:`_to_heads` of a tensor in that layout."""
    T, B, C, H, W = like.shape
    if _token_major(like):
        return x.permute(0, 1, 3, 2, 4).reshape(T, B, H, W, C).permute(0, 1, 4, 2, 3)
    return x.transpose(3, 4).reshape(like.shape)


def _time_space_merge(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """STAtten's ``[nc, cs, B, heads, d, N]`` output as ``[T, B, C, N]`` for ``like`` (``[T, B, C, H, W]``): a view
    in channel-major memory; in ``like``'s token-major layout (one copy) when the model runs channels-last."""
    T, B, C, H, W = like.shape
    out = out.reshape(T, B, C, H * W)
    if _token_major(like):
        return out.transpose(2, 3).contiguous().transpose(2, 3)
    return out


class MS_SSA_Conv(nn.Module):
    """Spike-driven self-attention branch with its residual add: ``x + proj_bn(proj_conv(attention(lif(x))))``."""

    def __init__(self, dim: int, num_heads: int = 8, spike_mode: str = "lif", dvs: bool = False, layer: int = 0,
                 attention_mode: str = "SDT", chunk_size: int = 2, reference: str = "sdt",
                 neuron_backend: str = "fused"):
        super().__init__()
        if attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode={attention_mode!r} is not supported; choose one of {ATTENTION_MODES}")
        if reference not in REFERENCES:
            raise ValueError(f"reference={reference!r} is not supported; choose one of {REFERENCES}")
        if dim % num_heads:
            raise ValueError(f"embed_dims={dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.dvs, self.layer = dim, num_heads, dvs, layer
        self.attention_mode, self.chunk_size, self.reference = attention_mode, chunk_size, reference
        self.fuse_bn_lif = False  # q/k/v BN + LIF as one op (module.bn_lif); set through the model
        attn_spike_mode = spike_mode if reference == "sdt" else "lif"

        if dvs:
            self.pool = dvs_pooling()
        for name in ("q", "k", "v"):
            self.add_module(f"{name}_conv", nn.Conv2d(dim, dim, kernel_size=1, stride=1, bias=False))
            self.add_module(f"{name}_bn", nn.BatchNorm2d(dim))
            self.add_module(f"{name}_lif", create_lif(attn_spike_mode, backend=neuron_backend))
        self.attn_lif = create_lif(attn_spike_mode, v_threshold=ATTENTION_THRESHOLD, backend=neuron_backend)
        # Built as in the reference (it is in every checkpoint) but never used in the computation.
        self.talking_heads = nn.Conv1d(num_heads, num_heads, kernel_size=1, stride=1, bias=False)
        self.talking_heads_lif = create_lif(attn_spike_mode, v_threshold=ATTENTION_THRESHOLD, backend=neuron_backend)
        self.proj_conv = nn.Conv2d(dim, dim, kernel_size=1, stride=1)
        self.proj_bn = nn.BatchNorm2d(dim)
        self.shortcut_lif = create_lif(attn_spike_mode, backend=neuron_backend)

        # q/k/v spikes as the attention core sees them (after the DVS max-pool where the reference applies one).
        self.q_spikes, self.k_spikes, self.v_spikes = Probe(), Probe(), Probe()
        if attention_mode == "SDT":
            self.kv_before = Probe()
            self.x_after_qkv = Probe()
            self._attend = self._sdt_attention
        else:
            self.after_qkv = Probe()
            self._attend = self._statten_attention

    def _spikes(self, x_flat: torch.Tensor, name: str, shape: torch.Size) -> torch.Tensor:
        conv, bn, lif = (getattr(self, f"{name}_{part}") for part in ("conv", "bn", "lif"))
        return bn_lif(bn, lif, conv(x_flat).reshape(shape), self.fuse_bn_lif)

    def _sdt_attention(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.dvs:
            k, v = self.pool(k), self.pool(v)
            if self.reference == "statten":
                q = self.pool(q)
        with timer("Heads Reshape"):
            q, k, v = (_to_heads(t, self.num_heads) for t in (self.q_spikes(q), self.k_spikes(k), self.v_spikes(v)))
        sparsity(_QKV, q, k, v)
        with timer("KV Hadamard and Sum"):
            kv = self.kv_before(k.mul(v))
            if self.dvs:
                kv = self.pool(kv)
            kv = kv.sum(dim=-2, keepdim=True)
        with timer("KV LIF"):
            kv = self.talking_heads_lif(kv)
        sparsity("Attention kv", kv)
        with timer("Q Hadamard"):
            out = q.mul(kv)
            if self.dvs:
                out = self.pool(out)
        sparsity("Attention out", out)
        with timer("Heads Transpose"):
            out = _from_heads(self.x_after_qkv(out), x)
        return out

    def _statten_attention(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                           v: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        if H != W:
            raise ValueError(f"STAtten scales attention by 1/H and needs a square token grid; this input gives a "
                             f"{H}x{W} grid: feed square images (the size the model was built for)")
        if self.dvs:
            q, k, v, x_pool = self.pool(q), self.pool(k), self.pool(v), self.pool(x)
            scale = 1.0 / (H * H * self.chunk_size)
        else:
            scale = 1.0 / H
        cs, heads = self.chunk_size, self.num_heads
        q, k, v = self.q_spikes(q), self.k_spikes(k), self.v_spikes(v)
        sparsity(_QKV, q, k, v)
        with timer("Reshape"):
            # Views, no copies: [T, B, C, H, W] -> [nc, cs, B, heads, d, N] (channel c is head c // d, index c % d).
            # The reference copies into token-major [nc, B, heads, cs * N, d]; the sums below are the same.
            q, k, v = (t.reshape(T // cs, cs, B, heads, C // heads, H * W) for t in (q, k, v))
            sparsity(_QKV_CHUNKS, q, k, v)
        sparsity(_QKV_MERGED, q, k, v)
        with timer("Matmul"):
            # K^T V over the chunk's cs * N tokens: a sum of spike counts per time step, exact in any order.
            kv = (k @ v.transpose(-2, -1)).sum(dim=1, keepdim=True) * scale  # [nc, 1, B, heads, d, d]
            out = kv.transpose(-2, -1) @ q  # (Q KV)^T: [nc, cs, B, heads, d, N]
        sparsity("Attention out", out)
        with timer("Reshape Time-Space"):
            out = _time_space_merge(out, x)  # the chunks are already time-major
        sparsity("Attention postReshape chunk output", out, per_step=True)
        with timer("Transpose and LIF"):
            out = self.attn_lif(out).reshape(T, B, C, H, W)
        sparsity("Attention postReshape chunk x", out, per_step=True)
        if self.dvs:
            out = out.mul(x_pool) + x_pool
        return self.after_qkv(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        x = self.shortcut_lif(x)
        x_flat = x.flatten(0, 1)
        sparsity("x_for_qkv", x_flat)
        q, k, v = (self._spikes(x_flat, name, x.shape) for name in ("q", "k", "v"))
        out = self._attend(x, q, k, v)
        with timer("Projection and BN"):
            out = _tb_apply(lambda t: self.proj_bn(self.proj_conv(t)), out)
        out = out + identity
        sparsity("x", out)
        return out


class MS_MLP_Conv(nn.Module):
    """Spiking MLP with its residual add: ``x + fc2_bn(fc2_conv(lif(fc1_bn(fc1_conv(lif(x))))))`` (1x1 convs).

    As in the reference, a hidden width equal to the input width (``mlp_ratio`` 1: ``self.res``) adds an inner
    residual: ``h = x + fc1_bn(...)``, output ``h + fc2_bn(fc2_conv(lif(h)))``.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 spike_mode: str = "lif", layer: int = 0, neuron_backend: str = "fused"):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.layer = layer
        self.fc1_conv = nn.Conv2d(in_features, hidden_features, kernel_size=1, stride=1)
        self.fc1_bn = nn.BatchNorm2d(hidden_features)
        self.fc1_lif = create_lif(spike_mode, backend=neuron_backend)
        self.fc2_conv = nn.Conv2d(hidden_features, out_features, kernel_size=1, stride=1)
        self.fc2_bn = nn.BatchNorm2d(out_features)
        self.fc2_lif = create_lif(spike_mode, backend=neuron_backend)
        self.res = in_features == hidden_features
        self.fuse_bn_lif = False  # fc1_bn + fc2_lif as one op (module.bn_lif); set through the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        sparsity("MLP x", x)
        x = self.fc1_lif(x)
        sparsity("MLP postLIF x after lif", x)
        if self.res:
            x = _tb_apply(lambda t: self.fc1_bn(self.fc1_conv(t)), x)
            sparsity("MLP postBN x after fc1", x)
            identity = x = identity + x
            x = self.fc2_lif(x)
        else:
            x = bn_lif(self.fc1_bn, self.fc2_lif, _tb_apply(self.fc1_conv, x), self.fuse_bn_lif,
                       probe="MLP postBN x after fc1")
        sparsity("MLP postLIF x after fc2", x)
        x = _tb_apply(lambda t: self.fc2_bn(self.fc2_conv(t)), x)
        sparsity("MLP postBN x after fc2ConvBn", x)
        x = x + identity
        sparsity("MLP x after identity final", x)
        return x


class MS_Block_Conv(nn.Module):
    """One encoder block: SDSA branch then MLP branch, each with its own residual (no LayerNorm, no DropPath).

    ``skip_attention`` (ASTER's attention skipping) bypasses the whole SDSA branch, its residual add included: the
    block input goes straight to the MLP, which still runs.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, spike_mode: str = "lif",
                 dvs: bool = False, layer: int = 0, attention_mode: str = "SDT", chunk_size: int = 2,
                 reference: str = "sdt", neuron_backend: str = "fused"):
        super().__init__()
        self.attn = MS_SSA_Conv(dim, num_heads=num_heads, spike_mode=spike_mode, dvs=dvs, layer=layer,
                                attention_mode=attention_mode, chunk_size=chunk_size, reference=reference,
                                neuron_backend=neuron_backend)
        self.mlp = MS_MLP_Conv(dim, hidden_features=int(dim * mlp_ratio), spike_mode=spike_mode, layer=layer,
                               neuron_backend=neuron_backend)
        self.skip_attention = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x if self.skip_attention else self.attn(x))
