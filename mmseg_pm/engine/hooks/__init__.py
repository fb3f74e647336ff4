from .pm_compress_hook import PMCompressHook

__all__ = ['PMCompressHook']
