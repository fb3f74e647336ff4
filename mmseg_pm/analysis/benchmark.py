"""Latency / throughput benchmark of segmentors on real images, baseline and compressed interleaved.

Protocol (stated in every report, ``../shared/docs/anchors.md`` §3.5): the segmentor's
tensor-mode forward (``model(inputs, mode='tensor')``: backbone + neck + decode head, logits at
the decode head's resolution) in eval mode under ``torch.no_grad``, on a fixed batch of real
images of the config's test dataset resized to the crop and normalised by the model's data
pre-processor **before** timing (data loading, pre-processing and the resize of the logits to
the image are not timed). Each (batch size, precision) setting runs ``warmup`` untimed forwards
per model, then ``repeat`` rounds of ``iters`` timed forwards per model, the models taking turns
in ABBA order (round r runs them in reverse order when r is odd) so that slow drifts (thermal,
other processes) hit them alike. Every forward is timed alone with ``time.perf_counter``
(``torch.cuda.synchronize`` before and after on GPU).

Reported per model and setting: latency median and inter-quartile range (ms per forward of the
batch), throughput = batch / median latency (images / s), speed-up = baseline median /
model median, GFLOPs ratio = baseline GFLOPs / model GFLOPs (M/R counted, one multiply-add = one
FLOP), efficiency = speed-up / GFLOPs ratio (1 = the speed-up the FLOPs promise), peak memory
(CPU: peak resident set size of the process during one forward, and its growth over the RSS
before the forward, via ``/proc/self/status`` VmHWM reset through ``/proc/self/clear_refs``
after glibc's ``malloc_trim``; CUDA: ``torch.cuda.max_memory_allocated``).
"""
import contextlib
import copy
import os
import os.path as osp
import platform
import re
import resource
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..utils.preflight import UserError, check_dataset
from .flops import gflops

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def load_test_images(cfg, num_images: int, shape: Sequence[int]) -> List[dict]:
    """``num_images`` real images of the config's test dataset, resized to ``shape``.

    Uses mmseg's dataset class and transforms (``LoadImageFromFile``, ``Resize`` to exactly
    ``(H, W)`` without keeping the aspect ratio, ``PackSegInputs``) on the
    ``test_dataloader.dataset`` of ``cfg``. With fewer images than requested, they repeat.

    Args:
        cfg (Config): the config (its test dataset is used).
        num_images (int): number of images, >= 1.
        shape (tuple[int, int]): ``(H, W)`` in pixels.

    Returns:
        list[dict]: packed samples (``inputs``: uint8 Tensor ``(3, H, W)`` BGR,
        ``data_samples``: SegDataSample).

    Raises:
        UserError: no test dataset in the config, or its data root / image folder is missing
            or empty (the project's pre-flight message).
    """
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    dataset_cfg = copy.deepcopy((cfg.get('test_dataloader') or {}).get('dataset'))
    if not dataset_cfg:
        raise UserError('the config has no test_dataloader.dataset to take images from')
    check_dataset(dataset_cfg, 'test')
    h, w = (int(v) for v in shape)
    dataset_cfg['pipeline'] = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(w, h), keep_ratio=False),
        dict(type='PackSegInputs'),
    ]
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    dataset = DATASETS.build(dataset_cfg)
    if len(dataset) == 0:
        raise UserError(f'the test dataset under {dataset_cfg.get("data_root")} has no images')
    return [dataset[i % len(dataset)] for i in range(int(num_images))]


def preprocess(model: nn.Module, samples: List[dict]) -> Tensor:
    """Normalise packed samples with the model's data pre-processor (mmseg's, test mode).

    Returns:
        Tensor: ``(len(samples), 3, H, W)`` float on the model's device.
    """
    data = dict(inputs=[s['inputs'] for s in samples],
                data_samples=[s['data_samples'] for s in samples])
    with torch.no_grad():
        return model.data_preprocessor(data, training=False)['inputs']


# --------------------------------------------------------------------------------------------
# timing helpers
# --------------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    """Context manager for ``precision`` ('fp32' | 'bf16' | 'fp16') on ``device``.

    Raises:
        ValueError: unknown precision, or fp16 on CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    device_type = 'cuda' if str(device).startswith('cuda') else 'cpu'
    if device_type == 'cpu' and dtype == torch.float16:
        raise ValueError('fp16 autocast needs a GPU; use bf16 on CPU')
    return torch.autocast(device_type=device_type, dtype=dtype)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of ``values`` (as numpy's default)."""
    v = sorted(values)
    if not v:
        return float('nan')
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def latency_stats(samples_s: Sequence[float]) -> dict:
    """Median, quartiles, IQR, mean, min of per-forward latencies given in seconds, in ms."""
    ms = [1e3 * s for s in samples_s]
    q25, med, q75 = percentile(ms, 25), percentile(ms, 50), percentile(ms, 75)
    return dict(median=med, q25=q25, q75=q75, iqr=q75 - q25, mean=sum(ms) / len(ms),
                min=min(ms), n=len(ms))


def _read_status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            m = re.search(rf'^{field}:\s+(\d+)\s+kB', f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    import ctypes
    try:  # hand freed heap memory back to the OS first, so RSS = live memory (glibc)
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure_peak_memory(model: nn.Module, x: Tensor, device: str, precision: str) -> dict:
    """Peak memory of one forward, in MiB.

    Returns:
        dict: ``kind`` ('cuda_max_allocated' | 'rss_peak' | 'rss_process_peak'), ``peak_mib``
        (CUDA: max allocated during the forward; CPU: peak resident set size of the process
        during the forward, which includes every model loaded), ``forward_mib`` (peak minus
        the amount before the forward: the forward's own working memory; None when the
        process peak cannot be reset).
    """
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad(), autocast(device, precision):
            model(x, mode='tensor')
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return dict(kind='cuda_max_allocated', peak_mib=peak / 2**20,
                    forward_mib=(peak - before) / 2**20)
    if _reset_peak_rss() and _read_status_kib('VmHWM') is not None:
        before = _read_status_kib('VmRSS')
        with torch.no_grad(), autocast(device, precision):
            model(x, mode='tensor')
        peak = _read_status_kib('VmHWM')
        return dict(kind='rss_peak', peak_mib=peak / 1024, forward_mib=(peak - before) / 1024)
    with torch.no_grad(), autocast(device, precision):
        model(x, mode='tensor')
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return dict(kind='rss_process_peak', peak_mib=peak_kib / 1024, forward_mib=None)


def measure_mr_time(model: nn.Module, x: Tensor, iters: int, device: str,
                    precision: str) -> Optional[dict]:
    """Time spent in the Prune-and-Merge merge / reconstruct calls of one forward.

    The active units' ``merge`` / ``reconstruct`` are wrapped with timers (synchronised on
    GPU) for ``iters`` forwards (after one untimed forward); the timed benchmark never runs
    with these wrappers.

    Returns:
        dict or None: ``mr_ms`` (median over forwards of the summed M/R time, ms),
        ``forward_ms`` (median forward time in the same instrumented runs, ms), ``fraction``
        (mr_ms / forward_ms); None for models without an active unit.
    """
    from .common import get_backbone
    backbone = get_backbone(model)
    units = [u for u in backbone.pm_units if not u.is_identity] if backbone is not None else []
    if not units:
        return None
    spent = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            _sync(device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(device)
            spent[0] += time.perf_counter() - t0
            return out
        return wrapper

    for u in units:
        u.merge, u.reconstruct = timed(u.merge), timed(u.reconstruct)
    mr, fwd = [], []
    try:
        with torch.no_grad(), autocast(device, precision):
            model(x, mode='tensor')
            for _ in range(max(1, int(iters))):
                spent[0] = 0.0
                _sync(device)
                t0 = time.perf_counter()
                model(x, mode='tensor')
                _sync(device)
                fwd.append(time.perf_counter() - t0)
                mr.append(spent[0])
    finally:
        for u in units:  # drop the instance attributes: the class methods are back
            del u.merge, u.reconstruct
    mr_ms, fwd_ms = 1e3 * percentile(mr, 50), 1e3 * percentile(fwd, 50)
    return dict(mr_ms=mr_ms, forward_ms=fwd_ms, fraction=mr_ms / fwd_ms if fwd_ms else 0.0)


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------
def machine_info(device: str) -> dict:
    """Device / CPU name, torch version, threads and load average, for the protocol."""
    info = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count())
    try:
        with open('/proc/cpuinfo') as f:
            names = re.findall(r'^model name\s*:\s*(.+)$', f.read(), re.M)
        if names:
            info['cpu'] = names[0].strip()
    except OSError:
        pass
    if str(device).startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
    try:
        info['loadavg_1min'] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def run_benchmark(models: Dict[str, nn.Module], inputs: Dict[str, Tensor],
                  batch_sizes: Sequence[int] = (1, 8), precisions: Sequence[str] = ('fp32', ),
                  warmup: int = 5, iters: int = 20, repeat: int = 3, device: str = 'cpu',
                  flops: Optional[Dict[str, dict]] = None,
                  labels: Optional[Dict[str, dict]] = None, mr_iters: int = 3,
                  progress: bool = True) -> dict:
    """Time ``models`` on the same images, interleaved; the first model is the baseline.

    Args:
        models (dict[str, nn.Module]): name -> segmentor, in eval mode on ``device``; the
            first entry is the reference of speed-up and GFLOPs ratio.
        inputs (dict[str, Tensor]): name -> pre-processed images ``(M, 3, H, W)`` on
            ``device`` (each model's own pre-processing of the same images), ``M >=`` every
            batch size (repeated if smaller).
        batch_sizes (list[int]): images per forward. Default: (1, 8).
        precisions (list[str]): 'fp32' | 'bf16' | 'fp16' (autocast; fp16 GPU only).
        warmup (int): untimed forwards per model and setting. Default: 5.
        iters (int): timed forwards per model and round. Default: 20.
        repeat (int): rounds (ABBA order). Default: 3.
        device (str): 'cpu' or 'cuda[:N]'.
        flops (dict[str, dict], optional): name -> :func:`mmseg_pm.analysis.flops.count_flops`
            result, for GFLOPs, GFLOPs ratio and efficiency.
        labels (dict[str, dict], optional): name -> extra fields copied into every row
            (config, checkpoint, structure, ...).
        mr_iters (int): instrumented forwards for the M/R time of compressed models (0: skip).
        progress (bool): tqdm progress bar on stderr. Default: True.

    Returns:
        dict: ``protocol`` (every setting of the measurement, machine info) and ``rows``
        (one per model and setting) with ``name``, ``role`` ('baseline' | 'compressed' |
        'model'), ``batch``, ``precision``, ``input_size`` [H, W], ``latency_ms`` (median,
        q25, q75, iqr, mean, min, n), ``throughput_img_s``, ``speedup``,
        ``gflops_mr_counted``, ``gflops_mr_not_counted``, ``gflops_ratio``,
        ``gflops_ratio_not_counted``, ``efficiency``, ``memory`` (see
        :func:`measure_peak_memory`), ``mr_time`` (see :func:`measure_mr_time`).

    Raises:
        ValueError: empty ``models``, bad counts, unknown precision, fp16 on CPU.
    """
    from tqdm import tqdm

    names = list(models)
    if not names:
        raise ValueError('run_benchmark needs at least one model')
    if min(batch_sizes) < 1 or warmup < 0 or iters < 1 or repeat < 1:
        raise ValueError(f'need batch sizes >= 1, warmup >= 0, iters >= 1, repeat >= 1; got '
                         f'{list(batch_sizes)}, {warmup}, {iters}, {repeat}')
    for p in precisions:
        autocast(device, p)  # validates
    shape = list(inputs[names[0]].shape[-2:])
    load_start = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    per_setting = len(names) * (warmup + repeat * iters + 1)
    bar = tqdm(total=len(batch_sizes) * len(precisions) * per_setting, unit='fwd',
               disable=not progress, desc='benchmark', dynamic_ncols=True)
    rows = []
    try:
        for precision in precisions:
            for batch in batch_sizes:
                xs = {}
                for n in names:
                    x = inputs[n]
                    reps = -(-batch // x.shape[0])
                    xs[n] = (x.repeat(reps, 1, 1, 1) if reps > 1 else x)[:batch].contiguous()
                times = {n: [] for n in names}
                bar.set_postfix_str(f'batch {batch} {precision}')
                with torch.no_grad(), autocast(device, precision):
                    for n in names:
                        for _ in range(warmup):
                            models[n](xs[n], mode='tensor')
                            bar.update(1)
                    _sync(device)
                    for r in range(repeat):
                        for n in (names if r % 2 == 0 else names[::-1]):
                            for _ in range(iters):
                                _sync(device)
                                t0 = time.perf_counter()
                                models[n](xs[n], mode='tensor')
                                _sync(device)
                                times[n].append(time.perf_counter() - t0)
                                bar.update(1)
                memory, mr_time = {}, {}
                for n in names:
                    memory[n] = measure_peak_memory(models[n], xs[n], device, precision)
                    bar.update(1)
                    mr_time[n] = (measure_mr_time(models[n], xs[n], mr_iters, device, precision)
                                  if mr_iters > 0 else None)
                ref = latency_stats(times[names[0]])
                for i, n in enumerate(names):
                    lat = latency_stats(times[n])
                    role = 'model' if len(names) == 1 else 'baseline' if i == 0 else \
                        'compressed'
                    row = dict(name=n, role=role, batch=batch, precision=precision,
                               device=str(device), input_size=shape, latency_ms=lat,
                               throughput_img_s=1e3 * batch / lat['median'],
                               speedup=ref['median'] / lat['median'], memory=memory[n],
                               mr_time=mr_time[n])
                    row.update(_flops_fields(flops, names[0], n))
                    if row['gflops_ratio']:
                        row['efficiency'] = row['speedup'] / row['gflops_ratio']
                    if labels and n in labels:
                        row.update(labels[n])
                    rows.append(row)
    finally:
        bar.close()
    protocol = dict(
        forward="segmentor tensor-mode forward (model(inputs, mode='tensor')), eval mode, "
                'torch.no_grad; data loading / pre-processing / logit resize not timed',
        input='real test-set images resized to the input size, normalised by each model\'s '
              'data pre-processor',
        input_size=shape, batch_sizes=list(batch_sizes), precisions=list(precisions),
        warmup=warmup, iters=iters, repeat=repeat, samples_per_setting=iters * repeat,
        order='ABBA interleaving of the models per round', timer='time.perf_counter per '
        'forward' + (', torch.cuda.synchronize' if str(device).startswith('cuda') else ''),
        speedup='baseline median latency / model median latency',
        gflops_ratio='baseline GFLOPs / model GFLOPs (M/R counted; 1 multiply-add = 1 FLOP)',
        efficiency='speed-up / GFLOPs ratio', loadavg_1min_start=load_start,
        **machine_info(device))
    return dict(protocol=protocol, rows=rows)


def benchmark_pair(config, checkpoint, base_config, base_checkpoint, batch_sizes=(1, 8),
                   warmup=3, iters=10, repeat=3, precisions=('fp32', ), device='cpu',
                   threads=None, shape=None, keep_rate=None, prune_rate=None, seed=0,
                   data_root=None, cfg_options=None, mr_iters=3, progress=True) -> dict:
    """Build both models, count their FLOPs, load the images and run the benchmark.

    ``tools/analysis_tools/benchmark.py`` and ``results_table.py`` call this.

    Args:
        config (str): config of the (compressed) model; checkpoint (str | None): its weights.
        base_config (str), base_checkpoint (str | None): the baseline (speed-up reference).
        batch_sizes, warmup, iters, repeat, precisions, device, mr_iters, progress: see
            :func:`run_benchmark`.
        threads (int, optional): ``torch.set_num_threads``.
        shape (tuple[int, int], optional): input ``(H, W)`` in pixels; default: the model's
            crop (backbone ``img_size``).
        keep_rate, prune_rate, seed: random-score uniform structure for ``config`` when no
            compressed checkpoint exists (:func:`install_uniform_structure`).
        data_root (str, optional): test data root overriding both configs'.
        cfg_options (dict, optional): overrides applied to both configs.

    Returns:
        dict: :func:`mmseg_pm.analysis.benchmark.run_benchmark`'s result plus ``flops``
        (name -> :func:`count_flops` result) and ``models`` (name -> config, checkpoint,
        structure).

    Raises:
        UserError: missing files / data, an uncompressed Prune-and-Merge model without
            --keep-rate, CUDA requested but unavailable.
    """
    from .common import (config_name, default_input_shape, get_backbone,
                         install_uniform_structure, load_config, load_segmentor)
    from .flops import count_flops

    if str(device).startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f'--device {device}: no CUDA device is visible')
    if prune_rate is not None and keep_rate is None:
        raise UserError('--prune-rate needs --keep-rate')
    if threads:
        torch.set_num_threads(int(threads))
    torch.set_flush_denormal(True)
    options = dict(cfg_options or {})
    if data_root:
        options['test_dataloader.dataset.data_root'] = data_root
    cfg = load_config(config, options)
    base_cfg = load_config(base_config, options)
    check_dataset((cfg.get('test_dataloader') or {}).get('dataset'), 'test')  # fail early
    model = load_segmentor(cfg, checkpoint, device=device)
    label = None
    if keep_rate is not None:
        label = install_uniform_structure(model, keep_rate, prune_rate, seed)
    backbone = get_backbone(model)
    if backbone is not None and len(backbone.pm) and not backbone.is_compressed:
        raise UserError(f'{config}{" + " + checkpoint if checkpoint else ""} holds no '
                        f'Prune-and-Merge structure (it would run uncompressed): give a '
                        f'compressed checkpoint, or --keep-rate R for an estimate')
    base = load_segmentor(base_cfg, base_checkpoint, device=device)
    crop = default_input_shape(model, cfg)
    shape = tuple(shape) if shape else crop
    if backbone is not None and backbone.is_compressed and shape != crop:
        raise UserError(f'a compressed model runs at its fixed crop {crop[0]}x{crop[1]}; '
                        f'--shape {shape[0]} {shape[1]} does not apply')
    names = [config_name(base_config), config_name(config)]
    if names[0] == names[1]:
        names = [names[0] + ' (baseline)', names[1]]
    if label:
        names[1] += ' [random uniform]'
    models = {names[0]: base, names[1]: model}
    flops = {n: count_flops(m, shape, structure=label if m is model else None)
             for n, m in models.items()}
    samples = load_test_images(cfg, max(batch_sizes), shape)
    inputs = {n: preprocess(m, samples) for n, m in models.items()}
    info = {names[0]: dict(config=osp.abspath(base_config), checkpoint=base_checkpoint,
                           structure=flops[names[0]]['structure']),
            names[1]: dict(config=osp.abspath(config), checkpoint=checkpoint,
                           structure=flops[names[1]]['structure'])}
    result = run_benchmark(models, inputs, batch_sizes, precisions, warmup, iters, repeat,
                           device, flops=flops, labels=info, mr_iters=mr_iters,
                           progress=progress)
    result['protocol']['data_root'] = cfg.test_dataloader.dataset.get('data_root')
    result['flops'] = flops
    result['models'] = info
    return result


def _flops_fields(flops: Optional[Dict[str, dict]], ref: str, name: str) -> dict:
    if not flops or name not in flops:
        return dict(gflops_mr_counted=None, gflops_mr_not_counted=None, gflops_ratio=None,
                    gflops_ratio_not_counted=None, efficiency=None)
    f = flops[name]
    out = dict(gflops_mr_counted=gflops(f['flops_mr_counted']['total']),
               gflops_mr_not_counted=gflops(f['flops_mr_not_counted']['total']),
               gflops_ratio=None, gflops_ratio_not_counted=None, efficiency=None)
    if ref in flops:
        r = flops[ref]
        out['gflops_ratio'] = (r['flops_mr_counted']['total'] / f['flops_mr_counted']['total'])
        out['gflops_ratio_not_counted'] = (r['flops_mr_not_counted']['total']
                                           / f['flops_mr_not_counted']['total'])
    return out


def protocol_text(protocol: dict) -> str:
    """One paragraph stating the measurement protocol of :func:`run_benchmark`."""
    p = protocol
    hw = p.get('gpu') or p.get('cpu', '?')
    load = (f', 1-min load average {p["loadavg_1min_start"]:.2f} at the start and '
            f'{p["loadavg_1min"]:.2f} at the end' if p.get('loadavg_1min_start') is not None
            and 'loadavg_1min' in p else '')
    return (f'Protocol: {p["forward"]}; {p["input"]}; input {p["input_size"][0]}x'
            f'{p["input_size"][1]}; batch {"/".join(map(str, p["batch_sizes"]))}; precision '
            f'{"/".join(p["precisions"])}; device {p["device"]} ({hw}, torch {p["torch"]}, '
            f'{p["threads"]} threads{load}); warmup {p["warmup"]}, {p["iters"]} iters x '
            f'{p["repeat"]} repeats per model and setting ({p["order"]}; {p["timer"]}); '
            f'latency = median and IQR per forward of the batch; throughput = batch / median; '
            f'speed-up = {p["speedup"]}; GFLOPs ratio = {p["gflops_ratio"]}; efficiency = '
            f'{p["efficiency"]}.')


def _fmt(v, spec='.2f', none='–'):
    return none if v is None else format(v, spec)


def markdown_table(result: dict) -> str:
    """Markdown table of the rows of :func:`run_benchmark` (one line per model and setting)."""
    lines = ['| model | structure | batch | precision | GFLOPs (M/R counted) | GFLOPs (M/R not '
             'counted) | latency median (ms) | IQR (ms) | throughput (img/s) | speed-up | '
             'GFLOPs ratio | efficiency | M/R time | peak mem (MiB) |',
             '|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in result['rows']:
        mem = r['memory']
        mem_s = f'{mem["peak_mib"]:.0f}'
        if mem.get('forward_mib') is not None:
            mem_s += f' (+{mem["forward_mib"]:.0f} fwd)'
        mr = r.get('mr_time')
        mr_s = f'{100 * mr["fraction"]:.2f}%' if mr else '–'
        lines.append(
            f'| {r["name"]} | {r.get("structure", "")} | {r["batch"]} | {r["precision"]} | '
            f'{_fmt(r["gflops_mr_counted"], ".3f")} | {_fmt(r["gflops_mr_not_counted"], ".3f")}'
            f' | {r["latency_ms"]["median"]:.1f} | {r["latency_ms"]["iqr"]:.1f} | '
            f'{r["throughput_img_s"]:.2f} | {r["speedup"]:.3f} | {_fmt(r["gflops_ratio"], ".3f")}'
            f' | {_fmt(r["efficiency"], ".3f")} | {mr_s} | {mem_s} |')
    return '\n'.join(lines)


__all__ = ['load_test_images', 'preprocess', 'run_benchmark', 'benchmark_pair', 'markdown_table',
           'protocol_text', 'latency_stats', 'measure_peak_memory', 'measure_mr_time',
           'machine_info', 'autocast', 'PRECISIONS']
