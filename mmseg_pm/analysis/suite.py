"""The rows of a comparison, built from configs: mmseg's stock model, ours uncompressed, and any
number of token-reduction models, on the same weights, counted and timed together."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ..errors import UserError
from ..models.backbones import reduction_backbone
from ..utils.cli import config_name
from ..utils.preflight import set_data_root
from .benchmark import BenchmarkSpec, run_benchmark
from .build import (build_segmentor, check_plain_vit, check_shape_fits, default_input_shape,
                    load_config, load_images, preprocess, segmentor_cfg, variant_cfg)
from .flops import count_flops, count_flops_over_images


@dataclass
class Entry:
    """One model of a comparison.

    Attributes:
        name (str): row label.
        role (str): ``'stock'``, ``'uncompressed'`` or ``'compressed'``.
        model_cfg (dict): the segmentor config.
        checkpoint (str | None): its weights (the baseline's when None and the keys match).
        structure (str | None): how a Prune-and-Merge structure came about.
        info (dict): extra fields for every row (config path, method settings).
    """
    name: str
    role: str
    model_cfg: dict
    checkpoint: Optional[str] = None
    structure: Optional[str] = None
    info: dict = field(default_factory=dict)


def comparison_entries(base_config: str, configs: Sequence[str],
                       cfg_options: Optional[dict] = None) -> List[Entry]:
    """Rows (a) mmseg's stock model and (b) ours uncompressed from ``base_config``, then one row
    per token-reduction config in ``configs``.

    Raises:
        UserError / ConfigError: a missing config, or a backbone that is not a plain ViT.
    """
    base = load_config(base_config, cfg_options)
    base_model = segmentor_cfg(base)
    check_plain_vit(base_model, base_config)
    stem = config_name(base_config)
    entries = [Entry(f'{stem} (mmseg stock)', 'stock', variant_cfg(base_model, 'stock'),
                     info=dict(config=base_config)),
               Entry(f'{stem} (ours, uncompressed)', 'uncompressed',
                     variant_cfg(base_model, 'plain'), info=dict(config=base_config))]
    for path in configs:
        cfg = load_config(path, cfg_options)
        model_cfg = segmentor_cfg(cfg)
        check_plain_vit(model_cfg, path)
        if model_cfg.get('type') == 'PMDistillEncoderDecoder':
            model_cfg = dict(model_cfg, type='EncoderDecoder')
            model_cfg.pop('distill_cfg', None)
        entries.append(Entry(config_name(path), 'compressed', model_cfg, info=dict(config=path)))
    return entries


def build_entries(entries: List[Entry], base_checkpoint: Optional[str],
                  checkpoints: Optional[Dict[str, str]] = None, keep_rate: Optional[float] = None,
                  prune_rate: float = 0.0, seed: int = 0, device: str = 'cpu') -> Dict[str, object]:
    """Build every entry's model in eval mode; a model without its own checkpoint takes the
    baseline's weights; a Prune-and-Merge model without a structure gets a random uniform one
    at ``keep_rate`` (labelled as an estimate) or is refused.

    Raises:
        UserError: a Prune-and-Merge model left without structure.
    """
    from ..compression import CompressSettings, random_structures
    models = {}
    for e in entries:
        ckpt = (checkpoints or {}).get(e.name) or e.checkpoint or base_checkpoint
        model = build_segmentor(e.model_cfg, ckpt, device)
        backbone = reduction_backbone(model)
        if getattr(backbone, 'pm', None) is not None and not backbone.is_compressed:
            if keep_rate is None:
                raise UserError(f'{e.name}: the model holds no Prune-and-Merge structure (it '
                                f'would run uncompressed): give its compressed checkpoint, or '
                                f'--keep-rate R for an estimate')
            e.structure = random_structures(model, CompressSettings(
                keep_rate=keep_rate, prune_rate=prune_rate), seed)
        e.checkpoint = ckpt
        models[e.name] = model.to(device)
    return models


def compare(entries: List[Entry], models: dict, cfg, spec: BenchmarkSpec,
            shape: Optional[Sequence[int]] = None, data_root: Optional[str] = None,
            num_flops_images: int = 8) -> dict:
    """Count every model's FLOPs (over ``num_flops_images`` real images for per-image methods)
    and benchmark them interleaved on real test images of ``cfg``.

    Returns:
        dict: :func:`run_benchmark`'s result plus ``flops`` (name -> count) and ``models``
        (name -> role, config, checkpoint, structure, method).
    """
    if data_root:
        set_data_root(cfg, data_root)
    first = models[entries[-1].name]
    crop = default_input_shape(first, cfg)
    shape = tuple(shape) if shape else crop
    for m in models.values():
        check_shape_fits(m, shape)
    samples = load_images(cfg, max(max(spec.batch_sizes), num_flops_images), shape)
    inputs = {n: preprocess(m, samples) for n, m in models.items()}
    flops, info = {}, {}
    for e in entries:
        model = models[e.name]
        backbone = reduction_backbone(model)
        dynamic = backbone is not None and backbone.is_reducing and not backbone.reducer.static
        flops[e.name] = (count_flops_over_images(model, inputs[e.name][:num_flops_images],
                                                 e.structure) if dynamic else
                         count_flops(model, inputs=inputs[e.name][:1], structure=e.structure))
        info[e.name] = dict(e.info, role=e.role, checkpoint=e.checkpoint,
                            structure=flops[e.name]['structure'],
                            method=flops[e.name]['method'])
    result = run_benchmark(models, {n: x[:max(spec.batch_sizes)] for n, x in inputs.items()},
                           spec, roles={e.name: e.role for e in entries}, flops=flops,
                           labels=info)
    result['protocol']['data_root'] = cfg.test_dataloader.dataset.get('data_root')
    result.update(flops=flops, models=info)
    return result


__all__ = ['Entry', 'comparison_entries', 'build_entries', 'compare']
