"""Gradient-weighted attention scoring (Mao et al., IEEE TMM 2025, arXiv 2503.23455).

For block ``l`` with post-softmax attention ``A`` of shape ``(B, H_h, L, L)`` (before attention
dropout) and ``G = dL/dA``, one batch contributes, per key token ``j``::

    v(j) = sum_{b, h, i} A[b, h, i, j] * G[b, h, i, j] / (B * H_h * L)

(signed sum over batch, heads and query rows, the CLS query row included; prefix key columns
dropped) and the score accumulates ``s(j) += |v(j)|`` over the scoring batches (official
``pm-vit/tmvit.py`` ``Attention.compute_rank_attn``). ``L`` is the task loss on ground truth
(pixel cross-entropy of the decode head, ignore index 255).
"""
import contextlib
import sys
from typing import Dict, Iterable, Iterator, List, Optional

import torch
from mmengine.dist import all_reduce, get_world_size
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import ConfigError, UserError
from .settings import SCORE_MODES


class AttentionScorer:
    """Accumulates gradient-weighted attention scores of chosen blocks of a backbone.

    Use as a context manager: inside it the chosen blocks compute their attention explicitly
    (``TokenReductionViT.attention_map_hooks``) and every backward pass adds one batch's
    ``|v(j)|`` per block; leaving it removes the hooks, so nothing remains at inference.

    Memory: the gradient hook keeps a detached view of ``A`` (the storage autograd saves for
    the softmax backward anyway), never ``A`` itself: a hook that captures the tensor it is
    registered on forms a reference cycle through autograd's C++ graph that Python's collector
    cannot break, and every iteration's maps would stay alive.

    Args:
        backbone (TokenReductionViT): the backbone (``PruneMergeViT``).
        blocks (list[int]): blocks to score.

    Raises:
        ConfigError: a backbone that cannot expose its attention maps.

    Attributes:
        scores (dict[int, Tensor]): block index -> float64 ``(N,)`` accumulated scores.
    """

    def __init__(self, backbone: nn.Module, blocks: List[int]):
        if not hasattr(backbone, 'attention_map_hooks'):
            raise ConfigError(f'scoring needs a TokenReductionViT / PruneMergeViT backbone, got '
                              f'{type(backbone).__name__}')
        self.backbone = backbone
        self.blocks = list(blocks)
        self.num_prefix = int(backbone.with_cls_token)
        self.scores: Dict[int, Tensor] = {}

    def _make_hook(self, index: int):
        def on_attention(attn: Tensor):
            if not attn.requires_grad:
                return
            weights = attn.detach()  # not ``attn``: see the class docstring

            def on_grad(grad: Tensor):
                b, h, n, _ = weights.shape
                # float64 accumulation: the sum runs over B*H*L terms of both signs
                v = (weights.double() * grad.double()).sum(dim=(0, 1, 2)) / (b * h * n)
                v = v[self.num_prefix:].abs()
                prev = self.scores.get(index)
                self.scores[index] = v if prev is None else prev + v

            attn.register_hook(on_grad)

        return on_attention

    def __enter__(self):
        for i in self.blocks:
            self.backbone.attention_map_hooks[i] = self._make_hook(i)
        return self

    def __exit__(self, *exc):
        for i in self.blocks:
            self.backbone.attention_map_hooks.pop(i, None)
        return False

    def reduce(self) -> Dict[int, Tensor]:
        """Sum the scores over distributed ranks (every rank gets the same result)."""
        if get_world_size() > 1:
            for i in sorted(self.scores):
                all_reduce(self.scores[i], op='sum')
        return self.scores


def score_segmentor(model: nn.Module, data: Iterable, num_iters: int,
                    blocks: Optional[List[int]] = None, mode: str = 'train',
                    progress: bool = True) -> Dict[int, Tensor]:
    """Run the scoring pass on an mmseg segmentor whose backbone is a ``TokenReductionViT``.

    Each iteration: ``data_preprocessor`` -> ``loss`` (task loss only; distillation is off) ->
    backward of the summed losses; gradients are discarded (no weight update; the official code
    takes optimizer steps at lr 2e-5, a negligible change). Scores are all-reduced across ranks.
    Peak memory does not grow with ``num_iters``.

    Args:
        model (nn.Module): the segmentor (``EncoderDecoder`` or subclass), unwrapped.
        data (Iterable): yields mmseg data batches (e.g. the train dataloader).
        num_iters (int): number of scoring batches T, >= 1.
        blocks (list[int], optional): blocks to score; default: all.
        mode (str): ``'train'`` (official: dropout and drop-path active) or ``'eval'``
            (deterministic scores). Default: ``'train'``.
        progress (bool): show a progress bar. Default: True.

    Returns:
        dict[int, Tensor]: block index -> float64 ``(N,)`` scores, on CPU.

    Raises:
        ConfigError: ``num_iters < 1`` or unknown mode.
        UserError: the data is empty.
    """
    if not isinstance(num_iters, int) or num_iters < 1:
        raise ConfigError(f'score_iters must be an integer >= 1, got {num_iters!r}')
    if mode not in SCORE_MODES:
        raise ConfigError(f'score mode must be one of {SCORE_MODES}, got {mode!r}')
    backbone = model.backbone
    blocks = list(range(len(backbone.layers))) if blocks is None else list(blocks)
    scorer = AttentionScorer(backbone, blocks)
    was_training = model.training
    model.train(mode == 'train')
    task_loss = getattr(model, 'task_loss', None) or model.loss
    iterator: Iterator = iter(data)
    # progress on stdout with the logs: stderr holds only problems (one line for bad input)
    bar = (tqdm(total=num_iters, desc='PM scoring', unit='it', dynamic_ncols=True,
                file=sys.stdout) if progress else contextlib.nullcontext())
    try:
        with scorer, bar as pbar:
            for it in range(num_iters):
                try:
                    batch = next(iterator)
                except StopIteration:
                    if it == 0:
                        raise UserError('the scoring data (train_dataloader) is empty')
                    iterator = iter(data)
                    batch = next(iterator)
                batch = model.data_preprocessor(batch, True)
                losses = task_loss(batch['inputs'], batch['data_samples'])
                loss = sum(v for k, v in losses.items() if 'loss' in k and torch.is_tensor(v))
                loss.backward()
                model.zero_grad(set_to_none=True)
                del batch, losses, loss
                if pbar is not None:
                    pbar.update(1)
    finally:
        model.train(was_training)
    return {i: s.cpu() for i, s in scorer.reduce().items()}


__all__ = ['AttentionScorer', 'score_segmentor']
