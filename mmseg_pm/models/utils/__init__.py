from . import prune_merge
from .prune_merge import PMConfigError, PMStructure, PMStructureError

__all__ = ['prune_merge', 'PMStructure', 'PMStructureError', 'PMConfigError']
