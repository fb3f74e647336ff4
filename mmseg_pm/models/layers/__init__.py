from .pm_encoder_layer import PMTransformerEncoderLayer
from .prune_merge import PruneMerge

__all__ = ['PMTransformerEncoderLayer', 'PruneMerge']
