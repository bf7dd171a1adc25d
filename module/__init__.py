"""Building blocks of the spiking transformers: neurons, stem, attention, MLP, blocks and probes."""
from .ms_conv import ATTENTION_MODES, REFERENCES, MS_Block_Conv, MS_MLP_Conv, MS_SSA_Conv, dvs_pooling
from .neuron import SPIKE_MODES, create_lif, is_neuron
from .probe import Probe, TensorRecorder
from .sps import MS_SPS

__all__ = [
    "ATTENTION_MODES", "REFERENCES", "SPIKE_MODES", "MS_Block_Conv", "MS_MLP_Conv", "MS_SPS", "MS_SSA_Conv",
    "Probe", "TensorRecorder", "create_lif", "dvs_pooling", "is_neuron",
]
