"""Gradient-weighted attention scoring (method.md §2).

For block ``l`` with post-softmax attention ``A`` of shape ``(B, H_h, L, L)`` (before attention
dropout) and ``G = dL/dA``, one batch contributes, per key token ``j``::

    v(j) = sum_{b, h, i} A[b, h, i, j] * G[b, h, i, j] / (B * H_h * L)

(signed sum over batch, heads and query rows, the CLS query row included; prefix key columns
dropped) and the score accumulates ``s(j) += |v(j)|`` over the scoring batches
([CLS-CODE] ``Attention.compute_rank_attn``, confirmed in method.md §10). ``L`` is the task loss
on ground truth (pixel cross-entropy of the decode head, ignore index 255).
"""
import contextlib
from typing import Dict, Iterable, Iterator, List, Optional

import torch
from mmengine.dist import all_reduce, get_world_size
from torch import Tensor, nn

from ..models.layers.pm_encoder_layer import PMTransformerEncoderLayer
from ..models.utils.prune_merge import PMConfigError


class AttentionScorer:
    """Accumulates gradient-weighted attention scores of chosen encoder layers.

    Use as a context manager: inside it the layers run their explicit attention path and every
    backward pass adds one batch's ``|v(j)|`` per layer; leaving it removes all hooks, so
    nothing remains at inference.

    Args:
        layers (dict[int, PMTransformerEncoderLayer]): block index -> layer to score.
        num_prefix (int): P, prefix (CLS) tokens, whose key columns are dropped.

    Attributes:
        scores (dict[int, Tensor]): block index -> float64 ``(N,)`` accumulated scores.
        num_batches (int): backward passes seen (per layer).
    """

    def __init__(self, layers: Dict[int, PMTransformerEncoderLayer], num_prefix: int):
        for i, layer in layers.items():
            if not isinstance(layer, PMTransformerEncoderLayer):
                raise TypeError(f'layer {i} is a {type(layer).__name__}; scoring needs '
                                f'PMTransformerEncoderLayer (use the PruneMergeViT backbone)')
        self.layers = layers
        self.num_prefix = num_prefix
        self.scores: Dict[int, Tensor] = {}
        self.num_batches = 0

    def _make_hook(self, index: int):
        def on_attention(attn: Tensor):
            if not attn.requires_grad:
                return

            def on_grad(grad: Tensor):
                b, h, n, _ = attn.shape
                # float64 accumulation: the sum runs over B*H*L terms of both signs
                v = (attn.detach().double() * grad.double()).sum(dim=(0, 1, 2)) / (b * h * n)
                v = v[self.num_prefix:].abs()
                prev = self.scores.get(index)
                self.scores[index] = v if prev is None else prev + v

            attn.register_hook(on_grad)

        return on_attention

    def __enter__(self):
        for i, layer in self.layers.items():
            layer.attn_hook = self._make_hook(i)
        return self

    def __exit__(self, *exc):
        for layer in self.layers.values():
            layer.attn_hook = None
        return False

    def reduce(self) -> Dict[int, Tensor]:
        """Sum the scores over distributed ranks (every rank gets the same result)."""
        if get_world_size() > 1:
            for i in sorted(self.scores):
                all_reduce(self.scores[i], op='sum')
        return self.scores


def score_segmentor(model: nn.Module, data: Iterable, num_iters: int,
                    layers: Optional[List[int]] = None, mode: str = 'train',
                    progress: bool = True) -> Dict[int, Tensor]:
    """Run the scoring pass on an mmseg segmentor whose backbone is ``PruneMergeViT``.

    Each iteration: ``data_preprocessor`` -> ``loss`` (task loss only; distillation is off) ->
    backward of the summed losses; gradients are discarded (no weight update; the official code
    takes optimizer steps at lr 2e-5, a negligible change). Scores are all-reduced across ranks.

    Args:
        model (nn.Module): the segmentor (``EncoderDecoder`` or subclass), unwrapped.
        data (Iterable): yields mmseg data batches (e.g. the train dataloader).
        num_iters (int): number of scoring batches T, >= 1.
        layers (list[int], optional): blocks to score; default: all.
        mode (str): ``'train'`` (official: dropout and drop-path active) or ``'eval'``
            (deterministic scores). Default: ``'train'``.
        progress (bool): show a progress bar. Default: True.

    Returns:
        dict[int, Tensor]: block index -> float64 ``(N,)`` scores, on CPU.

    Raises:
        PMConfigError: ``num_iters < 1`` or unknown mode.
        ValueError: the data is empty.
    """
    if not isinstance(num_iters, int) or num_iters < 1:
        raise PMConfigError(f'score_iters must be an integer >= 1, got {num_iters!r}')
    if mode not in ('train', 'eval'):
        raise PMConfigError(f'score mode must be "train" or "eval", got {mode!r}')
    backbone = model.backbone
    layer_ids = list(range(len(backbone.layers))) if layers is None else list(layers)
    scorer = AttentionScorer({i: backbone.layers[i] for i in layer_ids},
                             num_prefix=int(backbone.with_cls_token))
    was_training = model.training
    model.train(mode == 'train')
    requires = {p: p.requires_grad for p in model.parameters()}
    iterator: Iterator = iter(data)
    bar = _progress(num_iters, 'PM scoring') if progress else contextlib.nullcontext()
    try:
        with scorer, bar as pbar:
            for it in range(num_iters):
                try:
                    batch = next(iterator)
                except StopIteration:
                    if it == 0:
                        raise ValueError('the scoring data is empty')
                    iterator = iter(data)
                    batch = next(iterator)
                batch = model.data_preprocessor(batch, True)
                losses = _task_loss(model, batch)
                loss = sum(v for k, v in losses.items() if 'loss' in k and torch.is_tensor(v))
                loss.backward()
                model.zero_grad(set_to_none=True)
                scorer.num_batches += 1
                if pbar is not None:
                    pbar.update(1)
    finally:
        model.train(was_training)
        for p, r in requires.items():
            p.requires_grad_(r)
    return {i: s.cpu() for i, s in scorer.reduce().items()}


def _task_loss(model, batch) -> dict:
    """Task losses only: the distillation segmentor's ``task_loss``, else ``loss``."""
    fn = getattr(model, 'task_loss', None) or model.loss
    return fn(batch['inputs'], batch['data_samples'])


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit='it', dynamic_ncols=True)
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
