"""The knob of every token-reduction method, and the search for the knob value that meets a
GFLOPs budget (a fraction of the uncompressed model's GFLOPs).

Knobs (one per method; everything else at the repository's configs' settings):

* ``pm`` (Prune-and-Merge): ``keep_rate`` of the global cross-layer structure search, in
  ``[1/N, 1 - prune_rate]`` (``prune_rate`` fixed, 0.1 as ``configs/pm_segmenter_vit-s_ade20k.py``);
  GFLOPs grow with it.
* ``tome`` (ToMe): ``r`` of ToMe's **decreasing** schedule ``(r, -1)`` (``2r`` merges in the
  first block down to 0 in the last, as ``configs/tome_segmenter_vit-s_ade20k.py``), an integer
  in ``[0, N // 2]``; GFLOPs fall as it grows. The reducer config carries the explicit
  per-block list, so it round-trips through JSON.
* ``evit`` (EViT), ``mstm`` (MSTM): ``keep_rate`` in ``[1/N, 1]`` at the drop / reduce blocks
  ``L/4, L/2, 3L/4`` (3, 6, 9 for 12 blocks, the papers' and configs' blocks); GFLOPs grow
  with it.
* ``algm`` (ALGM): the local 2x2 merging ``threshold`` in ``[-1, 1]`` (global step in its
  released block); GFLOPs grow with it. The token count depends on the image, so the GFLOPs
  of a setting are the mean over the validation images.

Search (:func:`search_knob`): both ends of the range first (a target outside them by more than
the tolerance is unreachable, and the row says which end gives what); then a safeguarded
interpolation search on the bracket (linear interpolation between the bracket's ends, clamped
to its inner 90%, bisection after a step that did not halve the bracket), stopping within
``stop_tol`` of the target, at the knob's resolution (integer step, or 1e-4) or after
``max_steps``; the closest evaluated value wins and must be within ``tol`` (default 3%).
Each search uses only its own evaluations, so its result does not depend on what was searched
before (a resumed run finds the same values).
"""
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from ..errors import ConfigError

METHODS = ('pm', 'tome', 'evit', 'algm', 'mstm')
LABELS = dict(pm='Prune-and-Merge', tome='ToMe', evit='EViT', algm='ALGM', mstm='MSTM')
#: Prune-and-Merge's fixed prune rate (the main config's)
PM_PRUNE_RATE = 0.1


def stage_blocks(num_layers: int) -> List[int]:
    """EViT / MSTM reduction blocks for a depth: ``L/4, L/2, 3L/4`` (floored, deduplicated):
    3, 6, 9 for 12 blocks (EViT's ``drop_loc``), 6, 12, 18 for 24, 1, 2, 3 for 4."""
    return sorted({min(num_layers - 1, max(0, k * num_layers // 4)) for k in (1, 2, 3)})


@dataclass(frozen=True)
class Knob:
    """The knob of one method.

    Attributes:
        method (str): one of ``METHODS``.
        name (str): knob name (``keep_rate``, ``r``, ``threshold``).
        lo, hi (float): its range, inclusive.
        integer (bool): integer-valued (ToMe's ``r``).
        increasing (bool): GFLOPs grow with the knob.
        resolution (float): smallest step of a continuous knob.
        make (callable): knob value -> ``token_reduction`` config (None for Prune-and-Merge,
            whose structure comes from the search over scores).
        description (str): one line for the protocol.
    """
    method: str
    name: str
    lo: float
    hi: float
    integer: bool = False
    increasing: bool = True
    resolution: float = 1e-4
    make: Callable = field(default=lambda value: None, compare=False, repr=False)
    description: str = ''

    def quantize(self, value: float):
        """``value`` on the knob's grid (an int, or a multiple of the resolution)."""
        if self.integer:
            return int(round(value))
        return round(round(value / self.resolution) * self.resolution, 10)


def method_knob(method: str, num_layers: int, num_patches: int,
                prune_rate: float = PM_PRUNE_RATE) -> Knob:
    """The :class:`Knob` of ``method`` for a backbone of ``num_layers`` blocks and
    ``num_patches`` (N) patch tokens at the crop.

    Raises:
        ConfigError: unknown method, or a Prune-and-Merge prune rate outside [0, 1).
    """
    n = int(num_patches)
    if method == 'pm':
        if not 0 <= prune_rate < 1:
            raise ConfigError(f'the Prune-and-Merge prune rate must be in [0, 1), got '
                              f'{prune_rate}')
        return Knob('pm', 'keep_rate', 1.0 / n, 1.0 - prune_rate, description=(
            f'keep_rate of the global cross-layer structure search (one unit per block, '
            f'prune_rate {prune_rate:g}, depth discount 0.025, sparse M/R) after the '
            f'gradient-weighted scoring pass on the training split; no finetuning'))
    if method == 'tome':
        def make_tome(r):
            from ..functional.tome import parse_r
            return dict(type='ToMe', r=parse_r((int(r), -1), num_layers),
                        proportional_attention=True)
        return Knob('tome', 'r', 0, max(1, n // 2), integer=True, increasing=False,
                    make=make_tome, description=(
                        "r of ToMe's decreasing schedule (r, -1): 2r merges in the first block "
                        'down to 0 in the last (the explicit per-block list is recorded); '
                        'proportional attention'))
    blocks = stage_blocks(num_layers)
    if method == 'evit':
        return Knob('evit', 'keep_rate', 1.0 / n, 1.0, make=lambda k: dict(
            type='EViT', keep_rate=float(k), drop_blocks=blocks, fuse=True, restore='hold'),
            description=f'keep_rate at blocks {blocks} (inattentive tokens fused, dropped '
                        f"positions restored with their value at the drop: 'hold')")
    if method == 'mstm':
        return Knob('mstm', 'keep_rate', 1.0 / n, 1.0, make=lambda k: dict(
            type='MSTM', keep_rate=float(k), reduce_blocks=blocks, metric='keys',
            weighting='size', proportional_attention=True, fusion=None),
            description=f'crucial-token keep_rate at blocks {blocks} (merge into the most '
                        f'similar crucial token, size-weighted; no multi-scale fusion)')
    if method == 'algm':
        from ..models.reducers.algm import DEFAULT_GLOBAL_BLOCK
        global_block = DEFAULT_GLOBAL_BLOCK.get(num_layers, num_layers // 3)
        return Knob('algm', 'threshold', -1.0, 1.0, make=lambda t: dict(
            type='ALGM', threshold=float(t), local_block=0, global_block=global_block,
            batch_minimum=False), description=(
                f'local 2x2 merging threshold (block 0; global merging in block '
                f'{global_block}); per-image token counts, GFLOPs = mean over the validation '
                f'images at the crop'))
    raise ConfigError(f'unknown method {method!r}; known: {", ".join(METHODS)}')


@dataclass
class SearchResult:
    """The outcome of :func:`search_knob`.

    Attributes:
        target (float): target GFLOPs.
        value: the chosen knob value (the closest evaluated one), None if nothing evaluated.
        gflops (float | None): its GFLOPs.
        reached (bool): within the tolerance.
        reason (str | None): why not, when not reached.
        evaluations (list[tuple]): ``(value, gflops)`` in the order evaluated.
    """
    target: float
    value: object = None
    gflops: Optional[float] = None
    reached: bool = False
    reason: Optional[str] = None
    evaluations: List[Tuple[object, float]] = field(default_factory=list)

    @property
    def error(self) -> Optional[float]:
        """Relative GFLOPs error of the chosen value, ``gflops / target - 1``."""
        return None if self.gflops is None else self.gflops / self.target - 1


def search_knob(evaluate: Callable[[object], float], knob: Knob, target: float,
                tol: float = 0.03, stop_tol: float = 0.01, max_steps: int = 12,
                on_step: Optional[Callable[[object, float], None]] = None) -> SearchResult:
    """Find the knob value whose GFLOPs are closest to ``target`` (see the module docstring).

    Args:
        evaluate (callable): knob value -> GFLOPs (the caller may cache it).
        knob (Knob): the method's knob.
        target (float): target GFLOPs (> 0).
        tol (float): accepted relative error. Default: 0.03.
        stop_tol (float): relative error at which the search stops early. Default: 0.01.
        max_steps (int): interpolation steps after the two ends. Default: 12.
        on_step (callable, optional): called with ``(value, gflops)`` after every evaluation.

    Returns:
        SearchResult: ``reached`` False with a ``reason`` when no value is within ``tol``.
    """
    res = SearchResult(target=float(target))

    def g(x):
        x = knob.quantize(x)
        value = float(evaluate(x))
        res.evaluations.append((x, value))
        if on_step is not None:
            on_step(x, value)
        return x, value

    def rel(v):
        return abs(v / target - 1)

    weak, strong = (knob.hi, knob.lo) if knob.increasing else (knob.lo, knob.hi)
    weak, g_weak = g(weak)
    if rel(g_weak) > stop_tol and g_weak > target:
        strong, g_strong = g(strong)
        if g_strong < target:
            _bracket_search(g, knob, target, (strong, g_strong), (weak, g_weak), stop_tol,
                            max_steps)
    best_x, best_g = min(res.evaluations, key=lambda e: rel(e[1]))
    res.value, res.gflops = best_x, best_g
    res.reached = rel(best_g) <= tol
    if not res.reached:
        name = f'{knob.name}='
        if g_weak <= target:
            res.reason = (f'{name}{weak} (the weakest reduction the knob allows) already gives '
                          f'{g_weak:.4g} GFLOPs, {100 * rel(g_weak):.1f}% below the target '
                          f'{target:.4g}')
        elif best_g > target and best_x == knob.quantize(strong):
            res.reason = (f'{name}{best_x} (the strongest reduction the knob allows) still '
                          f'gives {best_g:.4g} GFLOPs, {100 * rel(best_g):.1f}% above the '
                          f'target {target:.4g}')
        else:
            res.reason = (f'the closest setting {name}{best_x} gives {best_g:.4g} GFLOPs '
                          f'({100 * (best_g / target - 1):+.1f}% from the target '
                          f'{target:.4g}): the knob moves GFLOPs in steps too coarse for '
                          f'+-{100 * tol:g}% here')
    return res


def _bracket_search(g, knob: Knob, target: float, low: tuple, high: tuple, stop_tol: float,
                    max_steps: int) -> None:
    """Safeguarded interpolation between ``low`` (GFLOPs below the target) and ``high``
    (above); every evaluation goes through ``g``."""
    (a, g_a), (b, g_b) = low, high
    bisect = False
    step = 1 if knob.integer else knob.resolution
    for _ in range(max_steps):
        width = abs(b - a)
        if width <= step * (1 + 1e-9):
            return
        t = 0.5 if bisect else (target - g_a) / (g_b - g_a)
        t = min(max(t, 0.05), 0.95)
        x = knob.quantize(a + t * (b - a))
        if x in (a, b):
            x = knob.quantize((a + b) / 2)
            if x in (a, b):
                x = a + step if b > a else a - step
                x = knob.quantize(x)
                if x in (a, b):
                    return
        x, gx = g(x)
        if abs(gx / target - 1) <= stop_tol:
            return
        if gx < target:
            a, g_a = x, gx
        else:
            b, g_b = x, gx
        bisect = abs(b - a) > 0.5 * width


__all__ = ['METHODS', 'LABELS', 'PM_PRUNE_RATE', 'stage_blocks', 'Knob', 'method_knob',
           'SearchResult', 'search_knob']
