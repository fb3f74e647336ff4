"""``PruneMerge``: the nn.Module that holds one Prune-and-Merge structure (M, R, t).

Mao et al., "Prune and Merge: Efficient Token Compression for Vision Transformer with Spatial
Information Preserved", IEEE TMM 2025 (arXiv 2503.23455), §1.2-1.5 of
``../shared/docs/method.md``. The maths lives in :mod:`mmseg_pm.models.utils.prune_merge`.
"""
from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

from ..utils import prune_merge as pm
from ..utils.prune_merge import PMStructure, PMStructureError

REPRESENTATIONS = ('sparse', 'dense')


class PruneMerge(nn.Module):
    """Merge matrix M before block ``a``, reconstruct matrix R after block ``b``, token mask t.

    A unit covering the span ``(a, b)`` (``a == b`` in per-layer mode) merges the
    ``(B, P + N, C)`` input of block ``a`` into ``(B, P + K, C)``, blocks ``a..b`` run on the
    ``P + K`` tokens, and R restores ``(B, P + N, C)`` after block ``b``; pruned tokens bypass the
    span unchanged (the shortcut). ``P`` prefix (CLS) tokens are never merged or pruned.

    State (all in the state dict, so the structure travels with every checkpoint):

    * buffers ``span`` (2,) = (a, b), ``grid_size`` (2,) = (H_g, W_g), ``assign`` (N,),
      ``centers`` (K,); in dense mode also ``token_mask`` (P + N,).
    * parameters, ``representation='sparse'``: ``merge_weight`` (N,) and ``restore_weight``
      (N,), the non-zero support of M and R (the structure cannot drift during training);
      ``representation='dense'``: ``merge_matrix`` (P + K, P + N) and ``restore_matrix``
      (P + N, P + K), as the official classification code trains them.

    A new unit holds the identity structure (K = N, M = R = I), which :attr:`is_identity`
    reports; an identity unit is skipped by the backbone, so it changes nothing and accepts any
    input size. Installing another structure re-shapes the tensors in place (``.data``), so the
    ``nn.Parameter`` objects an optimizer already holds stay valid.

    Args:
        span (tuple[int, int]): first and last block of the span, inclusive.
        grid_size (tuple[int, int]): patch grid ``(H_g, W_g)`` of the training crop.
        num_prefix (int): P, number of prefix (CLS) tokens. Default: 1.
        representation (str): ``'sparse'`` or ``'dense'``. Default: ``'sparse'``.
        trainable (bool): M and R receive gradients (the paper); False freezes them (the
            published segmentation finetuning). Default: True.

    Raises:
        ValueError: unknown representation or an empty grid.
    """

    def __init__(self, span: Sequence[int], grid_size: Sequence[int], num_prefix: int = 1,
                 representation: str = 'sparse', trainable: bool = True):
        super().__init__()
        if representation not in REPRESENTATIONS:
            raise ValueError(f'representation must be one of {REPRESENTATIONS}, '
                             f'got {representation!r}')
        h, w = (int(v) for v in grid_size)
        if h < 1 or w < 1:
            raise ValueError(f'grid_size must be positive, got {tuple(grid_size)}')
        self.num_prefix = int(num_prefix)
        self.representation = representation
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

    # ---------------------------------------------------------------------------------------
    @property
    def start(self) -> int:
        return int(self.span[0])

    @property
    def end(self) -> int:
        return int(self.span[1])

    @property
    def num_tokens(self) -> int:
        """N, number of patch tokens of the structure's grid."""
        return int(self.assign.numel())

    @property
    def num_groups(self) -> int:
        """K, number of merged patch tokens the span runs on."""
        return int(self.centers.numel())

    def extra_repr(self) -> str:
        return (f'span={tuple(self.span.tolist())}, grid={tuple(self.grid_size.tolist())}, '
                f'N={self.num_tokens}, K={self.num_groups}, representation='
                f'{self.representation}, identity={self.is_identity}')

    # ---------------------------------------------------------------------------------------
    def install(self, structure: PMStructure) -> None:
        """Install ``structure`` (validated) and re-initialise M, R (R = pinv(M)) and t.

        Raises:
            PMStructureError: the structure does not fit this unit's grid or is inconsistent.
        """
        if tuple(structure.grid_size) != tuple(self.grid_size.tolist()):
            raise PMStructureError(
                f'structure built for grid {tuple(structure.grid_size)} cannot be installed in '
                f'a unit for grid {tuple(self.grid_size.tolist())}')
        pm.validate_structure(structure)
        dev = self.span.device
        tensors = dict(assign=structure.assign, centers=structure.centers)
        if self.representation == 'sparse':
            tensors.update(merge_weight=structure.merge_weight,
                           restore_weight=structure.restore_weight)
        else:
            tensors.update(merge_matrix=pm.to_dense_merge(structure, self.num_prefix),
                           restore_matrix=pm.to_dense_restore(structure, self.num_prefix),
                           token_mask=pm.to_token_mask(structure, self.num_prefix))
        for name, value in tensors.items():
            getattr(self, name).data = value.detach().to(dev).clone()
        self._refresh()

    def structure(self) -> PMStructure:
        """The installed structure; in dense mode the weights are read off M and R's support."""
        if self.representation == 'sparse':
            mw, rw = self.merge_weight.detach(), self.restore_weight.detach()
        else:
            p, kept = self.num_prefix, torch.nonzero(self.assign >= 0).flatten()
            mw = torch.zeros(self.num_tokens, device=self.assign.device)
            rw = torch.zeros_like(mw)
            mw[kept] = self.merge_matrix.detach()[p + self.assign[kept], p + kept]
            rw[kept] = self.restore_matrix.detach()[p + kept, p + self.assign[kept]]
        return PMStructure(tuple(self.grid_size.tolist()), self.assign.clone(),
                           self.centers.clone(), mw.clone(), rw.clone())

    def summary(self) -> dict:
        """JSON-serialisable structure record (span, grid, N, K, merged, pruned, groups)."""
        info = self.structure().summary()
        return dict(span=self.span.tolist(), representation=self.representation, **info)

    def _refresh(self) -> None:
        """Recompute the derived (non-persistent) state after an install or a load."""
        self._pruned = self.assign < 0
        self._any_pruned = bool(self._pruned.any())
        self._kept = (~self._pruned).to(torch.float32)
        self._gather_index = self.assign.clamp(min=0)
        n = self.num_tokens
        if self.representation == 'sparse':
            weights_are_one = bool((self.merge_weight == 1).all() and
                                   (self.restore_weight == 1).all())
        else:
            eye = torch.eye(self.num_prefix + n, device=self.merge_matrix.device)
            weights_are_one = (self.merge_matrix.shape == eye.shape
                               and bool(torch.equal(self.merge_matrix, eye))
                               and bool(torch.equal(self.restore_matrix, eye)))
        self.is_identity = (self.num_groups == n and not self._any_pruned and weights_are_one
                            and bool(torch.equal(self.assign,
                                                 torch.arange(n, device=self.assign.device))))

    def _apply(self, fn, *args, **kwargs):
        # keep the derived tensors on the same device / dtype as the buffers
        out = super()._apply(fn, *args, **kwargs)
        self._refresh()
        return out

    # ---------------------------------------------------------------------------------------
    def merge(self, x: Tensor) -> Tensor:
        """``z = M x``: ``(B, P + N, C) -> (B, P + K, C)``."""
        if self.representation == 'dense':
            return pm.merge_tokens_dense(x, self.merge_matrix)
        weight = self.merge_weight * self._kept if self._any_pruned else self.merge_weight
        return pm.merge_tokens(x, self._gather_index, weight, self.num_groups, self.num_prefix)

    def reconstruct(self, z: Tensor, shortcut: Tensor) -> Tensor:
        """``y = R z + (1 - t) * shortcut``: ``(B, P + K, C) -> (B, P + N, C)``.

        ``shortcut`` is the ``(B, P + N, C)`` input of :meth:`merge`.
        """
        if self.representation == 'dense':
            return pm.reconstruct_tokens_dense(z, shortcut, self.restore_matrix,
                                               self.token_mask)
        weight = self.restore_weight * self._kept if self._any_pruned else self.restore_weight
        return pm.reconstruct_tokens(z, shortcut, self._gather_index, weight, self.num_prefix,
                                     self._pruned if self._any_pruned else None)

    # ---------------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Re-shape this unit's tensors to the incoming structure, validate it, then load.

        Raises:
            PMStructureError: the incoming structure is inconsistent (shapes, group indices out
                of range, grid or span mismatch).
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
        elif 0 < len(incoming) < len(names):
            other = 'dense' if self.representation == 'sparse' else 'sparse'
            raise PMStructureError(
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
            raise PMStructureError(f'{where}: checkpoint span {span} != model span '
                                   f'{self.span.tolist()}')
        if grid != self.grid_size.tolist():
            raise PMStructureError(
                f'{where}: checkpoint grid {grid} != model grid {self.grid_size.tolist()} '
                f'(the backbone img_size must equal the crop the structure was built for)')
        n, k, p = grid[0] * grid[1], t['centers'].numel(), self.num_prefix
        if self.representation == 'sparse':
            mw, rw = t['merge_weight'], t['restore_weight']
            if mw.shape != (n,) or rw.shape != (n,):
                raise PMStructureError(f'{where}: merge/restore weights must have shape ({n},), '
                                       f'got {tuple(mw.shape)} and {tuple(rw.shape)}')
        else:
            shapes = dict(merge_matrix=(p + k, p + n), restore_matrix=(p + n, p + k),
                          token_mask=(p + n,))
            for name, shape in shapes.items():
                if tuple(t[name].shape) != shape:
                    raise PMStructureError(f'{where}: {name} must have shape {shape} for N={n}, '
                                           f'K={k}, P={p}, got {tuple(t[name].shape)}')
            mw = rw = torch.ones(n)
        pm.validate_structure(PMStructure(tuple(grid), t['assign'], t['centers'], mw, rw),
                              where=where)


def grid_of(unit_or_size, patch_size: int) -> Tuple[int, int]:
    """Patch grid ``(ceil(H / patch), ceil(W / patch))`` of an image size ``(H, W)``."""
    h, w = unit_or_size
    return -(-int(h) // patch_size), -(-int(w) // patch_size)
