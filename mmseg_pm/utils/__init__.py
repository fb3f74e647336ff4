from .io import atomic_write, save_checkpoint, save_json
from .preflight import UserError, run_cli

__all__ = ['UserError', 'run_cli', 'atomic_write', 'save_json', 'save_checkpoint']
