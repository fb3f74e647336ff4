"""FLOPs and parameters of a segmentor, with the Prune-and-Merge merge / reconstruct (M/R) cost.

Counts come from ``mmengine.analysis`` (the fvcore-derived ``FlopAnalyzer`` behind
``mmengine.analysis.get_model_complexity_info``; the totals are identical) on the segmentor's
tensor-mode forward (``model(inputs, mode='tensor')``: backbone, neck, decode head; no
data pre-processing, no resize of the logits to the image) for **one image** at a fixed input
size. Units: **one multiply-add = one FLOP**; ``flops`` values are FLOPs per image (integers),
``params`` are numbers of scalars.

What the counter sees (``../shared/docs/environment.md``): convolutions, linears, matmuls / bmm
(attention), layer / batch norms and a few resizes; elementwise ops (add, mul, GELU, softmax),
gathers and scatters are not counted (they are listed in ``unsupported_ops``).

Prune-and-Merge models (method.md §1.5, §6.1 item 7, §8 row 11) are reported in two
conventions:

* **M/R counted**: every merge / reconstruct is included. The ``sparse`` representation
  applies M and R as a weighted scatter-add and a gather that the counter does not see, so
  their cost is added analytically, per image and per unit: merge = (number of non-pruned
  patches) * C multiply-adds, reconstruct = N * C multiply-adds per reconstruction (the P prefix
  tokens are copies). The ``dense`` representation applies them as matmuls, which the counter
  counts: 2 * (P + K) * (P + N) * C per unit.
* **M/R not counted** (the official classification code's convention): the same total without
  these costs.
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .common import default_input_shape, get_backbone, structure_label

CONVENTION = ('one multiply-add = one FLOP; per image; mmengine.analysis on the tensor-mode '
              'forward (backbone + neck + decode head)')
COMPONENTS = ('backbone', 'neck', 'decode_head', 'auxiliary_head')


def gflops(flops: float) -> float:
    """FLOPs -> GFLOPs (1e9)."""
    return float(flops) / 1e9


def pm_unit_costs(backbone: nn.Module) -> List[dict]:
    """Token counts and analytic merge / reconstruct cost of every Prune-and-Merge unit.

    Args:
        backbone (PruneMergeViT): the backbone.

    Returns:
        list[dict]: one dict per unit in block order with ``span`` [a, b], ``active`` (not the
        identity: identity units are skipped at run time and cost nothing), ``N`` (patch
        tokens), ``K`` (merged tokens the span runs on), ``merged`` (non-center, non-pruned
        patches folded into a center), ``pruned``, ``prefix`` P, ``tokens`` (P + K, the
        sequence length inside the span), ``reconstructions`` (R applications per forward:
        one after block b plus one per ``out_indices`` entry inside the span),
        ``merge_flops`` / ``reconstruct_flops`` / ``mr_flops`` (multiply-adds per image, see
        the module docstring) and ``mr_counted_by_mmengine`` (the part of ``mr_flops`` the
        counter already includes: all of it for dense units, none for sparse ones).
    """
    channels = int(backbone.pos_embed.shape[-1])
    out_indices = list(getattr(backbone, 'out_indices', []))
    rows = []
    for unit in backbone.pm_units:
        p, n, k = unit.num_prefix, unit.num_tokens, unit.num_groups
        pruned = int((unit.assign < 0).sum())
        active = not unit.is_identity
        recon = 1 + sum(1 for i in out_indices if unit.start <= i < unit.end)
        if not active:
            merge = reconstruct = counted = 0
        elif unit.representation == 'dense':
            merge = (p + k) * (p + n) * channels
            reconstruct = recon * (p + n) * (p + k) * channels
            counted = merge + reconstruct
        else:
            merge = (n - pruned) * channels
            reconstruct = recon * n * channels
            counted = 0
        rows.append(dict(span=[unit.start, unit.end], active=active,
                         representation=unit.representation, N=n, K=k, merged=n - k - pruned,
                         pruned=pruned, prefix=p, tokens=p + k, channels=channels,
                         reconstructions=recon if active else 0, merge_flops=merge,
                         reconstruct_flops=reconstruct, mr_flops=merge + reconstruct,
                         mr_counted_by_mmengine=counted))
    return rows


def count_flops(model: nn.Module, input_shape: Optional[Sequence[int]] = None,
                structure: Optional[str] = None) -> Dict:
    """FLOPs and parameters of a segmentor at a fixed input size (one image).

    The model is traced in eval mode under ``torch.no_grad`` (its mode is restored after).

    Args:
        model (nn.Module): an mmseg segmentor (``EncoderDecoder`` or subclass, e.g.
            ``PMDistillEncoderDecoder``: only the student is counted).
        input_shape (tuple[int, int], optional): ``(H, W)`` in pixels; default: the
            backbone's ``img_size`` (see :func:`mmseg_pm.analysis.common.default_input_shape`).
        structure (str, optional): label of how the structure was obtained (e.g. the string
            returned by ``install_uniform_structure``); default 'checkpoint' for a compressed
            model, 'none (uncompressed)' otherwise.

    Returns:
        dict: JSON-serialisable, FLOPs per image (one multiply-add = one FLOP)::

            input_shape          [1, 3, H, W]
            convention           str
            compressed           bool (a PruneMergeViT holding a structure)
            representation       'sparse' | 'dense' | None
            structure            str (how the structure came about)
            flops                {total, backbone, neck, decode_head, auxiliary_head,
                                 unattributed}: as counted by mmengine; ``decode_head`` is
                                 total - backbone - neck - auxiliary_head (it includes the
                                 ``unattributed`` ops the tracer gives to no submodule; the
                                 auxiliary head does not run in tensor mode)
            flops_mr_counted     {total, backbone}: every merge / reconstruct included
            flops_mr_not_counted {total, backbone}: without them (official convention)
            mr_flops             int, merge + reconstruct of all units
            mr_fraction          mr_flops / flops_mr_counted.total
            params               {total, backbone, neck, decode_head, auxiliary_head}
            units                :func:`pm_unit_costs` rows ([] without PruneMergeViT)
            unsupported_ops      {op: count} not seen by the counter

        Components absent from the model are 0.

    Raises:
        ValueError: ``input_shape`` is not two positive integers.
    """
    from mmengine.analysis import FlopAnalyzer, parameter_count

    h, w = default_input_shape(model) if input_shape is None else input_shape
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f'input_shape must be two positive integers (H, W), got {input_shape}')
    device = next(model.parameters()).device
    inputs = torch.randn(1, 3, int(h), int(w), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, (inputs, ))
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            analyzer.tracer_warnings('none')
            by_module = analyzer.by_module()
            total = int(analyzer.total())
            unsupported = dict(analyzer.unsupported_ops())
    finally:
        model.train(was_training)
    params = parameter_count(model)

    flops = {name: int(by_module.get(name, 0)) for name in COMPONENTS}
    # the tracer attributes some ops to no submodule (e.g. the final ``patches @ classes``
    # matmul of Segmenter's mask head); in the tensor-mode forward everything after the
    # backbone and neck is the decode head's, so the decode head gets the remainder
    flops['unattributed'] = total - sum(flops[name] for name in COMPONENTS)
    flops['decode_head'] = total - flops['backbone'] - flops['neck'] - flops['auxiliary_head']
    flops['total'] = total
    backbone = get_backbone(model)
    units = pm_unit_costs(backbone) if backbone is not None else []
    mr = sum(u['mr_flops'] for u in units)
    in_counter = sum(u['mr_counted_by_mmengine'] for u in units)
    counted = dict(total=total - in_counter + mr, backbone=flops['backbone'] - in_counter + mr)
    not_counted = dict(total=total - in_counter, backbone=flops['backbone'] - in_counter)
    compressed = bool(backbone is not None and backbone.is_compressed)
    return dict(
        input_shape=[1, 3, int(h), int(w)],
        convention=CONVENTION,
        compressed=compressed,
        representation=(backbone.pm_cfg['representation']
                        if backbone is not None and backbone.pm_cfg else None),
        structure=structure_label(model, structure),
        flops=flops,
        flops_mr_counted=counted,
        flops_mr_not_counted=not_counted,
        mr_flops=mr,
        mr_fraction=mr / counted['total'] if counted['total'] else 0.0,
        params=dict(total=int(params.get('', 0)),
                    **{name: int(params.get(name, 0)) for name in COMPONENTS}),
        units=units,
        unsupported_ops=unsupported,
    )


def format_flops_report(result: Dict, title: str = '') -> str:
    """Human-readable report of :func:`count_flops` (GFLOPs, M params, per-unit tokens).

    Returns:
        str: a few lines plus two markdown tables (components; units if any).
    """
    f, p = result['flops'], result['params']
    shape = result['input_shape']
    lines = []
    if title:
        lines.append(title)
    lines += [
        f'Input shape: {shape[1]}x{shape[2]}x{shape[3]} (batch 1); {result["convention"]}.',
        f'Structure: {result["structure"]}'
        + (f'; representation {result["representation"]}' if result['representation'] else ''),
        '',
        '| component | GFLOPs | params (M) |',
        '|---|---:|---:|',
    ]
    for name in COMPONENTS:
        if f[name] or p[name]:
            lines.append(f'| {name} | {gflops(f[name]):.3f} | {p[name] / 1e6:.3f} |')
    lines.append(f'| **total (as counted by mmengine)** | {gflops(f["total"]):.3f} | '
                 f'{p["total"] / 1e6:.3f} |')
    if result['compressed']:
        c, n = result['flops_mr_counted'], result['flops_mr_not_counted']
        lines += [
            '',
            f'Prune-and-Merge ({result["representation"]}): '
            f'total {gflops(c["total"]):.3f} GFLOPs with M/R counted, '
            f'{gflops(n["total"]):.3f} GFLOPs with M/R not counted (official convention); '
            f'backbone {gflops(c["backbone"]):.3f} / {gflops(n["backbone"]):.3f}; '
            f'M/R = {gflops(result["mr_flops"]):.4f} GFLOPs '
            f'({100 * result["mr_fraction"]:.2f}% of the M/R-counted total).',
        ]
        if result['representation'] == 'sparse':
            lines.append('(sparse M/R are a scatter-add and a gather, not seen by the counter: '
                         'added analytically as (non-pruned patches) * C for a merge and N * C '
                         'for a reconstruction, per unit)')
        else:
            lines.append('(dense M/R are matmuls counted by mmengine: 2 * (P + K) * (P + N) * C '
                         'per unit, subtracted for "not counted")')
    if result['units']:
        lines += ['', '| span | N | K | merged | pruned | tokens in span (P+K) | M/R GFLOPs |',
                  '|---|---:|---:|---:|---:|---:|---:|']
        for u in result['units']:
            span = (f'{u["span"][0]}' if u['span'][0] == u['span'][1] else
                    f'{u["span"][0]}-{u["span"][1]}')
            if not u['active']:
                span += ' (identity)'
            lines.append(f'| {span} | {u["N"]} | {u["K"]} | {u["merged"]} | {u["pruned"]} | '
                         f'{u["tokens"]} | {gflops(u["mr_flops"]):.4f} |')
    if result['unsupported_ops']:
        ops = ', '.join(f'{k.replace("aten::", "")} x{v}'
                        for k, v in sorted(result['unsupported_ops'].items()))
        lines += ['', f'Not counted (elementwise / gather / scatter): {ops}.']
    return '\n'.join(lines)


__all__ = ['CONVENTION', 'count_flops', 'pm_unit_costs', 'gflops', 'format_flops_report']
