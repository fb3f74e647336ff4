"""Token reducers: one nn.Module per method, all with the :class:`TokenReducer` interface,
registered in mmseg's ``MODELS`` (``token_reduction=dict(type='ToMe', r=16)``)."""
from .algm import ALGM
from .base import ReductionContext, TokenReducer, registered_reducers
from .evit import EViT
from .mstm import MSTM, MultiScaleFusion
from .prune_merge import PruneMerge, PruneMergeUnit
from .tome import ToMe

__all__ = ['TokenReducer', 'ReductionContext', 'registered_reducers', 'PruneMerge',
           'PruneMergeUnit', 'ToMe', 'EViT', 'ALGM', 'MSTM', 'MultiScaleFusion']
