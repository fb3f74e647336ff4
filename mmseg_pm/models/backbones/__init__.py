from .prune_merge_vit import PruneMergeViT
from .token_reduction_vit import (CompressedTokens, ReductionTimer, TokenReductionViT,
                                  reduction_backbone)

__all__ = ['TokenReductionViT', 'PruneMergeViT', 'CompressedTokens', 'ReductionTimer',
           'reduction_backbone']
