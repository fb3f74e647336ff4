"""Efficiency analysis: FLOPs / parameters (with the Prune-and-Merge M/R cost) and benchmarks.

* :mod:`.common`: build a segmentor from a config and a checkpoint (strict), install a quick
  random-score uniform structure for estimates;
* :mod:`.flops`: :func:`count_flops` (mmengine.analysis, one multiply-add = one FLOP);
* :mod:`.benchmark`: :func:`run_benchmark`, baseline vs compressed latency / throughput on real
  images, interleaved.

Used by ``tools/analysis_tools/{get_flops,benchmark,results_table}.py``,
``tools/deployment/pytorch2onnx.py`` and ``tools/visualize_tokens.py``.
"""
from .common import (default_input_shape, get_backbone, install_uniform_structure,
                     is_compressed, load_config, load_segmentor, structure_label)
from .flops import CONVENTION, count_flops, format_flops_report, gflops, pm_unit_costs

__all__ = [
    'load_config', 'load_segmentor', 'get_backbone', 'is_compressed',
    'install_uniform_structure', 'structure_label', 'default_input_shape', 'count_flops',
    'pm_unit_costs', 'format_flops_report', 'gflops', 'CONVENTION'
]
