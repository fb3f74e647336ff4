"""EViT: keep the attentive tokens, fuse the inattentive ones (pure token maths).

Liang, Ge, Tong, Song, Wang, Xie, "Not All Patches are What You Need: Expediting Vision
Transformers via Token Reorganizations", ICLR 2022, arXiv 2202.07800. Official code:
youweiliang/evit (``evit.py``: ``Attention.forward`` computes the CLS attention row and the
top-k, ``Block.forward`` gathers the kept tokens and builds the fused token; ``helpers.py``:
``complement_idx``). Written from the paper's description, not copied.

One EViT step on ``(B, P + n, C)`` tokens: the attentiveness of patch token ``i`` is the CLS
query's post-softmax attention to it, averaged over heads (CLS column removed, not
renormalised); the ``k = ceil(rho n)`` most attentive tokens are kept, ordered by decreasing
attentiveness; the others are fused into one extra token ``sum_i a_i x_i`` (the attention-
weighted sum, not normalised) appended at the end. ``n`` counts every non-prefix token,
including the fused token of an earlier step (it is an ordinary candidate). EViT tracks no
sizes.
"""
import torch
from torch import Tensor

from ..errors import StructureError
from .common import Reduction, check_tokens, identity_reduction, keep_count, sort_indices

__all__ = ['evit_num_keep', 'evit_select']


def evit_num_keep(n: int, keep_rate: float) -> int:
    """Tokens EViT keeps out of ``n``: ``ceil(keep_rate * n)`` (youweiliang/evit
    ``Attention.forward``; Liang et al., arXiv 2202.07800).

    ``n`` counts every non-prefix token, an earlier step's fused token included.
    ``keep_rate`` is read as the decimal it prints as (see
    :func:`~mmseg_pm.functional.common.keep_count`).

    Raises:
        ConfigError: ``keep_rate`` not a finite number in ``(0, 1]``; ``n`` negative.
    """
    return keep_count(n, keep_rate)


def evit_select(x: Tensor, cls_attn: Tensor, keep_rate: float, fuse: bool = True,
                num_prefix: int = 1) -> Reduction:
    """One EViT token reorganisation (Liang et al., ICLR 2022, arXiv 2202.07800, §3.2;
    youweiliang/evit ``Attention.forward`` / ``Block.forward``).

    Keeps the ``k = ceil(keep_rate * n)`` patch tokens with the highest ``cls_attn``, in
    decreasing order of ``cls_attn`` (ties: lower position first). With ``fuse`` the other
    ``n - k`` tokens become one extra token ``sum_i cls_attn_i x_i`` appended at the end (not
    renormalised; it keeps the gradient of ``cls_attn`` and ``x`` as in EViT); without
    ``fuse`` they are dropped. The selection itself is done without gradient. When ``k == n``
    nothing happens: ``x`` is returned as is with the identity index and no fused token.

    Protected tokens: the ``P`` prefix rows stay first and unchanged and are not ranked.

    Args:
        x (Tensor): ``(B, P + n, C)`` tokens.
        cls_attn (Tensor): ``(B, n)`` the CLS query's attention to each patch token, averaged
            over heads, with the CLS column removed.
        keep_rate (float): in ``(0, 1]``.
        fuse (bool): append the fused token. Default: True.
        num_prefix (int): P. Default: 1.

    Returns:
        Reduction: ``x`` ``(B, P + k (+ 1), C)`` as [prefix, kept tokens, fused token],
        ``size`` None, ``index`` ``(B, n)``: the kept slot in ``[0, k)`` of a kept token, ``-1``
        for a fused or dropped one (restore it from the step's input; the fused token is no
        target).

    Raises:
        ConfigError: ``keep_rate`` not a finite number in ``(0, 1]``; bad ``num_prefix``.
        StructureError: ``x`` not 3-d or ``cls_attn`` not ``(B, n)``.
    """
    n = check_tokens(x, num_prefix)
    b, _, c = x.shape
    if tuple(cls_attn.shape) != (b, n):
        raise StructureError(f'cls_attn must be (B, n) = {(b, n)}, got {tuple(cls_attn.shape)}')
    k = evit_num_keep(n, keep_rate)
    if k >= n:
        return identity_reduction(x, None, num_prefix)
    with torch.no_grad():
        order = sort_indices(cls_attn.detach(), dim=1, descending=True)
        keep = order[:, :k]
        # the inattentive tokens, in position order
        rest = order[:, k:].gather(1, sort_indices(order[:, k:], dim=1))
        index = torch.full((b, n), -1, dtype=torch.long, device=x.device).scatter_(
            1, keep, torch.arange(k, device=x.device).expand(b, k).contiguous())
    patches = x[:, num_prefix:]
    parts = [x[:, :num_prefix], patches.gather(1, keep[..., None].expand(b, k, c))]
    if fuse:
        weights = cls_attn.gather(1, rest).to(x.dtype)
        inattentive = patches.gather(1, rest[..., None].expand(b, n - k, c))
        parts.append((inattentive * weights[..., None]).sum(dim=1, keepdim=True))
    return Reduction(torch.cat(parts, dim=1), None, index)
