"""FLOPs and parameters of a segmentor, with the token reduction's own cost.

Counts come from ``mmengine.analysis`` (the fvcore-derived ``FlopAnalyzer`` behind
``mmengine.analysis.get_model_complexity_info``) on the segmentor's tensor-mode forward
(``model(inputs, mode='tensor')``: backbone, neck, decode head; no data pre-processing, no
resize of the logits) for **one image**. Units: **one multiply-add = one FLOP**; ``flops`` are
FLOPs per image (integers), ``params`` numbers of scalars.

What the counter sees: convolutions, linears, matmuls / bmm, layer norms, a few resizes, and
fused attention (``aten::scaled_dot_product_attention``, which mmengine does not count, is
counted here exactly like the explicit ``q k^T`` and ``A v`` matmuls: ``2 B H L_q L_k d``).
Elementwise ops, gathers and scatters are not counted (listed in ``unsupported_ops``).

The token reducer reports its own cost (``TokenReducer.reduction_flops``): ``uncounted``
(weighted gathers / scatter-adds the counter misses, e.g. sparse Prune-and-Merge M and R) and
``counted`` (reduction matmuls the counter sees, e.g. dense M / R, ToMe's similarity). Totals
are given in two conventions: **M/R counted** (every merge / restore op included) and **M/R not
counted** (the model's blocks and heads only, the official Prune-and-Merge convention).
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..models.backbones import reduction_backbone
from .build import default_input_shape

CONVENTION = ('one multiply-add = one FLOP; per image; mmengine.analysis on the tensor-mode '
              'forward (backbone + neck + decode head), fused attention counted as its matmuls')
COMPONENTS = ('backbone', 'neck', 'decode_head', 'auxiliary_head')


def gflops(flops: float) -> float:
    """FLOPs -> GFLOPs (1e9)."""
    return float(flops) / 1e9


def sdpa_flop_handle(inputs: List, outputs: List) -> int:
    """mmengine ``FlopAnalyzer`` handle of ``aten::scaled_dot_product_attention``:
    ``B H L_q L_k (d + d_v)`` multiply-adds (``q k^T`` and ``A v``), as the explicit path's two
    batched matmuls are counted."""
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for dim in q[:-2]:
        batch *= dim
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def trace_flops(model: nn.Module, inputs: Tensor):
    """mmengine's ``FlopAnalyzer`` on ``model(inputs)`` in eval mode under ``torch.no_grad``
    (the mode is restored after), fused attention counted by :func:`sdpa_flop_handle`. The
    trace runs the model's own forward, so a backbone's ``last_token_counts`` are those of
    ``inputs`` afterwards.

    Args:
        model (nn.Module): the model; its forward takes ``inputs``.
        inputs (Tensor): ``(1, 3, H, W)``.

    Returns:
        tuple: ``(total, by_module, unsupported_ops)``: FLOPs (one multiply-add = one FLOP),
        ``{module name: FLOPs}`` and ``{op: count}`` of the ops the counter does not see.
    """
    from mmengine.analysis import FlopAnalyzer

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, (inputs, ))
            analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_handle)
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            analyzer.tracer_warnings('none')
            by_module = analyzer.by_module()
            total = int(analyzer.total())
            unsupported = dict(analyzer.unsupported_ops())
    finally:
        model.train(was_training)
    return total, by_module, unsupported


def count_flops(model: nn.Module, input_shape: Optional[Sequence[int]] = None,
                inputs: Optional[Tensor] = None, structure: Optional[str] = None) -> Dict:
    """FLOPs and parameters of a segmentor for one image.

    The model is traced in eval mode under ``torch.no_grad`` (its mode is restored after).
    Methods whose token counts depend on the image need a real image (``inputs``); see
    :func:`count_flops_over_images`.

    Args:
        model (nn.Module): an mmseg segmentor (for ``PMDistillEncoderDecoder`` only the
            student is counted).
        input_shape (tuple[int, int], optional): ``(H, W)`` in pixels of a random input;
            default: :func:`~mmseg_pm.analysis.build.default_input_shape`.
        inputs (Tensor, optional): ``(1, 3, H, W)`` pre-processed image (overrides the shape).
        structure (str, optional): how the reduction structure came about (e.g. the label of
            ``mmseg_pm.compression.random_structures``); default: the reducer's
            ``settings_label()`` ('checkpoint' for Prune-and-Merge).

    Returns:
        dict: JSON-serialisable, FLOPs per image::

            input_shape          [1, 3, H, W]
            convention           str
            compressed           bool (a token reducer changes the computation)
            method               reducer type or None; static (bool or None)
            structure            str (how the structure came about)
            flops                {total, backbone, neck, decode_head, auxiliary_head,
                                 unattributed} as counted (decode_head is total - backbone -
                                 neck - auxiliary_head: the tracer gives some head ops to no
                                 submodule)
            flops_mr_counted     {total, backbone}: every reduction op included
            flops_mr_not_counted {total, backbone}: without them
            mr_flops             int, the reduction's own multiply-adds
            mr_fraction          mr_flops / flops_mr_counted.total
            params               {total, backbone, neck, decode_head, auxiliary_head}
            tokens               sequence length entering every block (None unreduced)
            units                Prune-and-Merge per-unit rows ([] otherwise)
            unsupported_ops      {op: count} not seen by the counter

    Raises:
        ValueError: ``input_shape`` is not two positive integers.
    """
    from mmengine.analysis import parameter_count

    device = next(model.parameters()).device
    if inputs is None:
        h, w = default_input_shape(model) if input_shape is None else input_shape
        if int(h) < 1 or int(w) < 1:
            raise ValueError(f'input_shape must be two positive integers (H, W), got '
                             f'{input_shape}')
        inputs = torch.randn(1, 3, int(h), int(w), device=device)
    total, by_module, unsupported = trace_flops(model, inputs)
    params = parameter_count(model)
    flops = {name: int(by_module.get(name, 0)) for name in COMPONENTS}
    flops['unattributed'] = total - sum(flops[name] for name in COMPONENTS)
    flops['decode_head'] = total - flops['backbone'] - flops['neck'] - flops['auxiliary_head']
    flops['total'] = total

    backbone = reduction_backbone(model)
    reducing = bool(backbone is not None and backbone.is_reducing)
    reducer = backbone.reducer if reducing else None
    tokens = backbone.last_token_counts if reducing else None
    red = (reducer.reduction_flops(tokens, backbone.out_indices) if reducing
           else dict(uncounted=0, counted=0))
    mr = red['uncounted'] + red['counted']
    counted = dict(total=total + red['uncounted'], backbone=flops['backbone'] + red['uncounted'])
    not_counted = dict(total=total - red['counted'],
                       backbone=flops['backbone'] - red['counted'])
    units = reducer.unit_costs(backbone.out_indices) if hasattr(reducer, 'unit_costs') else []
    return dict(
        input_shape=list(inputs.shape),
        convention=CONVENTION,
        compressed=reducing,
        method=type(reducer).__name__ if reducer is not None else None,
        static=reducer.static if reducer is not None else None,
        representation=getattr(reducer, 'representation', None),
        structure=structure or (reducer.settings_label() if reducing else 'none (uncompressed)'),
        flops=flops,
        flops_mr_counted=counted,
        flops_mr_not_counted=not_counted,
        mr_flops=mr,
        mr_fraction=mr / counted['total'] if counted['total'] else 0.0,
        params=dict(total=int(params.get('', 0)),
                    **{name: int(params.get(name, 0)) for name in COMPONENTS}),
        tokens=list(tokens) if tokens is not None else None,
        units=units,
        unsupported_ops=unsupported,
    )


def count_flops_over_images(model: nn.Module, images: Tensor,
                            structure: Optional[str] = None) -> Dict:
    """:func:`count_flops` on every image of ``images`` ``(M, 3, H, W)`` (pre-processed): the
    first image's full result plus ``per_image`` statistics of the M/R-counted total GFLOPs
    (``mean``, ``min``, ``max``, ``n``), for methods whose token counts depend on the image
    (ALGM); a static method gives the same number for every image."""
    results = [count_flops(model, inputs=images[i:i + 1], structure=structure)
               for i in range(images.shape[0])]
    totals = [gflops(r['flops_mr_counted']['total']) for r in results]
    out = dict(results[0])
    out['per_image'] = dict(mean=sum(totals) / len(totals), min=min(totals), max=max(totals),
                            n=len(totals), gflops=totals)
    return out


__all__ = ['CONVENTION', 'count_flops', 'count_flops_over_images', 'gflops',
           'sdpa_flop_handle', 'trace_flops']
