"""Token reducers: one nn.Module per method, all with the :class:`TokenReducer` interface."""
from .base import ReductionContext, TokenReducer, registered_reducers
from .prune_merge import PruneMerge, PruneMergeUnit

__all__ = ['TokenReducer', 'ReductionContext', 'registered_reducers', 'PruneMerge',
           'PruneMergeUnit']
