"""SDT / STAtten models; importing this package registers them with timm (``timm.create_model("sdt", ...)``)."""
from .spikeformer import VARIANTS, SpikeDrivenTransformer, checkpoint_filter_fn, validate_config, variant_defaults

__all__ = ["SpikeDrivenTransformer", "VARIANTS", "checkpoint_filter_fn", "validate_config", "variant_defaults"]
