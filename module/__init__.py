"""Building blocks of the spiking transformers: neurons, stem, attention, MLP, blocks and probes."""
from .ms_conv import ATTENTION_MODES, REFERENCES, MS_Block_Conv, MS_MLP_Conv, MS_SSA_Conv, dvs_pooling
from .fused_lif import MultiStepLIF, multistep_lif
from .neuron import NEURON_BACKENDS, SPIKE_MODES, create_lif, is_neuron
from .probe import Probe, TensorRecorder
from .sps import MS_SPS

__all__ = [
    "ATTENTION_MODES", "NEURON_BACKENDS", "REFERENCES", "SPIKE_MODES", "MS_Block_Conv", "MS_MLP_Conv", "MS_SPS",
    "MS_SSA_Conv", "MultiStepLIF", "Probe", "TensorRecorder", "create_lif", "dvs_pooling", "is_neuron",
    "multistep_lif",
]
