"""Prune-and-Merge as a token reducer: a static merge matrix M before a span of blocks, the
reconstruct matrix R after it, pruned tokens carried by a shortcut.

J. Mao et al., "Prune and Merge: Efficient Token Compression for Vision Transformer with Spatial
Information Preserved", IEEE TMM 2025 (arXiv 2503.23455); official code
NUST-Machine-Intelligence-Laboratory/prune_and_merge ``pm-vit/tmvit.py`` (Block forward) and
wafev/PM-Segmenter. The maths lives in :mod:`mmseg_pm.functional.prune_merge`.
"""
import itertools
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...errors import ConfigError, StructureError
from ...functional import prune_merge as pm
from ...functional import prune_merge_dense as pmd
from ...functional import prune_merge_sparse as pms
from ...functional.prune_merge import PMStructure
from .base import ReductionContext, TokenReducer

REPRESENTATIONS = ('sparse', 'dense')
#: ``ReductionContext.extra`` keys: the carried rows of the open unit, and a unit whose step
#: stays open across a block boundary for the next unit's merge
CARRIED, CHAINED = 'prune_merge.carried', 'prune_merge.chained'
_GENERATIONS = itertools.count()


class PruneMergeUnit(nn.Module):
    """Merge matrix M before block ``a``, reconstruct matrix R after block ``b``, token mask t.

    A unit covering the span ``(a, b)`` (``a == b`` in per-layer mode) merges the
    ``(B, P + N, C)`` input of block ``a`` into ``(B, P + K, C)``, blocks ``a..b`` run on the
    ``P + K`` tokens, and R restores ``(B, P + N, C)`` after block ``b``; pruned tokens bypass the
    span unchanged (the shortcut). ``P`` prefix (CLS) tokens are never merged or pruned.

    State (all in the state dict, so the structure travels with every checkpoint):

    * buffers ``span`` (2,) = (a, b), ``grid_size`` (2,) = (H_g, W_g), ``assign`` (N,),
      ``centers`` (K,); in dense mode also ``token_mask`` (P + N,).
    * parameters, ``representation='sparse'``: ``merge_weight`` (N,) and ``restore_weight``
      (N,), the support of M and R (the entries of pruned patches are never read, so they
      get no gradient: the structure cannot drift during training);
      ``representation='dense'``: ``merge_matrix`` (P + K, P + N) and ``restore_matrix``
      (P + N, P + K), as the official classification code trains them.

    A new unit holds the identity structure (K = N, M = R = I), which :attr:`is_identity`
    reports; an identity unit is skipped, so it changes nothing and accepts any input size.
    Installing another structure re-shapes the tensors in place (``.data``), so the
    ``nn.Parameter`` objects an optimizer already holds stay valid.

    Args:
        span (tuple[int, int]): first and last block of the span, inclusive.
        grid_size (tuple[int, int]): patch grid ``(H_g, W_g)`` of the training crop.
        num_prefix (int): P, number of prefix (CLS) tokens. Default: 1.
        representation (str): ``'sparse'`` or ``'dense'``. Default: ``'sparse'``.
        trainable (bool): M and R receive gradients (the paper); False freezes them (the
            published segmentation finetuning). Default: True.

    Raises:
        ConfigError: unknown representation or an empty grid.
    """

    def __init__(self, span: Sequence[int], grid_size: Sequence[int], num_prefix: int = 1,
                 representation: str = 'sparse', trainable: bool = True):
        super().__init__()
        if representation not in REPRESENTATIONS:
            raise ConfigError(f'representation must be one of {REPRESENTATIONS}, '
                              f'got {representation!r}')
        h, w = (int(v) for v in grid_size)
        if h < 1 or w < 1:
            raise ConfigError(f'grid_size must be positive, got {tuple(grid_size)}')
        self.num_prefix = int(num_prefix)
        self.representation = representation
        self.single_block = int(span[0]) == int(span[1])  # a per-layer unit
        self.register_buffer('span', torch.tensor([int(span[0]), int(span[1])]))
        self.register_buffer('grid_size', torch.tensor([h, w]))
        self.register_buffer('assign', torch.empty(0, dtype=torch.long))
        self.register_buffer('centers', torch.empty(0, dtype=torch.long))
        if representation == 'sparse':
            self.merge_weight = nn.Parameter(torch.empty(0), requires_grad=trainable)
            self.restore_weight = nn.Parameter(torch.empty(0), requires_grad=trainable)
        else:
            self.register_buffer('token_mask', torch.empty(0))
            self.merge_matrix = nn.Parameter(torch.empty(0, 0), requires_grad=trainable)
            self.restore_matrix = nn.Parameter(torch.empty(0, 0), requires_grad=trainable)
        self.install(pm.identity_structure((h, w)))

    @property
    def start(self) -> int:
        return int(self.span[0])

    @property
    def end(self) -> int:
        return int(self.span[1])

    def extra_repr(self) -> str:
        return (f'span={tuple(self.span.tolist())}, grid={tuple(self.grid_size.tolist())}, '
                f'N={self.assign.numel()}, K={self.centers.numel()}, representation='
                f'{self.representation}, identity={self.is_identity}')

    def install(self, structure: PMStructure) -> None:
        """Install ``structure`` (validated) and re-initialise M, R (R = pinv(M)) and t.

        Raises:
            StructureError: the structure does not fit this unit's grid or is inconsistent.
        """
        if tuple(structure.grid_size) != tuple(self.grid_size.tolist()):
            raise StructureError(
                f'structure built for grid {tuple(structure.grid_size)} cannot be installed in '
                f'a unit for grid {tuple(self.grid_size.tolist())}')
        pm.validate_structure(structure)
        tensors = dict(assign=structure.assign, centers=structure.centers)
        if self.representation == 'sparse':
            tensors.update(merge_weight=structure.merge_weight,
                           restore_weight=structure.restore_weight)
        else:
            tensors.update(merge_matrix=pmd.to_dense_merge(structure, self.num_prefix),
                           restore_matrix=pmd.to_dense_restore(structure, self.num_prefix),
                           token_mask=pmd.to_token_mask(structure, self.num_prefix))
        for name, value in tensors.items():
            getattr(self, name).data = value.detach().to(self.span.device).clone()
        self._refresh()

    def structure(self) -> PMStructure:
        """The installed structure; in dense mode the weights are read off M and R's support."""
        if self.representation == 'sparse':
            mw, rw = self.merge_weight.detach().clone(), self.restore_weight.detach().clone()
        else:
            mw, rw = pmd.support_weights(self.merge_matrix, self.restore_matrix, self.assign,
                                         self.num_prefix)
        return PMStructure(tuple(self.grid_size.tolist()), self.assign.clone(),
                           self.centers.clone(), mw, rw)

    def summary(self) -> dict:
        """JSON-serialisable structure record (span, grid, N, K, merged, pruned, groups)."""
        return dict(span=self.span.tolist(), representation=self.representation,
                    **self.structure().summary())

    def _refresh(self) -> None:
        """Recompute the derived (non-persistent) state after an install or a load."""
        self._pruned = self.assign < 0
        self._any_pruned = bool(self._pruned.any())
        self._index_cache = {}  # bag indices and weights (functional.prune_merge_sparse)
        self._generation = next(_GENERATIONS)  # tells a changed structure from the old one
        n = self.assign.numel()
        if self.representation == 'sparse':
            weights_are_one = bool((self.merge_weight == 1).all() and
                                   (self.restore_weight == 1).all())
        else:
            eye = torch.eye(self.num_prefix + n, device=self.merge_matrix.device)
            weights_are_one = (self.merge_matrix.shape == eye.shape
                               and bool(torch.equal(self.merge_matrix, eye))
                               and bool(torch.equal(self.restore_matrix, eye)))
        self.is_identity = (self.centers.numel() == n and not self._any_pruned
                            and weights_are_one and bool(torch.equal(
                                self.assign, torch.arange(n, device=self.assign.device))))

    def _apply(self, fn, *args, **kwargs):
        # keep the derived tensors on the same device / dtype as the buffers
        out = super()._apply(fn, *args, **kwargs)
        self._refresh()
        return out

    def merge(self, x: Tensor) -> Tensor:
        """``z = M x``: ``(B, P + N, C) -> (B, P + K, C)``."""
        if self.representation == 'dense':
            return pmd.merge_tokens_dense(x, self.merge_matrix)
        return pms.merge_tokens(x, self.assign, self.merge_weight, self.centers.numel(),
                                self.num_prefix, self._index_cache)

    def restore(self, z: Tensor, shortcut: Optional[Tensor] = None,
                carried: Optional[Tensor] = None) -> Tensor:
        """``y = R z + (1 - t) * x``: ``(B, P + K, C) -> (B, P + N, C)``, given the
        ``(B, P + N, C)`` input ``x`` of :meth:`merge` as ``shortcut``, or (sparse) only its
        pruned rows as ``carried`` ``(B, n_pruned, C)`` (:meth:`carry`)."""
        if self.representation == 'dense':
            return pmd.restore_tokens_dense(z, shortcut, self.restore_matrix, self.token_mask)
        return pms.restore_patches(z, shortcut, self.assign, self.restore_weight,
                                   self.num_prefix, self._pruned, self._index_cache, carried)

    def carry(self, x: Tensor) -> Tensor:
        """The rows of the pruned patches of the input ``(B, P + N, C)``: ``(B, n_pruned, C)``
        (sparse only)."""
        return pms.carry_pruned(x, self.assign, self.num_prefix, self._index_cache)

    def merge_after(self, upstream: 'PruneMergeUnit', z: Tensor, carried: Tensor,
                    joined: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Restore ``upstream`` (which ends in the block before this unit) and merge into this
        unit in one step, without the full grid in between (sparse only;
        :func:`~mmseg_pm.functional.prune_merge_sparse.restore_then_merge`).

        Args:
            upstream (PruneMergeUnit): the unit ending at block ``self.start - 1``.
            z (Tensor): ``(B, P + K_up, C)`` its last block's output.
            carried (Tensor): ``(B, n_pruned_up, C)`` its carried rows.
            joined (Tensor, optional): ``z`` and ``carried`` as one tensor, when they are
                consecutive views of it (no copy needed).

        Returns:
            tuple[Tensor, Tensor, Tensor]: ``(B, P + K, C)`` merged tokens, this unit's
            carried rows ``(B, n_pruned, C)`` and the tensor both are views of.
        """
        generation, cache = self._index_cache.get('after', (None, None))
        if generation != upstream._generation:  # one upstream structure at a time
            cache = {}
            self._index_cache['after'] = (upstream._generation, cache)
        return pms.restore_then_merge(
            z, carried, (upstream.assign, upstream.restore_weight),
            (self.assign, self.merge_weight, self.centers.numel()), self.num_prefix, cache,
            joined)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Re-shape this unit's tensors to the incoming structure, validate it, then load.

        Raises:
            StructureError: the incoming structure is inconsistent (shapes, group indices out
                of range, grid or span mismatch, another representation).
        """
        names = ['span', 'grid_size', 'assign', 'centers']
        names += (['merge_weight', 'restore_weight'] if self.representation == 'sparse' else
                  ['merge_matrix', 'restore_matrix', 'token_mask'])
        incoming = {n: state_dict[prefix + n] for n in names if prefix + n in state_dict}
        if len(incoming) == len(names):
            self._check_incoming(incoming, prefix)
            for n, value in incoming.items():
                tensor = getattr(self, n)
                if tensor.shape != value.shape:
                    tensor.data = torch.empty(value.shape, dtype=tensor.dtype,
                                              device=tensor.device)
        elif incoming:
            other = 'dense' if self.representation == 'sparse' else 'sparse'
            raise StructureError(
                f'incomplete Prune-and-Merge structure at "{prefix}": found '
                f'{sorted(incoming)}, expected {names} (a {other}-representation checkpoint '
                f'into a {self.representation} model? set pm_cfg.representation)')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._refresh()

    def _check_incoming(self, t: dict, prefix: str) -> None:
        span, grid = t['span'].tolist(), t['grid_size'].tolist()
        where = f'Prune-and-Merge structure at "{prefix}"'
        if span != self.span.tolist():
            raise StructureError(f'{where}: checkpoint span {span} != model span '
                                 f'{self.span.tolist()}')
        if grid != self.grid_size.tolist():
            raise StructureError(
                f'{where}: checkpoint grid {grid} != model grid {self.grid_size.tolist()} '
                f'(the backbone img_size must equal the crop the structure was built for)')
        n, k, p = grid[0] * grid[1], t['centers'].numel(), self.num_prefix
        if self.representation == 'sparse':
            shapes = dict(merge_weight=(n,), restore_weight=(n,))
        else:
            shapes = dict(merge_matrix=(p + k, p + n), restore_matrix=(p + n, p + k),
                          token_mask=(p + n,))
        for name, shape in shapes.items():
            if tuple(t[name].shape) != shape:
                raise StructureError(f'{where}: {name} must have shape {shape} for N={n}, '
                                     f'K={k}, P={p}, got {tuple(t[name].shape)}')
        pm.validate_groups(grid, t['assign'], t['centers'], where=where)


@MODELS.register_module()
class PruneMerge(TokenReducer):
    """Prune-and-Merge units in a ViT: one :class:`PruneMergeUnit` per span ``(a, b)``.

    Mao et al., "Prune and Merge", IEEE TMM 2025 (arXiv 2503.23455). Per-layer mode is one unit
    per block (``spans=[(i, i), ...]``, the paper's layer-wise compression); span mode merges
    once before block ``a`` and restores once after block ``b`` (PM-Segmenter's
    ``merge_list`` / ``recover_list``). The units are children named by their first block,
    so their state-dict keys are ``<attr>.<a>.*``. Static: the token counts are fixed for the
    crop the structure was built for (:attr:`fixed_grid`); smaller inputs are padded to it by
    the backbone, larger ones refused. The structure is found by
    :mod:`mmseg_pm.compression` (``PMCompressHook``, ``tools/pm_compress.py``) or loaded with a
    checkpoint.

    Args:
        mode (str): ``'layer'`` (a unit in every block of ``layers``) or ``'span'`` (a unit
            per entry of ``spans``). Default: ``'layer'``.
        layers (list[int], optional): layer mode: blocks with a unit; None: all.
        spans (list[tuple[int, int]], optional): span mode: inclusive block spans (negative
            indices count from the end).
        representation (str): ``'sparse'`` (support of M and R, O(N C)) or ``'dense'``.
        trainable (bool): M and R receive gradients. Default: True.
        **kwargs: :class:`TokenReducer` arguments (set by the backbone).

    Raises:
        ConfigError: unknown mode or representation, bad layers / spans.
    """

    def __init__(self, mode: str = 'layer', layers: Optional[Sequence[int]] = None,
                 spans: Optional[Sequence[Sequence[int]]] = None,
                 representation: str = 'sparse', trainable: bool = True, **kwargs):
        super().__init__(**kwargs)
        if mode == 'layer':
            spans = [(i, i) for i in (range(self.num_layers) if layers is None else layers)]
        elif mode == 'span':
            if not spans:
                raise ConfigError('pm_cfg.mode="span" needs pm_cfg.spans, e.g. [(2, 11)]')
        else:
            raise ConfigError(f'pm_cfg.mode must be "layer" or "span", got {mode!r}')
        spans = pm.check_spans(spans, self.num_layers)
        if not spans:
            raise ConfigError('Prune-and-Merge needs at least one span or layer')
        if representation not in REPRESENTATIONS:
            raise ConfigError(f'pm_cfg.representation must be one of {REPRESENTATIONS}, '
                              f'got {representation!r}')
        for a, b in spans:
            self.add_module(str(a), PruneMergeUnit((a, b), self.grid_size, self.num_prefix,
                                                   representation, trainable))
        self.mode = mode
        self.representation = representation
        self.trainable = trainable
        # units by first and by last block (int keys: no str() in the per-block hooks)
        self._starting = {a: self._modules[str(a)] for a, _ in spans}
        self._ending = {b: self._modules[str(a)] for a, b in spans}

    def __getitem__(self, start) -> PruneMergeUnit:
        """The unit starting at block ``start``."""
        return self._modules[str(start)]

    @property
    def units(self) -> List[PruneMergeUnit]:
        """The units in block order."""
        return sorted(self.children(), key=lambda u: u.start)

    @property
    def spans(self) -> List[Tuple[int, int]]:
        return [(u.start, u.end) for u in self.units]

    @property
    def is_identity(self) -> bool:
        return all(u.is_identity for u in self.children())

    @property
    def fixed_grid(self) -> Optional[Tuple[int, int]]:
        return None if self.is_identity else self.grid_size

    def install(self, structures: Dict[int, PMStructure]) -> None:
        """Install one structure per unit, keyed by the unit's first block.

        Raises:
            KeyError: a key without a unit.
            StructureError: a structure for another grid, or inconsistent.
        """
        for start, s in structures.items():
            if str(start) not in self._modules:
                raise KeyError(f'no Prune-and-Merge unit starts at block {start}; units: '
                               f'{[a for a, _ in self.spans]}')
            self._modules[str(start)].install(s)

    def carries_rows(self, x: Tensor) -> bool:
        """Whether a forward on ``x`` takes the carried-rows path (sparse units, autograd not
        recording, not exporting to ONNX): a unit keeps only the pruned rows of its input,
        and a unit ending right before another is restored and merged into it in one step
        (:meth:`PruneMergeUnit.merge_after`). Otherwise every unit keeps its whole input and
        restores after its last block (the path training differentiates)."""
        return (self.representation == 'sparse' and not torch.onnx.is_in_onnx_export()
                and not (torch.is_grad_enabled() and (x.requires_grad or self.trainable)))

    def pre_block(self, block: int, x: Tensor, ctx: ReductionContext) -> Tensor:
        unit = self._starting.get(block)
        if unit is None or unit.is_identity:
            return x
        chained = ctx.extra.pop(CHAINED, None)
        joined = None
        if chained is not None:  # x is the reduced output of the unit ending at block - 1
            upstream, carried, joined = chained
            ctx.drop()
            z, carried, joined = unit.merge_after(upstream, x, carried, joined)
            if unit.single_block and not torch.compiler.is_compiling():
                # the block writes its output over z, so z and carried stay one tensor and
                # the next unit's step needs no copy
                ctx.output_buffer = z
        elif self.carries_rows(x):
            z, carried = unit.merge(x), unit.carry(x)
        else:
            ctx.push(partial(unit.restore, shortcut=x), unit.assign, block)
            return unit.merge(x)
        ctx.push(partial(unit.restore, carried=carried), unit.assign, block)
        ctx.extra[CARRIED] = (carried, z, joined)
        return z

    def post_block(self, block: int, x: Tensor, ctx: ReductionContext) -> Tensor:
        """Restore the unit ending at ``block``; on the carried-rows path, when the next block
        starts another unit, leave the step open and ``x`` reduced for that unit's merge (an
        output the backbone takes here is still restored through the open step)."""
        unit = self._ending.get(block)
        if unit is None or unit.is_identity:
            return x
        carried, z, joined = ctx.extra.pop(CARRIED, (None, None, None))
        following = self._starting.get(block + 1)
        if (carried is not None and following is not None and not following.is_identity
                and x.dtype == carried.dtype):
            # x is z when the block wrote its output into its input (see pre_block)
            ctx.extra[CHAINED] = (unit, carried, joined if x is z else None)
            return x
        return ctx.pop(x)

    def unit_costs(self, out_indices: Sequence[int]) -> List[dict]:
        """Token counts and analytic merge / restore cost of every unit, per image.

        Sparse M / R are a weighted scatter-add and a weighted gather that mmengine's counter
        does not see: merge = (non-pruned patches) * C multiply-adds, restore = N * C per
        application (one after block b, one per ``out_indices`` entry inside the span). Dense
        M / R are matmuls the counter counts: ``(P + K) (P + N) C`` each. M and R are counted
        as the operators of the paper; the inference path, which applies ``M_b R_a`` of units in
        consecutive blocks as one gather, does slightly fewer (under 0.02% of the model).

        Returns:
            list[dict]: per unit in block order: ``span``, ``active``, ``representation``,
            ``N``, ``K``, ``merged``, ``pruned``, ``prefix``, ``tokens`` (P + K),
            ``channels``, ``restores``, ``merge_flops``, ``restore_flops``, ``mr_flops`` and
            ``mr_counted_by_mmengine`` (the part of ``mr_flops`` the counter includes).
        """
        c, rows = self.embed_dims, []
        for unit in self.units:
            s = unit.structure().summary()
            p, n, k = unit.num_prefix, s['num_tokens'], s['num_groups']
            active = not unit.is_identity
            restores = 1 + sum(1 for i in out_indices if unit.start <= i < unit.end)
            if not active:
                merge = restore = counted = 0
            elif unit.representation == 'dense':
                merge = (p + k) * (p + n) * c
                restore = restores * (p + n) * (p + k) * c
                counted = merge + restore
            else:
                merge, restore, counted = (n - s['num_pruned']) * c, restores * n * c, 0
            rows.append(dict(span=[unit.start, unit.end], active=active,
                             representation=unit.representation, N=n, K=k,
                             merged=s['num_merged'], pruned=s['num_pruned'], prefix=p,
                             tokens=p + k, channels=c, restores=restores if active else 0,
                             merge_flops=merge, restore_flops=restore, mr_flops=merge + restore,
                             mr_counted_by_mmengine=counted))
        return rows

    def reduction_flops(self, token_counts: Sequence[int], out_indices: Sequence[int]) -> dict:
        rows = self.unit_costs(out_indices)
        total = sum(r['mr_flops'] for r in rows)
        counted = sum(r['mr_counted_by_mmengine'] for r in rows)
        return dict(uncounted=total - counted, counted=counted)

    def summary(self) -> dict:
        return dict(super().summary(), representation=self.representation,
                    units=[u.summary() for u in self.units])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Check the incoming units before they load.

        * No key under ``prefix`` (an mmseg ViT / Segmenter or ImageNet checkpoint): identity
          units stay as they are (their current tensors are supplied); a model that already
          holds a structure reports them missing (strict loading fails).
        * Keys under ``prefix`` must carry exactly this model's units; each unit re-shapes its
          tensors to the incoming structure.

        Raises:
            StructureError: the checkpoint's units differ from the model's.
        """
        starts = {k[len(prefix):].split('.', 1)[0] for k in state_dict if k.startswith(prefix)}
        if starts:
            if starts != set(self._modules):
                raise StructureError(
                    f'the checkpoint has Prune-and-Merge units starting at blocks '
                    f'{sorted(int(s) for s in starts if s.isdigit())}, the model at '
                    f'{[a for a, _ in self.spans]}: build the model with the pm_cfg the '
                    f'checkpoint was compressed with')
        elif self.is_identity:
            for name, unit in self._modules.items():
                for key, value in unit.state_dict().items():
                    state_dict[f'{prefix}{name}.{key}'] = value
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


__all__ = ['PruneMergeUnit', 'PruneMerge', 'REPRESENTATIONS']
