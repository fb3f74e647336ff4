"""Models of mmseg_pm; importing registers them into ``mmseg.registry.MODELS``."""
from .backbones import CompressedTokens, PruneMergeViT
from .layers import PMTransformerEncoderLayer, PruneMerge
from .necks import TokenReconstructNeck
from .segmentors import PMDistillEncoderDecoder
from .utils import PMStructure, PMStructureError

__all__ = [
    'PruneMergeViT', 'CompressedTokens', 'PMTransformerEncoderLayer', 'PruneMerge',
    'TokenReconstructNeck', 'PMDistillEncoderDecoder', 'PMStructure', 'PMStructureError'
]
