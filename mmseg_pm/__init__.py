"""mmseg_pm: Prune-and-Merge token compression for plain-ViT segmentation in MMSegmentation 1.x.

Mao et al., "Prune and Merge: Efficient Token Compression for Vision Transformer with Spatial
Information Preserved", IEEE TMM 2025 (arXiv 2503.23455).

``import mmseg_pm`` (what ``custom_imports=dict(imports=['mmseg_pm'])`` in every config does)
applies the stack's known fixes (:mod:`mmseg_pm.compat`) and registers the package's models,
hooks and loops into mmseg's / MMEngine's registries.
"""
from . import compat
from .version import __version__

compat.apply()

from . import datasets, engine, models  # noqa: E402,F401  (register into mmseg's registries)

__all__ = ['__version__', 'models', 'engine', 'datasets']
