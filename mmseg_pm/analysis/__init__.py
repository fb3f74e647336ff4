"""One analysis harness for every token-reduction method: build (config + checkpoint, variants,
images), FLOPs (mmengine.analysis + the reducer's own cost), latency benchmark, peak memory,
reports, and the comparison of methods at equal GFLOPs (knob search, mIoU / agreement / KL).
Used by ``tools/analysis_tools/*``, ``tools/deployment/pytorch2onnx.py``."""
from .benchmark import BenchmarkSpec, run_benchmark
from .build import (build_segmentor, default_input_shape, load_config, load_images,
                    load_segmentor, preprocess, variant_cfg)
from .compare import CompareSettings, run_comparison
from .evaluate import evaluate_segmentor, load_eval_data
from .flops import CONVENTION, count_flops, count_flops_over_images, gflops
from .knobs import method_knob, search_knob
from .report import benchmark_table, format_flops_report, protocol_text

__all__ = [
    'BenchmarkSpec', 'run_benchmark', 'build_segmentor', 'default_input_shape', 'load_config',
    'load_images', 'load_segmentor', 'preprocess', 'variant_cfg', 'CONVENTION', 'count_flops',
    'count_flops_over_images', 'gflops', 'benchmark_table', 'format_flops_report',
    'protocol_text', 'CompareSettings', 'run_comparison', 'evaluate_segmentor',
    'load_eval_data', 'method_knob', 'search_knob'
]
