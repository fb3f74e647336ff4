"""``PruneMergeViT``: mmseg's VisionTransformer with Prune-and-Merge token compression."""
import copy
import inspect
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import ModuleList
from mmseg.models.backbones.vit import VisionTransformer
from mmseg.registry import MODELS
from torch import Tensor, nn

from ..layers.pm_encoder_layer import PMTransformerEncoderLayer
from ..layers.prune_merge import REPRESENTATIONS, PruneMerge
from ..utils import prune_merge as pm
from ..utils.prune_merge import PMConfigError, PMStructure, PMStructureError

#: pm_cfg keys read by the backbone; the rest configure the compression step
#: (``mmseg_pm.compression``) and are validated there.
STRUCTURE_KEYS = ('mode', 'layers', 'spans', 'representation', 'trainable', 'restore_outputs')
DEFAULT_PM_CFG = dict(
    mode='layer',              # 'layer': a unit per block; 'span': merge at a, restore after b
    layers=None,               # layer mode: blocks with a unit (None = all)
    spans=None,                # span mode: list of inclusive (a, b)
    representation='sparse',   # 'sparse' | 'dense'
    trainable=True,            # train M and R (paper); False = published seg finetuning
    restore_outputs=True,      # restore in-span out_indices in the backbone (else: the neck)
    # compression step (mmseg_pm.compression), method.md §2-3
    keep_rate=0.6,
    prune_rate=0.0,
    allocation='global',       # 'global' (cross-layer search) | 'uniform' (per unit)
    depth_discount=0.025,      # per block; 0 reproduces the official segmentation code
    official_row_clip=True,    # replicate the official (c+1)//W row clip
    score_iters=102,           # scoring iterations (official segmentation default)
    score_mode='train',        # 'train' (official: dropout/drop-path on) | 'eval'
)


class CompressedTokens:
    """An ``out_indices`` output taken inside a span, handed to ``TokenReconstructNeck``.

    Attributes:
        tokens (Tensor): ``(B, P + K, C)`` merged tokens after the block.
        shortcut (Tensor): ``(B, P + N, C)`` input of the span (pruned tokens' source).
        unit (PruneMerge): the span's unit, whose R restores the grid.
        backbone (PruneMergeViT): formats the restored tokens as the backbone would.
    """

    def __init__(self, tokens, shortcut, unit, backbone, hw_shape, crop):
        self.tokens, self.shortcut, self.unit, self.backbone = tokens, shortcut, unit, backbone
        self.hw_shape, self.crop = hw_shape, crop

    def restore(self):
        """Full-grid output, exactly as the backbone gives it with ``restore_outputs=True``:
        Tensor ``(B, C, H/16, W/16)`` (or ``[that, cls (B, C)]`` with ``output_cls_token``)."""
        x = self.unit.reconstruct(self.tokens, self.shortcut)
        return self.backbone._format_output(x, self.hw_shape, self.crop)


@MODELS.register_module()
class PruneMergeViT(VisionTransformer):
    """Vision Transformer with Prune-and-Merge token compression.

    Mao et al., "Prune and Merge: Efficient Token Compression for Vision Transformer with Spatial
    Information Preserved", IEEE TMM 2025 (arXiv 2503.23455); method reference
    ``../shared/docs/method.md`` §1 (module), §1.7 (segmentation).

    Modifications to mmseg's ``VisionTransformer`` (all its arguments, parameter names and
    outputs are unchanged, so mmseg ViT / Segmenter checkpoints load strictly):

    * encoder layers are :class:`PMTransformerEncoderLayer` (same parameters);
    * ``pm_cfg`` adds :class:`PruneMerge` units under ``pm.<a>`` (state-dict keys
      ``backbone.pm.<a>.*``): per-layer mode puts one at every chosen block (span ``(i, i)``),
      span mode one per span ``(a, b)``. Units start as the identity and are skipped, so the
      backbone reproduces mmseg's ViT exactly until a structure is installed
      (:meth:`install_structures`, or loading a compressed checkpoint);
    * with a compressed structure the token count is fixed: inputs smaller than ``img_size``
      are zero-padded at the bottom/right to it and the output grids cropped back; larger
      inputs raise ``ValueError`` (use slide inference with crop = ``img_size``);
    * outputs are always full grids ``(B, C, H/16, W/16)``: R restores the tokens after each
      span. An ``out_indices`` entry inside a span is restored with that span's R
      (``restore_outputs=True``) or handed as :class:`CompressedTokens` to
      ``TokenReconstructNeck`` (``restore_outputs=False``).

    Args:
        pm_cfg (dict, optional): Prune-and-Merge config; None means no units (plain ViT).
            Keys (defaults in ``DEFAULT_PM_CFG``): ``mode`` ('layer' | 'span'), ``layers``
            (list[int] | None = all), ``spans`` (list of inclusive ``(a, b)``; negative indices
            count from the end), ``representation`` ('sparse' | 'dense'), ``trainable``
            (bool), ``restore_outputs`` (bool), and the compression-step keys ``keep_rate``
            (0, 1], ``prune_rate`` [0, 1), ``allocation``, ``depth_discount``,
            ``official_row_clip``, ``score_iters``, ``score_mode``.
        **kwargs: every argument of mmseg's ``VisionTransformer``.

    Raises:
        PMConfigError: bad ``pm_cfg`` (unknown key or mode, rates out of range, overlapping or
            out-of-range spans); a ``ValueError``.
    """

    def __init__(self, pm_cfg: Optional[dict] = None, **kwargs):
        super().__init__(**kwargs)
        bound = inspect.signature(VisionTransformer.__init__).bind(self, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        num_layers = a['num_layers']
        dpr = [x.item() for x in torch.linspace(0, a['drop_path_rate'], num_layers)]
        # same construction as the parent, with the PM layer class (same parameter names)
        self.layers = ModuleList([
            PMTransformerEncoderLayer(
                embed_dims=a['embed_dims'],
                num_heads=a['num_heads'],
                feedforward_channels=a['mlp_ratio'] * a['embed_dims'],
                attn_drop_rate=a['attn_drop_rate'],
                drop_rate=a['drop_rate'],
                drop_path_rate=dpr[i],
                num_fcs=a['num_fcs'],
                qkv_bias=a['qkv_bias'],
                act_cfg=a['act_cfg'],
                norm_cfg=a['norm_cfg'],
                with_cp=a['with_cp'],
                batch_first=True) for i in range(num_layers)
        ])
        self.out_indices = [i % num_layers for i in self.out_indices]
        self.pm_cfg = self._parse_pm_cfg(pm_cfg, num_layers)
        self.pm = nn.ModuleDict()
        if self.pm_cfg is not None:
            grid = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
            for start, end in self.pm_cfg['spans']:
                self.pm[str(start)] = PruneMerge(
                    (start, end), grid, num_prefix=int(self.with_cls_token),
                    representation=self.pm_cfg['representation'],
                    trainable=self.pm_cfg['trainable'])
        self._freeze()

    # ---------------------------------------------------------------------------------------
    @staticmethod
    def _parse_pm_cfg(pm_cfg: Optional[dict], num_layers: int) -> Optional[dict]:
        if pm_cfg is None:
            return None
        unknown = set(pm_cfg) - set(DEFAULT_PM_CFG)
        if unknown:
            raise PMConfigError(f'unknown pm_cfg keys {sorted(unknown)}; known: '
                             f'{sorted(DEFAULT_PM_CFG)}')
        cfg = copy.deepcopy(DEFAULT_PM_CFG)
        cfg.update(pm_cfg)
        pm.check_rates(cfg['keep_rate'], cfg['prune_rate'])
        if cfg['representation'] not in REPRESENTATIONS:
            raise PMConfigError(f'pm_cfg.representation must be one of {REPRESENTATIONS}, '
                             f'got {cfg["representation"]!r}')
        if cfg['mode'] == 'layer':
            layers = range(num_layers) if cfg['layers'] is None else cfg['layers']
            spans = [(i, i) for i in layers]
        elif cfg['mode'] == 'span':
            if not cfg['spans']:
                raise PMConfigError('pm_cfg.mode="span" needs pm_cfg.spans, e.g. [(2, 11)]')
            spans = [tuple(s) for s in cfg['spans']]
        else:
            raise PMConfigError(f'pm_cfg.mode must be "layer" or "span", got {cfg["mode"]!r}')
        norm = []
        for span in spans:
            if len(span) != 2 or not all(-num_layers <= int(v) < num_layers for v in span):
                raise PMConfigError(f'span {span} out of range for {num_layers} layers')
            a, b = (int(v) % num_layers for v in span)
            if a > b:
                raise PMConfigError(f'span {span}: start after end')
            norm.append((a, b))
        norm.sort()
        for (a0, b0), (a1, b1) in zip(norm, norm[1:]):
            if a1 <= b0:
                raise PMConfigError(f'spans ({a0}, {b0}) and ({a1}, {b1}) overlap')
        cfg['spans'] = norm
        if cfg['mode'] == 'layer':
            cfg['layers'] = [a for a, _ in norm]
        return cfg

    @property
    def pm_units(self) -> List[PruneMerge]:
        """The Prune-and-Merge units in block order."""
        return sorted(self.pm.values(), key=lambda u: u.start)

    @property
    def is_compressed(self) -> bool:
        """True when at least one unit holds a non-identity structure."""
        return any(not u.is_identity for u in self.pm.values())

    @property
    def structure_grid(self):
        """Patch grid ``(H_g, W_g)`` the units are built for (from ``img_size``), or None."""
        units = self.pm_units
        return tuple(units[0].grid_size.tolist()) if units else None

    def install_structures(self, structures: Dict[int, PMStructure]) -> None:
        """Install one structure per unit, keyed by the unit's first block.

        Raises:
            KeyError: a key without a unit.
            PMStructureError: a structure for another grid, or inconsistent.
        """
        for start, s in structures.items():
            if str(start) not in self.pm:
                raise KeyError(f'no Prune-and-Merge unit starts at block {start}; units: '
                               f'{sorted(int(k) for k in self.pm)}')
            self.pm[str(start)].install(s)

    def structure_summary(self) -> dict:
        """JSON-serialisable structure of every unit (span, grid, N, K, merged, pruned, groups),
        plus the config keys that rebuild the units."""
        return dict(pm_cfg={k: self.pm_cfg[k] for k in STRUCTURE_KEYS} if self.pm_cfg else None,
                    with_cls_token=self.with_cls_token,
                    units=[u.summary() for u in self.pm_units])

    def init_weights(self):
        """mmseg's initialisation; ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` (or
        ``pretrained=PATH``) loads a local file through
        :func:`mmseg_pm.models.utils.checkpoint.load_pretrained_backbone`."""
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            from ..utils.checkpoint import load_pretrained_backbone
            load_pretrained_backbone(self, self.init_cfg['checkpoint'])
        else:
            super().init_weights()

    # ---------------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Check the incoming Prune-and-Merge units before the parameters load.

        * A state dict without any ``pm.`` key (an mmseg ViT / Segmenter or ImageNet
          checkpoint) leaves identity units as they are; if the model already holds a
          compressed structure, the missing keys are reported (strict loading fails).
        * A state dict with ``pm.`` keys must carry exactly this model's units; their
          tensors are re-shaped to the incoming structure by :class:`PruneMerge`.

        Raises:
            PMStructureError: the checkpoint's units differ from the model's.
        """
        pm_prefix = prefix + 'pm.'
        starts = {k[len(pm_prefix):].split('.', 1)[0] for k in state_dict
                  if k.startswith(pm_prefix)}
        if starts:
            if starts != set(self.pm.keys()):
                raise PMStructureError(
                    f'the checkpoint has Prune-and-Merge units starting at blocks '
                    f'{sorted(int(s) for s in starts)}, the model at '
                    f'{sorted(int(s) for s in self.pm.keys())}: build the model with the '
                    f'pm_cfg the checkpoint was compressed with')
        elif not self.is_compressed:
            for name, unit in self.pm.items():  # identity units: nothing to load
                for key, value in unit.state_dict().items():
                    state_dict[f'{pm_prefix}{name}.{key}'] = value
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ---------------------------------------------------------------------------------------
    def _format_output(self, x: Tensor, hw_shape, crop):
        """(B, P + N, C) tokens -> mmseg output (B, C, h, w) [, cls], cropped to ``crop``."""
        out = x[:, 1:] if self.with_cls_token else x
        b, _, c = out.shape
        out = out.reshape(b, hw_shape[0], hw_shape[1], c).permute(0, 3, 1, 2)
        if tuple(crop) != tuple(hw_shape):
            out = out[:, :, :crop[0], :crop[1]]
        out = out.contiguous()
        if self.output_cls_token:
            out = [out, x[:, 0]]
        return out

    def _pad_to_structure(self, inputs: Tensor):
        """Zero-pad ``(B, 3, H, W)`` to the structure's crop; returns (inputs, output grid)."""
        h, w = inputs.shape[-2:]
        ps = self.patch_size
        grid = (-(-h // ps), -(-w // ps))
        sh, sw = self.structure_grid
        if grid[0] > sh or grid[1] > sw:
            raise ValueError(
                f'input {h}x{w} is larger than the {sh * ps}x{sw * ps} crop the compression '
                f'structure was built for (fixed token count). Use slide inference with crop '
                f'= stride-compatible {sh * ps}x{sw * ps}: test_cfg=dict(mode="slide", '
                f'crop_size=({sh * ps}, {sw * ps}), stride=...)')
        if grid != (sh, sw):
            inputs = F.pad(inputs, (0, sw * ps - w, 0, sh * ps - h))
        return inputs, grid

    def forward(self, inputs: Tensor):
        """Args: inputs (Tensor): ``(B, 3, H, W)``.

        Returns:
            tuple: one entry per ``out_indices``: Tensor ``(B, C, ceil(H/16), ceil(W/16))``
            (``[that, cls (B, C)]`` with ``output_cls_token``), or :class:`CompressedTokens`
            inside a span when ``restore_outputs=False``.

        Raises:
            ValueError: input larger than the structure's crop (compressed models only).
        """
        active = {u.start: u for u in self.pm.values() if not u.is_identity}
        crop = None
        if active:
            inputs, crop = self._pad_to_structure(inputs)
        b = inputs.shape[0]
        x, hw_shape = self.patch_embed(inputs)
        crop = crop or hw_shape
        cls_tokens = self.cls_token.expand(b, -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        x = self._pos_embeding(x, hw_shape, self.pos_embed)
        if not self.with_cls_token:
            x = x[:, 1:]
        if self.pre_norm:
            x = self.pre_ln(x)
        outs = []
        if self.out_origin:
            outs.append(self._format_output(x, hw_shape, crop))
        restore_outputs = self.pm_cfg is None or self.pm_cfg['restore_outputs']
        unit = shortcut = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i in active:
                unit, shortcut = active[i], x
                x = unit.merge(x)
            x = layer(x)
            if unit is not None and i == unit.end:
                x = unit.reconstruct(x, shortcut)
                unit = shortcut = None
            if i == last and self.final_norm:
                x = self.norm1(x)
            if i in self.out_indices:
                if unit is None:
                    outs.append(self._format_output(x, hw_shape, crop))
                elif restore_outputs:
                    outs.append(
                        self._format_output(unit.reconstruct(x, shortcut), hw_shape, crop))
                else:
                    outs.append(CompressedTokens(x, shortcut, unit, self, hw_shape, crop))
        return tuple(outs)


def summarize_backbone(model: nn.Module) -> Optional[dict]:
    """Structure summary of the first :class:`PruneMergeViT` inside ``model``, or None."""
    for m in model.modules():
        if isinstance(m, PruneMergeViT):
            return m.structure_summary()
    return None


__all__ = ['PruneMergeViT', 'CompressedTokens', 'DEFAULT_PM_CFG', 'summarize_backbone',
           'PMStructureError']
