"""The one strict check of a checkpoint against a model, before anything runs on it."""
from typing import List, Mapping, NamedTuple, Sequence

from torch import nn

from ..errors import CheckpointMismatchError

#: checkpoint parts a config may leave out without changing what it computes
DROPPABLE_PARTS = ('auxiliary_head.',)


def reducer_prefixes(model: nn.Module) -> tuple:
    """State-dict prefixes of token reducers inside ``model`` (their tensors load through the
    reducer's own checks: Prune-and-Merge units re-shape to the incoming structure and may be
    absent from an uncompressed checkpoint)."""
    from ..models.reducers import TokenReducer
    return tuple(f'{name}.' for name, m in model.named_modules()
                 if isinstance(m, TokenReducer) and name)


class StateDictDiff(NamedTuple):
    """How a checkpoint's tensors differ from a model's (see :func:`diff_state_dict`)."""
    missing: List[str]      # model keys the checkpoint lacks
    unexpected: List[str]   # checkpoint keys the model lacks
    mismatched: List[str]   # 'key: checkpoint (shape) vs model (shape)'

    @property
    def fits(self) -> bool:
        """True when nothing is missing, unexpected or of another shape."""
        return not (self.missing or self.unexpected or self.mismatched)


def diff_state_dict(own: Mapping, state: Mapping, *, free: Sequence[str] = (),
                    droppable: Sequence[str] = ()) -> StateDictDiff:
    """Compare a checkpoint's tensors with a model's, key by key and shape by shape.

    Args:
        own (Mapping): the model's ``state_dict()``.
        state (Mapping): the checkpoint's state dict (same key prefixes as ``own``).
        free (Sequence[str]): key prefixes checked elsewhere (token reducers re-shape to the
            incoming structure and may be absent): never missing, unexpected or mismatched.
        droppable (Sequence[str]): key prefixes the checkpoint may carry beyond the model.

    Returns:
        StateDictDiff: the missing and unexpected keys and the shape mismatches, in model
        order (unexpected keys in checkpoint order).
    """
    free, droppable = tuple(free), tuple(droppable)
    missing = [k for k in own if k not in state and not k.startswith(free)]
    unexpected = [k for k in state if k not in own and not k.startswith(free + droppable)]
    mismatched = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}'
                  for k, v in own.items()
                  if k in state and not k.startswith(free) and hasattr(state[k], 'shape')
                  and tuple(state[k].shape) != tuple(v.shape)]
    return StateDictDiff(missing, unexpected, mismatched)


def check_checkpoint_fits(model: nn.Module, state_dict: Mapping, source: str) -> None:
    """Refuse a checkpoint whose tensors do not fit ``model`` (MMEngine loads ``load_from``
    and ``tools/test.py`` checkpoints with ``strict=False``, which only warns).

    Tensors of token reducers (:func:`reducer_prefixes`) may be absent or of another shape
    (their own load checks apply); auxiliary heads may be dropped.

    Args:
        model (nn.Module): the (unwrapped) segmentor.
        state_dict (Mapping): the checkpoint's state dict (a DDP ``module.`` prefix is allowed).
        source (str): how the message names the checkpoint.

    Raises:
        CheckpointMismatchError: the first missing, unexpected or mismatched tensors, with
            both shapes, and what to do.
    """
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    diff = diff_state_dict(model.state_dict(), state, free=reducer_prefixes(model),
                           droppable=DROPPABLE_PARTS)
    if diff.fits:
        return
    missing, unexpected, mismatched = diff
    if any(k.startswith('backbone.pm.') for k in unexpected):
        hint = ('It carries a Prune-and-Merge structure (backbone.pm.*): use it with the pm_ '
                'config it was compressed with.')
    elif any(k.startswith('backbone.token_reduction.') for k in unexpected):
        hint = 'It carries token-reduction parameters: use the config it was trained with.'
    else:
        hint = 'Use a checkpoint of the architecture this config builds.'
    raise CheckpointMismatchError(
        f'{source} does not fit the config: '
        + (f'{len(mismatched)} shape mismatches, e.g. {"; ".join(mismatched[:3])}. '
           if mismatched else '')
        + (f'{len(missing)} missing tensors, e.g. {", ".join(missing[:3])}. '
           if missing else '')
        + (f'{len(unexpected)} unexpected tensors, e.g. {", ".join(unexpected[:3])}. '
           if unexpected else '') + hint)


def fitting_state_dict(model: nn.Module, state_dict: Mapping, source: str) -> dict:
    """``state_dict`` checked by :func:`check_checkpoint_fits`, without a DDP ``module.``
    prefix and without the parts the model does not have (auxiliary heads), ready for
    ``model.load_state_dict(..., strict=True)``.

    Raises:
        CheckpointMismatchError: as :func:`check_checkpoint_fits`.
    """
    check_checkpoint_fits(model, state_dict, source)
    own = model.state_dict()
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    return {k: v for k, v in state.items()
            if k in own or not k.startswith(DROPPABLE_PARTS)}


__all__ = ['StateDictDiff', 'diff_state_dict', 'check_checkpoint_fits', 'fitting_state_dict',
           'reducer_prefixes']
