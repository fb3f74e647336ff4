"""ToMe: bipartite soft matching and size-weighted token merging (pure token maths).

Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman, "Token Merging: Your ViT But Faster", ICLR 2023,
arXiv 2210.09461. The official code is facebookresearch/ToMe (``tome/merge.py``:
``bipartite_soft_matching``, ``merge_wavg``, ``merge_source``; ``tome/utils.py``: ``parse_r``).
That code is CC-BY-NC 4.0: nothing here is taken from it, everything is written from the
paper's equations.

One ToMe step on ``L = P + n`` tokens (``P`` prefix tokens first, ``P`` in {0, 1}):

1. split the whole sequence by alternating position: set A holds positions 0, 2, 4, ..., set B
   holds positions 1, 3, 5, ...;
2. cosine similarity of every A token to every B token on a metric (the block's keys averaged
   over heads in ToMe); each A token keeps its best B edge;
3. the ``r`` A tokens with the highest edges (the sources) merge into their B destinations
   (many-to-one) by the size-weighted average ``(s_b x_b + sum_i s_i x_i) / (s_b + sum_i s_i)``;
   sizes add up;
4. new order: the unmerged A tokens in increasing position (the prefix stays first), then all
   B tokens in order.

Prefix tokens are never sources nor destinations. Rows of size 0 are padding (per-image token
counts, see :mod:`mmseg_pm.functional`): never sources, destinations or kept rows; an image
merges ``min(r, its eligible A tokens)`` tokens and the output is padded to the batch maximum.
"""
import math
from decimal import Decimal
from numbers import Integral, Real
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, StructureError
from .common import (Reduction, check_tokens, identity_reduction, merge_into_slots, ones_size,
                     slots_to_index, sort_indices)

__all__ = ['Matching', 'parse_r', 'bipartite_soft_matching', 'merge_weighted', 'tome_merge']


class Matching(NamedTuple):
    """A bipartite matching of one ToMe (or ALGM global) step on ``L = P + n`` tokens.

    Attributes:
        src (Tensor): LongTensor ``(B, R)``: sequence positions (0-based over all ``L`` rows)
            of the merged A tokens, highest edge first; ``R`` is the batch's largest merge
            count and an image with fewer merges is padded with ``-1``.
        dst (Tensor): LongTensor ``(B, R)``: sequence position of each source's destination
            (a B token), ``-1`` where ``src`` is.
        slot (Tensor): LongTensor ``(B, L)``: the output row of every input row (a source gets
            its destination's row; ``-1`` for padding rows).
        num_out (int): ``P + K``, the number of output rows (``K``: batch maximum of the
            remaining patch tokens).
    """
    src: Tensor
    dst: Tensor
    slot: Tensor
    num_out: int


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def parse_r(r: Union[int, Tuple[int, float], Sequence[int]], num_layers: int) -> List[int]:
    """Per-block merge counts of a ToMe schedule (ToMe's ``tome/utils.py: parse_r``).

    * ``int``: the same ``r`` in every block (the paper's constant schedule);
    * ``(r, inflection)`` tuple, ``inflection`` in ``[-1, 1]``: ``r_0 = floor(r (1 - phi))``,
      ``r_{L-1} = 2 r - r_0`` and ``r_l = trunc(r_0 + l (r_{L-1} - r_0) / (L - 1))`` in between
      (``phi = -1``: decreasing from ``2 r`` to 0; ``+1``: increasing; ``0``: constant). The sum
      can fall slightly short of ``r L`` by the truncation. The products are computed exactly
      (``phi`` read as the decimal it prints as), not in binary floating point;
      ``num_layers = 1`` gives ``[r_0]``;
    * list (or any non-tuple sequence): one value per block; missing trailing entries are 0.

    Each value is clipped at run time by :func:`bipartite_soft_matching`, not here.

    Args:
        r: the schedule.
        num_layers (int): number of blocks L.

    Returns:
        list[int]: ``num_layers`` non-negative merge counts.

    Raises:
        ConfigError: ``num_layers`` not a positive int; a negative or non-integer count; an
            inflection outside ``[-1, 1]`` or not finite; a tuple not of length 2; a list longer
            than ``num_layers``.
    """
    if not _is_int(num_layers) or num_layers < 1:
        raise ConfigError(f'num_layers must be a positive int, got {num_layers!r}')
    if _is_int(r):
        if r < 0:
            raise ConfigError(f'ToMe r must be >= 0, got {r}')
        return [int(r)] * num_layers
    if isinstance(r, tuple):
        if len(r) != 2:
            raise ConfigError(f'a ToMe schedule tuple is (r, inflection), got {r!r}')
        base, phi = r
        if not _is_int(base) or base < 0:
            raise ConfigError(f'ToMe r must be an int >= 0, got {base!r}')
        if (not isinstance(phi, Real) or isinstance(phi, bool) or not math.isfinite(phi)
                or not -1 <= phi <= 1):
            raise ConfigError(f'ToMe inflection must be a finite number in [-1, 1], got {phi!r}')
        first = int(math.floor(Decimal(int(base)) * (1 - Decimal(repr(float(phi))))))
        last = 2 * int(base) - first
        if num_layers == 1:
            return [first]
        steps = num_layers - 1
        # first + l (last - first) / steps >= 0, so truncation is floor division
        return [(first * steps + i * (last - first)) // steps for i in range(num_layers)]
    if isinstance(r, (str, bytes)) or not isinstance(r, Sequence):
        raise ConfigError(f'ToMe r must be an int, an (r, inflection) tuple or a list, got {r!r}')
    values = list(r)
    if len(values) > num_layers:
        raise ConfigError(f'ToMe schedule has {len(values)} entries for {num_layers} blocks')
    for v in values:
        if not _is_int(v) or v < 0:
            raise ConfigError(f'ToMe schedule entries must be ints >= 0, got {v!r}')
    return [int(v) for v in values] + [0] * (num_layers - len(values))


def _check_prefix01(num_prefix: int) -> None:
    if not _is_int(num_prefix) or num_prefix not in (0, 1):
        raise ConfigError(f'the bipartite split supports num_prefix 0 or 1, got {num_prefix!r}')


def _best_edges(metric: Tensor, num_prefix: int,
                valid: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Each A token's best B edge under cosine similarity (no gradient).

    Args:
        metric (Tensor): ``(B, L, c)``.
        num_prefix (int): P (rows ``< P`` are neither sources nor destinations).
        valid (Tensor, optional): bool ``(B, L)``, False for padding rows.

    Returns:
        tuple: ``best`` ``(B, ceil(L/2))`` (``-inf`` where not eligible), ``dst``
        ``(B, ceil(L/2))`` the B index of the best edge, ``eligible`` bool ``(B, ceil(L/2))``
        (a valid non-prefix A token with at least one valid non-prefix B token).
    """
    with torch.no_grad():
        b, length = metric.shape[:2]
        unit = F.normalize(metric.detach(), dim=-1)
        ok = torch.arange(length, device=metric.device).expand(b, length) >= num_prefix
        if valid is not None:
            ok = ok & valid
        ok_a, ok_b = ok[:, ::2], ok[:, 1::2]
        na, nb = ok_a.shape[1], ok_b.shape[1]
        if nb == 0:
            best = torch.full((b, na), float('-inf'), dtype=unit.dtype, device=unit.device)
            dst = torch.zeros(b, na, dtype=torch.long, device=unit.device)
            return best, dst, torch.zeros_like(ok_a)
        scores = unit[:, ::2] @ unit[:, 1::2].transpose(1, 2)  # (B, na, nb)
        scores = scores.masked_fill(~ok_b[:, None, :], float('-inf'))
        best, dst = scores.max(dim=-1)
        eligible = ok_a & ok_b.any(dim=1, keepdim=True)
        best = best.masked_fill(~eligible, float('-inf'))
    return best, dst, eligible


def _matching_from_counts(best: Tensor, dst: Tensor, eligible: Tensor, counts: Tensor,
                          valid: Tensor) -> Matching:
    """Merge each image's top ``counts[b]`` edges; build the :class:`Matching`.

    Ties in the edge ranking go to the lower A position (stable sort).
    """
    with torch.no_grad():
        b, length = valid.shape
        na = best.shape[1]
        dev = best.device
        order = sort_indices(best, dim=1, descending=True)  # (B, na)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(na, device=dev).expand(b, na).contiguous())
        merged = (rank < counts[:, None]) & eligible  # (B, na)
        keep_a = valid[:, ::2] & ~merged
        keep_b = valid[:, 1::2]
        slot_a = keep_a.long().cumsum(1) - 1
        unmerged = keep_a.sum(1, keepdim=True)
        slot_b = unmerged + keep_b.long().cumsum(1) - 1
        if slot_b.shape[1]:
            slot_a = torch.where(merged, slot_b.gather(1, dst), slot_a)
        slot_a = torch.where(valid[:, ::2], slot_a, -1)
        slot_b = torch.where(keep_b, slot_b, -1)
        slot = torch.empty(b, length, dtype=torch.long, device=dev)
        slot[:, ::2] = slot_a
        slot[:, 1::2] = slot_b
        num_out = int((unmerged[:, 0] + keep_b.sum(1)).max()) if b else 0
        most = int(counts.max()) if b else 0
        src_a = order[:, :most]
        used = torch.arange(most, device=dev)[None, :] < counts[:, None]
        src = torch.where(used, 2 * src_a, -1)
        dst_pos = torch.where(used, 2 * dst.gather(1, src_a) + 1, -1)
    return Matching(src, dst_pos, slot, num_out)


def bipartite_soft_matching(metric: Tensor, r: int, num_prefix: int,
                            size: Optional[Tensor] = None) -> Matching:
    """ToMe's bipartite soft matching (Bolya et al., ICLR 2023, arXiv 2210.09461, §3;
    facebookresearch/ToMe ``tome/merge.py: bipartite_soft_matching``), without gradient.

    Set A = positions 0, 2, 4, ... and set B = positions 1, 3, 5, ... of the whole sequence
    (prefix included); cosine similarity on ``metric``; each A token's best B edge; the ``r``
    A tokens with the highest edges become sources (ties: lower position first).

    Protected tokens: the ``P`` prefix rows are never sources nor destinations; rows whose
    ``size`` is 0 (padding) are neither and are left out of the output.
    ``r`` is clipped per image to its number of eligible A tokens (valid, non-prefix, with a
    valid non-prefix B token to go to): ``floor(n / 2)`` for ``P = 1`` and ``ceil(n / 2)`` for
    ``P = 0``, with ``n`` the patch tokens.

    Args:
        metric (Tensor): ``(B, L, c)`` similarity features of all ``L = P + n`` rows (e.g. the
            block's keys averaged over heads).
        r (int): merges per image (>= 0).
        num_prefix (int): P, 0 or 1.
        size (Tensor, optional): ``(B, L)`` sizes; only used to find padding rows (size 0).

    Returns:
        Matching: sources, destinations and the output row of every input row.

    Raises:
        ConfigError: ``r`` not an int >= 0; ``num_prefix`` not 0 or 1.
        StructureError: ``metric`` not 3-d or shorter than P; ``size`` of another shape.
    """
    if not _is_int(r) or r < 0:
        raise ConfigError(f'ToMe r must be an int >= 0, got {r!r}')
    _check_prefix01(num_prefix)
    check_tokens(metric, num_prefix, size)
    b, length = metric.shape[:2]
    valid = (torch.ones(b, length, dtype=torch.bool, device=metric.device) if size is None
             else size > 0)
    best, dst, eligible = _best_edges(metric, num_prefix, valid)
    counts = eligible.sum(1).clamp(max=int(r))
    return _matching_from_counts(best, dst, eligible, counts, valid)


def merge_weighted(x: Tensor, size: Optional[Tensor],
                   matching: Matching) -> Tuple[Tensor, Tensor]:
    """Apply a :class:`Matching`: ToMe's size-weighted average (facebookresearch/ToMe
    ``tome/merge.py: merge_wavg``; Bolya et al., arXiv 2210.09461).

    Each destination becomes ``(s_b x_b + sum_i s_i x_i) / (s_b + sum_i s_i)`` over its
    sources ``i``; unmerged tokens are copied exactly; sizes add up. Output order: unmerged A
    tokens in increasing position (prefix first), then all B tokens in order; images with fewer
    tokens are padded at the end with zero rows of size 0. Differentiable w.r.t. ``x``.
    Protected tokens: the matching never makes a prefix or padding row a source or a
    destination, so the prefix is copied unchanged to the front and padding is left out.

    Args:
        x (Tensor): ``(B, L, C)`` tokens (``L = P + n``).
        size (Tensor | None): ``(B, L)`` sizes; None means all ones.
        matching (Matching): from :func:`bipartite_soft_matching` on the same rows.

    Returns:
        tuple: ``(B, P + K, C)`` merged tokens and their ``(B, P + K)`` sizes.

    Raises:
        StructureError: ``x``, ``size`` and ``matching`` disagree in shape.
    """
    if x.dim() != 3 or tuple(matching.slot.shape) != tuple(x.shape[:2]):
        raise StructureError(f'tokens {tuple(x.shape)} do not fit a matching of '
                             f'{tuple(matching.slot.shape)} rows')
    if size is None:
        size = ones_size(x)
    elif tuple(size.shape) != tuple(x.shape[:2]):
        raise StructureError(f'size must be {tuple(x.shape[:2])}, got {tuple(size.shape)}')
    out, new_size = merge_into_slots(x, matching.slot, matching.num_out, weight=size, size=size)
    return out, new_size


def tome_merge(x: Tensor, metric: Tensor, size: Optional[Tensor], r: int,
               num_prefix: int) -> Reduction:
    """One ToMe step (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023, arXiv
    2210.09461): :func:`bipartite_soft_matching` on ``metric``, then :func:`merge_weighted`.

    Protected tokens: the ``P`` prefix rows stay first and unchanged; padding rows (size 0)
    are never merged and never the target of ``index``. With no merge (``r = 0``, or nothing
    eligible) the input is returned as is (``x``, ``size`` or all ones) with the identity
    index.

    Args:
        x (Tensor): ``(B, P + n, C)`` tokens.
        metric (Tensor): ``(B, P + n, c)`` similarity features.
        size (Tensor | None): ``(B, P + n)`` sizes; None means all ones.
        r (int): merges per image (clipped as in :func:`bipartite_soft_matching`).
        num_prefix (int): P, 0 or 1.

    Returns:
        Reduction: ``x`` ``(B, P + K, C)``, ``size`` ``(B, P + K)`` (never None), ``index``
        ``(B, n)``: the output patch slot of every input patch (a source: its destination's).

    Raises:
        ConfigError: ``r`` not an int >= 0; ``num_prefix`` not 0 or 1.
        StructureError: ``x``, ``metric`` or ``size`` of inconsistent shapes.
    """
    _check_prefix01(num_prefix)
    check_tokens(x, num_prefix, size)
    if metric.dim() != 3 or tuple(metric.shape[:2]) != tuple(x.shape[:2]):
        raise StructureError(f'metric must be (B, P + n, c) with (B, P + n) = '
                             f'{tuple(x.shape[:2])}, got {tuple(metric.shape)}')
    if size is None:
        size = ones_size(x)
    matching = bipartite_soft_matching(metric, r, num_prefix, size=size)
    if matching.src.shape[1] == 0:
        return identity_reduction(x, size, num_prefix)
    out, new_size = merge_weighted(x, size, matching)
    return Reduction(out, new_size, slots_to_index(matching.slot, num_prefix))
