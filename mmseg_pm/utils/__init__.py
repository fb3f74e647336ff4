"""Leaf helpers of the tools (no model code): command-line plumbing, pre-flight checks, atomic
writes, markdown tables."""
from .cli import config_name, parse_shape, quiet_logging, run_cli
from .io import atomic_write, save_checkpoint, save_json
from .markdown import markdown_table, span_label

__all__ = ['run_cli', 'parse_shape', 'config_name', 'quiet_logging', 'atomic_write',
           'save_json', 'save_checkpoint', 'markdown_table', 'span_label']
