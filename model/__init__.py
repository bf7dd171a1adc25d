"""SDT / STAtten models; importing this package registers them with timm (``timm.create_model("sdt", ...)``)."""
from .spikeformer import SpikeDrivenTransformer, checkpoint_filter_fn, validate_config

__all__ = ["SpikeDrivenTransformer", "checkpoint_filter_fn", "validate_config"]
