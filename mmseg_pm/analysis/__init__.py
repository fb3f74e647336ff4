"""One analysis harness for every token-reduction method: build (config + checkpoint, variants,
images), FLOPs (mmengine.analysis + the reducer's own cost), latency benchmark, peak memory and
reports. Used by ``tools/analysis_tools/*``, ``tools/deployment/pytorch2onnx.py``."""
from .benchmark import BenchmarkSpec, run_benchmark
from .build import (build_segmentor, default_input_shape, load_config, load_images,
                    load_segmentor, preprocess, variant_cfg)
from .flops import CONVENTION, count_flops, count_flops_over_images, gflops
from .report import benchmark_table, format_flops_report, protocol_text

__all__ = [
    'BenchmarkSpec', 'run_benchmark', 'build_segmentor', 'default_input_shape', 'load_config',
    'load_images', 'load_segmentor', 'preprocess', 'variant_cfg', 'CONVENTION', 'count_flops',
    'count_flops_over_images', 'gflops', 'benchmark_table', 'format_flops_report',
    'protocol_text'
]
