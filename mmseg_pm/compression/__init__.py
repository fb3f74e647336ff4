"""The Prune-and-Merge compression step: gradient-weighted scoring, global structure search,
installation (Mao et al., IEEE TMM 2025, arXiv 2503.23455)."""
from .compress import compress_segmentor, pm_backbone, random_structures
from .scoring import AttentionScorer, score_segmentor
from .search import normalize_scores, search_structures, structure_table
from .settings import CompressSettings

__all__ = [
    'CompressSettings', 'AttentionScorer', 'score_segmentor', 'normalize_scores',
    'search_structures', 'structure_table', 'compress_segmentor', 'pm_backbone',
    'random_structures'
]
