"""Latency / throughput of segmentors on the same real images, interleaved in one run.

Protocol (stated in every result): the segmentor's tensor-mode forward
(``model(inputs, mode='tensor')``: backbone + neck + decode head, logits at the decode head's
resolution) in eval mode under ``torch.no_grad``, on a fixed batch of real images of the
config's test dataset resized to the crop and normalised by each model's data pre-processor
**before** timing. Each (batch size, precision) setting runs ``warmup`` untimed forwards per
model, then ``repeat`` rounds of ``iters`` timed forwards per model, the models taking turns
(round r runs them in reverse order when r is odd, ABBA) so that slow drifts hit them alike.
Every forward is timed alone with ``time.perf_counter`` (``torch.cuda.synchronize`` around it
on GPU).

Rows carry a ``role``: ``'stock'`` (mmseg's own model, explicit attention), ``'uncompressed'``
(ours without reduction, fused attention: the reference of the token-reduction speed-up) and
``'compressed'``. Reported per row: latency median and IQR (ms per forward of the batch),
throughput = batch / median latency (images / s), ``speedup`` = uncompressed median / row
median, ``speedup_vs_stock`` = stock median / row median, GFLOPs ratio = uncompressed GFLOPs /
row GFLOPs (reduction ops counted; 1 multiply-add = 1 FLOP), efficiency = speed-up / GFLOPs
ratio, peak memory (:mod:`.memory`) and the share of the forward spent in token-reduction ops
(timed at the backbone's reduction hook points, where it also places ``torch.profiler``
ranges named ``token_reduction`` for a profile).
"""
import contextlib
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import UserError
from ..models.backbones import reduction_backbone
from .flops import gflops
from .memory import forward_peak_memory

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


@dataclass
class BenchmarkSpec:
    """Settings of one benchmark run.

    Attributes:
        batch_sizes (tuple[int]): images per forward. Default: (1, 8).
        precisions (tuple[str]): 'fp32' | 'bf16' | 'fp16' (autocast; fp16 needs CUDA).
        warmup (int): untimed forwards per model and setting. Default: 3.
        iters (int): timed forwards per model and round. Default: 10.
        repeat (int): rounds (ABBA order). Default: 3.
        device (str): 'cpu' or 'cuda[:N]'.
        compile (bool): ``torch.compile`` every model first (max abs diff to eager reported).
        reduction_iters (int): profiled forwards for the token-reduction time share (0: skip).
        progress (bool): tqdm progress bar (on stdout).

    Raises:
        UserError: bad counts, unknown precision, fp16 on CPU, CUDA not available.
    """
    batch_sizes: Sequence[int] = (1, 8)
    precisions: Sequence[str] = ('fp32', )
    warmup: int = 3
    iters: int = 10
    repeat: int = 3
    device: str = 'cpu'
    compile: bool = False
    reduction_iters: int = 3
    progress: bool = True

    def __post_init__(self):
        if min(self.batch_sizes) < 1 or self.warmup < 0 or self.iters < 1 or self.repeat < 1:
            raise UserError(f'need batch sizes >= 1, warmup >= 0, iters >= 1, repeat >= 1; got '
                            f'{list(self.batch_sizes)}, {self.warmup}, {self.iters}, '
                            f'{self.repeat}')
        if str(self.device).startswith('cuda') and not torch.cuda.is_available():
            raise UserError(f'--device {self.device}: no CUDA device is visible')
        for p in self.precisions:
            autocast(self.device, p)  # validates


def autocast(device: str, precision: str):
    """Context manager for ``precision`` ('fp32' | 'bf16' | 'fp16') on ``device``.

    Raises:
        UserError: unknown precision, or fp16 on CPU.
    """
    if precision not in PRECISIONS:
        raise UserError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    device_type = 'cuda' if str(device).startswith('cuda') else 'cpu'
    if device_type == 'cpu' and dtype == torch.float16:
        raise UserError('--precision fp16 needs a GPU (--device cuda); on CPU use bf16')
    return torch.autocast(device_type=device_type, dtype=dtype)


def _sync(device: str) -> None:
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


def latency_stats(samples_s: Sequence[float]) -> dict:
    """Median, quartiles, IQR, mean and min of per-forward latencies given in seconds, in ms
    (``statistics.quantiles``, inclusive method)."""
    ms = [1e3 * s for s in samples_s]
    q25, med, q75 = (statistics.quantiles(ms, n=4, method='inclusive') if len(ms) > 1
                     else (ms[0], ms[0], ms[0]))
    return dict(median=med, q25=q25, q75=q75, iqr=q75 - q25, mean=statistics.fmean(ms),
                min=min(ms), n=len(ms))


def reduction_time(model: nn.Module, x: Tensor, iters: int, device: str,
                   precision: str) -> Optional[dict]:
    """Share of the forward spent in token-reduction ops: wall time inside the backbone's
    reduction hooks and restores (:class:`~mmseg_pm.models.backbones.ReductionTimer`, the same
    places as the ``token_reduction`` profiler ranges) against the whole forward, over
    ``iters`` forwards (medians).

    Returns:
        dict or None: ``reduction_ms``, ``forward_ms`` and ``fraction``; None for a model
        that does not reduce.
    """
    from ..models.backbones import ReductionTimer
    backbone = reduction_backbone(model)
    if backbone is None or not backbone.is_reducing or iters < 1:
        return None
    red, fwd = [], []
    with torch.no_grad(), autocast(device, precision):
        model(x, mode='tensor')
        for _ in range(iters):
            backbone.reduction_timer = timer = ReductionTimer(str(device).startswith('cuda'))
            try:
                _sync(device)
                start = time.perf_counter()
                model(x, mode='tensor')
                _sync(device)
                fwd.append(time.perf_counter() - start)
            finally:
                backbone.reduction_timer = None
            red.append(timer.seconds)
    red_ms, fwd_ms = 1e3 * statistics.median(red), 1e3 * statistics.median(fwd)
    return dict(reduction_ms=red_ms, forward_ms=fwd_ms,
                fraction=red_ms / fwd_ms if fwd_ms else 0.0)


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
    if hasattr(os, 'getloadavg'):
        info['loadavg_1min'] = os.getloadavg()[0]
    return info


def compile_models(models: Dict[str, nn.Module], example: Dict[str, Tensor]) -> Dict[str, dict]:
    """``torch.compile`` every model in place of its forward; report the max abs difference of
    the compiled tensor-mode output to eager on ``example``, or why compiling was skipped.

    Returns:
        dict: name -> ``dict(compiled=bool, max_abs_diff=float | None, message=str)``.
    """
    import torch._dynamo
    # Prune-and-Merge (static) compiles as one graph; the data-dependent token counts of the
    # other methods break it at their hooks: allow one compiled frame per block instead of
    # dynamo's default 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    report = {}
    for name, model in models.items():
        x = example[name]
        with torch.no_grad():
            eager = model(x, mode='tensor')
            try:
                compiled = torch.compile(model)
                out = compiled(x, mode='tensor')
            except Exception as e:  # noqa: BLE001  (backend missing: skip, say why)
                report[name] = dict(compiled=False, max_abs_diff=None,
                                    message=f'torch.compile unavailable ({type(e).__name__}: '
                                            f'{str(e).splitlines()[0][:120]}); eager timing')
                continue
        models[name] = compiled
        diff = float((out.float() - eager.float()).abs().max())
        report[name] = dict(compiled=True, max_abs_diff=diff,
                            message=f'compiled; max abs diff to eager {diff:.2e}')
    return report


def run_benchmark(models: Dict[str, nn.Module], inputs: Dict[str, Tensor], spec: BenchmarkSpec,
                  *, roles: Optional[Dict[str, str]] = None,
                  flops: Optional[Dict[str, dict]] = None,
                  labels: Optional[Dict[str, dict]] = None) -> dict:
    """Time ``models`` on the same images, interleaved.

    Args:
        models (dict[str, nn.Module]): name -> segmentor in eval mode on ``spec.device``.
        inputs (dict[str, Tensor]): name -> pre-processed images ``(M, 3, H, W)`` (each
            model's own pre-processing of the same images), repeated up to the batch size.
        spec (BenchmarkSpec): settings.
        roles (dict[str, str], optional): name -> 'stock' | 'uncompressed' | 'compressed';
            the first 'uncompressed' model (else the first model) is the speed-up reference.
        flops (dict[str, dict], optional): name -> ``count_flops`` result.
        labels (dict[str, dict], optional): name -> extra fields copied into every row.

    Returns:
        dict: ``protocol`` and ``rows`` (one per model and setting; see the module docstring).

    Raises:
        UserError: no model given.
    """
    names = list(models)
    if not names:
        raise UserError('the benchmark needs at least one model')
    roles = roles or {n: 'model' for n in names}
    ref = next((n for n in names if roles.get(n) == 'uncompressed'), names[0])
    stock = next((n for n in names if roles.get(n) == 'stock'), None)
    shape = list(inputs[names[0]].shape[-2:])
    load_start = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    eager = dict(models)  # the reduction-time share is measured on the eager forward: its
    # timer is Python around each hook, which a compiled graph would have to break for
    compiled = compile_models(models, inputs) if spec.compile else {}
    per_setting = len(names) * (spec.warmup + spec.repeat * spec.iters + 1)
    bar = tqdm(total=len(spec.batch_sizes) * len(spec.precisions) * per_setting, unit='fwd',
               disable=not spec.progress, desc='benchmark', dynamic_ncols=True,
               file=sys.stdout)  # with the other output: stderr holds only problems
    rows = []
    try:
        for precision in spec.precisions:
            for batch in spec.batch_sizes:
                xs = {n: _batch_of(inputs[n], batch) for n in names}
                times = {n: [] for n in names}
                bar.set_postfix_str(f'batch {batch} {precision}')
                with torch.no_grad(), autocast(spec.device, precision):
                    for n in names:
                        for _ in range(spec.warmup):
                            models[n](xs[n], mode='tensor')
                            bar.update(1)
                    for r in range(spec.repeat):
                        for n in (names if r % 2 == 0 else names[::-1]):
                            for _ in range(spec.iters):
                                _sync(spec.device)
                                t0 = time.perf_counter()
                                models[n](xs[n], mode='tensor')
                                _sync(spec.device)
                                times[n].append(time.perf_counter() - t0)
                                bar.update(1)
                stats = {n: latency_stats(times[n]) for n in names}
                for n in names:
                    memory = forward_peak_memory(models[n], xs[n], spec.device,
                                                 lambda: autocast(spec.device, precision))
                    bar.update(1)
                    lat = stats[n]
                    row = dict(name=n, role=roles.get(n, 'model'), batch=batch,
                               precision=precision, device=str(spec.device), input_size=shape,
                               latency_ms=lat, throughput_img_s=1e3 * batch / lat['median'],
                               speedup=stats[ref]['median'] / lat['median'],
                               speedup_vs_stock=(stats[stock]['median'] / lat['median']
                                                 if stock else None),
                               memory=memory, compile=compiled.get(n),
                               reduction_time=reduction_time(eager[n], xs[n],
                                                             spec.reduction_iters,
                                                             spec.device, precision))
                    row.update(_flops_fields(flops, ref, n))
                    if row['gflops_ratio']:
                        row['efficiency'] = row['speedup'] / row['gflops_ratio']
                    row.update((labels or {}).get(n, {}))
                    rows.append(row)
    finally:
        bar.close()
    protocol = dict(
        forward="segmentor tensor-mode forward (model(inputs, mode='tensor')), eval mode, "
                'torch.no_grad; data loading / pre-processing / logit resize not timed',
        input='real test-set images resized to the input size, normalised by each model\'s '
              'data pre-processor',
        input_size=shape,
        **{k: v for k, v in asdict(spec).items() if k not in ('progress', 'device')},
        samples_per_setting=spec.iters * spec.repeat, reference=ref, stock=stock,
        order='ABBA interleaving of the models per round',
        timer='time.perf_counter per forward'
              + (', torch.cuda.synchronize' if str(spec.device).startswith('cuda') else ''),
        speedup='uncompressed (fused) median latency / model median latency',
        gflops_ratio='uncompressed GFLOPs / model GFLOPs (reduction ops counted; 1 multiply-add '
                     '= 1 FLOP)',
        efficiency='speed-up / GFLOPs ratio', loadavg_1min_start=load_start,
        reduction_time='share of the eager forward spent in the token-reduction hooks '
                       '(ReductionTimer, median over the profiled forwards)',
        **machine_info(spec.device))
    protocol['batch_sizes'] = list(spec.batch_sizes)
    protocol['precisions'] = list(spec.precisions)
    return dict(protocol=protocol, rows=rows)


def _batch_of(x: Tensor, batch: int) -> Tensor:
    reps = -(-batch // x.shape[0])
    return (x.repeat(reps, 1, 1, 1) if reps > 1 else x)[:batch].contiguous()


def _counted_total(f: dict) -> float:
    """FLOPs with the reduction ops counted; the mean over images for per-image methods."""
    per_image = f.get('per_image')
    return per_image['mean'] * 1e9 if per_image else f['flops_mr_counted']['total']


def _flops_fields(flops: Optional[Dict[str, dict]], ref: str, name: str) -> dict:
    out = dict(gflops_mr_counted=None, gflops_mr_not_counted=None, gflops_ratio=None,
               efficiency=None)
    if not flops or name not in flops:
        return out
    f = flops[name]
    out.update(gflops_mr_counted=gflops(_counted_total(f)),
               gflops_mr_not_counted=gflops(f['flops_mr_not_counted']['total']))
    if ref in flops:
        out['gflops_ratio'] = _counted_total(flops[ref]) / _counted_total(f)
    return out


__all__ = ['BenchmarkSpec', 'PRECISIONS', 'autocast', 'latency_stats', 'reduction_time',
           'machine_info', 'compile_models', 'run_benchmark']
