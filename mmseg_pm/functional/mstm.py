"""MSTM: merge the non-crucial tokens into the crucial ones (pure token maths).

Bian, Wang, Han, Wang, "Multi-Scale And Token Mergence: Make Your ViT More Efficient", arXiv
2306.04897. "MSTM" is this project's short name for it.

**This is a reconstruction.** No official or third-party code of the paper is known, and only
its abstract could be read: tokens are split into crucial and non-crucial ones by importance
scores, and each non-crucial token is merged into a crucial one chosen by similarity instead of
being dropped (multi-scale features are fused before; that part is not token maths and not
here). The concrete choices below are this project's best readings of the abstract, each
borrowed from a published method:

* importance: the CLS attention averaged over heads, as in EViT (Liang et al., ICLR 2022,
  arXiv 2202.07800; youweiliang/evit ``Attention.forward``); any ``(B, n)`` score works here;
* ``K = ceil(keep_rate * n)`` crucial tokens (EViT's rounding), kept in their original order;
* each non-crucial token goes to its most cosine-similar crucial token (many-to-one), as in
  ToMe's matching (Bolya et al., ICLR 2023, arXiv 2210.09461) and TPS's "squeeze" (Wei et al.,
  "Joint Token Pruning and Squeezing Towards More Aggressive Compression of Vision
  Transformers", CVPR 2023, arXiv 2304.10716; megvii-research/TPS-CVPR2023
  ``torch_codebase/models/dynamic_vit.py``);
* every non-crucial token is merged, none dropped; sizes add up; the merge weighting is
  ``'size'`` (ToMe's size-weighted average, default), ``'mean'``, ``'importance'`` or
  ``'tps'`` (TPS's similarity-softmax reweighting).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, StructureError
from .common import (Reduction, check_tokens, identity_reduction, keep_count, merge_into_slots,
                     ones_size, sort_indices)

__all__ = ['MSTM_WEIGHTINGS', 'mstm_num_keep', 'mstm_merge']

#: the merge weightings of :func:`mstm_merge`
MSTM_WEIGHTINGS = ('size', 'mean', 'importance', 'tps')


def mstm_num_keep(n: int, keep_rate: float) -> int:
    """Crucial tokens out of ``n`` non-prefix tokens: ``ceil(keep_rate * n)`` (EViT's rounding;
    Bian et al., arXiv 2306.04897, as reconstructed). ``keep_rate`` is read as the decimal it
    prints as (see :func:`~mmseg_pm.functional.common.keep_count`).

    Raises:
        ConfigError: ``keep_rate`` not a finite number in ``(0, 1]``; ``n`` negative.
    """
    return keep_count(n, keep_rate)


def mstm_merge(x: Tensor, importance: Tensor, metric: Tensor, size: Optional[Tensor],
               keep_rate: float, num_prefix: int = 1, weighting: str = 'size') -> Reduction:
    """One MSTM step (Bian et al., "Multi-Scale And Token Mergence: Make Your ViT More
    Efficient", arXiv 2306.04897; reconstructed, see the module docstring).

    The ``K = ceil(keep_rate * n)`` patch tokens with the highest ``importance`` are crucial
    (ties: lower position first) and keep their original order. Every other patch token goes
    to the crucial token of highest cosine similarity on ``metric`` (ties: the earlier crucial
    token). Each crucial token ``c`` with its group ``G_c`` becomes, by ``weighting``:

    * ``'size'``: ``(m_c x_c + sum_p m_p x_p) / (m_c + sum_p m_p)``, ``m`` the sizes;
    * ``'mean'``: the plain mean of ``x_c`` and ``x_p``;
    * ``'importance'``: the importance-weighted mean (weights ``importance``, normalised per
      group; a group whose weights sum to 0 takes the plain mean);
    * ``'tps'``: ``(e x_c + sum_p exp(S_pc) x_p) / (e + sum_p exp(S_pc))``, ``S_pc`` the cosine
      similarity on ``metric`` (the crucial token's own logit is 1).

    Sizes add up in every case (none dropped: the patch sizes of each image keep their sum).
    The crucial selection and the assignment are done without gradient; the merged values
    are differentiable w.r.t. ``x`` (and, through the weights, ``importance`` for
    ``'importance'`` and ``metric`` for ``'tps'``). With ``K = n`` in every image, the input is
    returned as is with the identity index.

    Protected tokens: the ``P`` prefix rows stay first and unchanged; padding rows (size 0) are
    never crucial, never merged, never counted in ``n`` and never the target of ``index``;
    images with different counts are padded to the batch maximum with zero rows of size 0.

    Args:
        x (Tensor): ``(B, P + n, C)`` tokens.
        importance (Tensor): ``(B, n)`` importance of each patch token (e.g. the CLS attention
            averaged over heads).
        metric (Tensor): ``(B, n, c)`` similarity features of the patch tokens only (e.g. the
            keys averaged over heads, or ``x[:, P:]``).
        size (Tensor | None): ``(B, P + n)`` sizes; None means all ones.
        keep_rate (float): in ``(0, 1]``.
        num_prefix (int): P. Default: 1.
        weighting (str): one of ``'size'``, ``'mean'``, ``'importance'``, ``'tps'``.

    Returns:
        Reduction: ``x`` ``(B, P + K, C)``, ``size`` ``(B, P + K)``, ``index`` ``(B, n)``: the
        crucial slot that carries each patch token.

    Raises:
        ConfigError: ``keep_rate`` not a finite number in ``(0, 1]``; unknown ``weighting``;
            bad ``num_prefix``.
        StructureError: ``x`` not 3-d; ``importance``, ``metric`` or ``size`` of another shape.
        ValueError: ``weighting='importance'`` with a negative or non-finite importance.
    """
    if weighting not in MSTM_WEIGHTINGS:
        raise ConfigError(f'MSTM weighting must be one of {MSTM_WEIGHTINGS}, got {weighting!r}')
    n = check_tokens(x, num_prefix, size)
    b = x.shape[0]
    if tuple(importance.shape) != (b, n):
        raise StructureError(f'importance must be (B, n) = {(b, n)}, '
                             f'got {tuple(importance.shape)}')
    if metric.dim() != 3 or tuple(metric.shape[:2]) != (b, n):
        raise StructureError(f'metric must be (B, n, c) with (B, n) = {(b, n)}, '
                             f'got {tuple(metric.shape)}')
    if size is None:
        size = ones_size(x)
    mstm_num_keep(n, keep_rate)  # rejects a bad keep_rate whatever the input
    valid = size[:, num_prefix:] > 0  # (B, n)
    totals = valid.sum(1)
    kept = [mstm_num_keep(int(t), keep_rate) for t in totals.tolist()]
    if b == 0 or kept == totals.tolist():
        return identity_reduction(x, size, num_prefix)
    if weighting == 'importance':
        imp = importance.detach()[valid]
        if not bool(torch.isfinite(imp).all()) or bool((imp < 0).any()):
            raise ValueError('MSTM importance weighting needs finite, non-negative importance')
    dev = x.device
    n_keep = torch.tensor(kept, dtype=torch.long, device=dev)
    with torch.no_grad():
        score = importance.detach().masked_fill(~valid, float('-inf'))
        order = sort_indices(score, dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(n, device=dev).expand(b, n).contiguous())
        crucial = (rank < n_keep[:, None]) & valid
        rest = valid & ~crucial
        positions = torch.arange(n, device=dev).expand(b, n)
        most_k = int(n_keep.max())
        most_r = int((totals - n_keep).max())
        # crucial / non-crucial positions in increasing position, padded by other positions
        c_idx = sort_indices(torch.where(crucial, positions, positions + n), dim=1)
        c_idx = c_idx[:, :most_k]
        r_idx = sort_indices(torch.where(rest, positions, positions + n), dim=1)
        r_idx = r_idx[:, :most_r]
        c_ok = torch.arange(most_k, device=dev)[None, :] < n_keep[:, None]
        r_ok = torch.arange(most_r, device=dev)[None, :] < (totals - n_keep)[:, None]
        unit = F.normalize(metric.detach(), dim=-1)
        d = unit.shape[-1]
        sim = unit.gather(1, r_idx[..., None].expand(b, most_r, d)) @ unit.gather(
            1, c_idx[..., None].expand(b, most_k, d)).transpose(1, 2)  # (B, most_r, most_k)
        target = sim.masked_fill(~c_ok[:, None, :], float('-inf')).argmax(dim=-1)
        patch_slot = torch.where(crucial, crucial.long().cumsum(1) - 1, -1)
        patch_slot = torch.cat([patch_slot, patch_slot.new_full((b, 1), -1)], dim=1).scatter(
            1, torch.where(r_ok, r_idx, n), torch.where(r_ok, target, -1))[:, :n]
        prefix = torch.arange(num_prefix, device=dev).expand(b, num_prefix)
        slot = torch.cat([prefix, torch.where(patch_slot < 0, -1, patch_slot + num_prefix)], 1)
    ones = torch.ones(b, num_prefix, dtype=x.dtype, device=dev)
    if weighting == 'size':
        weight = size
    elif weighting == 'mean':
        weight = None
    elif weighting == 'importance':
        weight = torch.cat([ones.to(importance.dtype), importance], dim=1)
    else:  # 'tps': own logit 1 for crucial tokens, exp(cos to the assigned crucial) otherwise
        unit_g = F.normalize(metric, dim=-1)
        dest = c_idx.gather(1, patch_slot.clamp(min=0))  # (B, n) position of the crucial token
        cos = (unit_g * unit_g.gather(1, dest[..., None].expand_as(unit_g))).sum(-1)
        logit = torch.where(crucial, torch.ones_like(cos), cos)
        weight = torch.cat([ones.to(logit.dtype), logit.exp()], dim=1)
    out, new_size = merge_into_slots(x, slot, num_prefix + most_k, weight=weight, size=size)
    return Reduction(out, new_size, patch_slot)
