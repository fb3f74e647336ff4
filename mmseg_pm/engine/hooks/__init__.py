from .distill_hook import SelfDistillationHook
from .pm_compress_hook import PMCompressHook
from .rng_state_hook import RNGStateHook

__all__ = ['PMCompressHook', 'SelfDistillationHook', 'RNGStateHook']
