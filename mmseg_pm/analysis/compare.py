"""Token-reduction methods compared on one uncompressed model at equal GFLOPs budgets,
training-free (``tools/analysis_tools/compare_methods.py``).

For every method and budget ``b`` (a fraction of the uncompressed GFLOPs) the method's knob is
searched until its GFLOPs are within the tolerance of ``b x`` the uncompressed GFLOPs
(:mod:`.knobs`), the compressed model is built from the same weights (Prune-and-Merge: one
scoring pass on the config's training split, then the global structure search per budget),
and on the validation split it is measured: mIoU, agreement with and KL divergence from the
uncompressed model (:mod:`.evaluate`), GFLOPs (:mod:`.flops`, reduction ops counted) and
latency interleaved with the uncompressed model (:func:`.benchmark.run_benchmark`, fused
attention, one batch size, fp32). Every row is written to ``compare.json`` (atomically) as
soon as it is measured, so an interrupted run keeps its rows and ``resume=True`` skips them.
"""
import json
import os
import os.path as osp
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional, Sequence

from tqdm import tqdm

from ..errors import MMSegPMError, UserError
from ..models.backbones import reduction_backbone
from ..utils.cli import check_writable_dir, one_line
from ..utils.preflight import check_dataset, set_data_root
from .benchmark import BenchmarkSpec, machine_info, run_benchmark
from .build import (build_segmentor, check_plain_vit, default_input_shape, load_config,
                    load_images, preprocess, segmentor_cfg, variant_cfg)
from .compare_report import compare_table, write_outputs
from .evaluate import METRIC_DEFINITIONS, evaluate_segmentor, load_eval_data
from .flops import CONVENTION, count_flops, gflops
from .knobs import LABELS, METHODS, PM_PRUNE_RATE, method_knob, search_knob
from .methods import MethodModel, build_method_model

FORMAT = 'mmseg_pm.compare_methods/1'
#: test hook: stop the process (exit code 75, no clean-up, like a kill) after this many rows
#: were written by this run
STOP_ENV = 'MMSEG_PM_COMPARE_STOP_AFTER'
#: the settings a resumed run must share with the file it continues
RESUME_KEYS = ('config', 'checkpoint', 'cfg_options', 'data_root', 'val_images', 'flops_images',
               'batch_size', 'score_iters', 'pm_prune_rate', 'tolerance', 'device', 'warmup',
               'iters', 'repeat', 'seed')


@dataclass
class CompareSettings:
    """What to compare and how (the command line of ``compare_methods.py``).

    Attributes:
        config, checkpoint (str): the uncompressed model (backbone: a plain ViT).
        out_dir (str): where ``compare.json`` / ``.md`` / ``.png`` go.
        methods (tuple[str]): subset of ``METHODS``.
        budgets (tuple[float]): fractions of the uncompressed GFLOPs, in (0, 1).
        val_images (int | None): first N validation images (None: all).
        flops_images (int): the first N of them, resized to the crop, are the images the
            GFLOPs (per-image methods: their mean), the knob search and the latency batch
            use; the others are only evaluated, so memory does not grow with the
            validation set. Default: 8.
        batch_size (int): latency batch size B.
        score_iters (int): Prune-and-Merge scoring batches T. Default: 102 (official).
        pm_prune_rate (float): Prune-and-Merge's fixed prune rate. Default: 0.1.
        tolerance (float): accepted relative GFLOPs error. Default: 0.03.
        cfg_options (dict | None), data_root (str | None): config overrides.
        device (str): 'cpu' or 'cuda[:N]'.
        warmup, iters, repeat (int): latency protocol (:class:`BenchmarkSpec`).
        seed (int): seed of the scoring pass (its data order, augmentation, drop-path).
        resume (bool): continue ``out_dir/compare.json``.
        plot_metric (str): 'miou' or 'agreement' (the y axis of the plot).
        progress (bool): tqdm bars.

    Raises:
        UserError: a value out of range (one line naming it).
    """
    config: str
    checkpoint: str
    out_dir: str
    methods: Sequence[str] = METHODS
    budgets: Sequence[float] = (0.8, 0.7, 0.6)
    val_images: Optional[int] = None
    flops_images: int = 8
    batch_size: int = 1
    score_iters: int = 102
    pm_prune_rate: float = PM_PRUNE_RATE
    tolerance: float = 0.03
    cfg_options: Optional[dict] = None
    data_root: Optional[str] = None
    device: str = 'cpu'
    warmup: int = 2
    iters: int = 5
    repeat: int = 2
    seed: int = 0
    resume: bool = False
    plot_metric: str = 'miou'
    progress: bool = True

    def __post_init__(self):
        self.methods = tuple(dict.fromkeys(self.methods))
        self.budgets = tuple(dict.fromkeys(float(b) for b in self.budgets))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UserError(f'--methods takes some of {" ".join(METHODS)}, got '
                            f'{" ".join(unknown) or "nothing"}')
        bad = [b for b in self.budgets if not 0 < b < 1]
        if bad or not self.budgets:
            raise UserError(f'--gflops takes fractions of the uncompressed GFLOPs in (0, 1), '
                            f'got {bad[0] if bad else "nothing"}')
        for name, low in (('val_images', 1), ('flops_images', 1), ('batch_size', 1),
                          ('score_iters', 1),
                          ('iters', 1), ('repeat', 1), ('warmup', 0)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                raise UserError(f'--{name.replace("_", "-")} must be an integer >= {low}, '
                                f'got {value!r}')
        if not 0 <= self.pm_prune_rate < 1:
            raise UserError(f'--pm-prune-rate must be in [0, 1), got {self.pm_prune_rate}')
        if not 0 < self.tolerance < 0.5:
            raise UserError(f'--tolerance must be in (0, 0.5), got {self.tolerance}')
        if str(self.device).startswith('cuda'):
            import torch
            if not torch.cuda.is_available():
                raise UserError(f'--device {self.device}: no CUDA device is visible')
        if self.plot_metric not in ('miou', 'agreement'):
            raise UserError(f'--plot takes miou or agreement, got {self.plot_metric!r}')

    def resume_key(self) -> dict:
        """The settings a resumed run must share, JSON-normalised (absolute paths)."""
        d = {k: getattr(self, k) for k in RESUME_KEYS}
        d['config'], d['checkpoint'] = osp.abspath(self.config), osp.abspath(self.checkpoint)
        d['data_root'] = osp.abspath(self.data_root) if self.data_root else None
        return json.loads(json.dumps(d, default=str))


def row_key(method: str, budget: float) -> str:
    """``'tome@0.7'``: the row's identity in ``compare.json``."""
    return f'{method}@{budget:g}'


def versions() -> dict:
    """Versions of Python and the stack, for the protocol."""
    import matplotlib
    import mmengine
    import mmseg
    import numpy
    import torch

    from ..version import __version__
    out = dict(python=platform.python_version(), torch=torch.__version__,
               mmengine=mmengine.__version__, mmseg=mmseg.__version__,
               numpy=numpy.__version__, matplotlib=matplotlib.__version__, mmseg_pm=__version__)
    try:
        import mmcv
        out['mmcv'] = mmcv.__version__
    except ImportError:  # pragma: no cover
        out['mmcv'] = None
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec='seconds')


class Comparison:
    """One run of the comparison. :meth:`prepare` checks everything and writes nothing (a
    refused run leaves nothing behind); :meth:`run` measures and writes the rows.

    Row fields (``compare.json`` ``rows``): ``key``, ``method``, ``label``, ``budget``,
    ``target_gflops``, ``status`` (``'ok'``, ``'unreachable'``, ``'unsupported'``,
    ``'failed'``), ``reason``, ``knob`` (``name``, ``value``, ``range``, ``evaluations``:
    ``[value, GFLOPs]`` pairs of the search), ``token_reduction`` or ``pm``, ``gflops``
    (per image), ``gflops_fraction`` (of the uncompressed), ``gflops_error`` (relative to the
    target), ``gflops_per_image`` (per-image methods: mean, min, max, n), ``tokens`` (per
    block, static methods), ``miou`` / ``aacc`` (%), ``agreement`` (fraction), ``kl`` (nats),
    ``images``, ``latency_ms`` (median, q25, q75, iqr, mean, min, n; ms per forward of the
    batch), ``reference_latency_ms`` (the uncompressed model in the same interleaved run),
    ``speedup``, ``throughput_img_s``, ``session``, ``seconds``, ``measured_at``.

    Args:
        settings (CompareSettings): what to run.
        log (callable): progress messages. Default: ``tqdm.write`` (keeps the bars intact).
    """

    def __init__(self, settings: CompareSettings, log: Callable[[str], None] = tqdm.write):
        self.s = settings
        self.log = log
        self.doc = None
        self.reference = None
        self.written = 0

    # -- preparation (no output) -----------------------------------------------------------
    def prepare(self) -> None:
        """Read the config, check the backbone, the output folder, an earlier result
        (``resume``), the checkpoint (strict), the data; count the uncompressed GFLOPs.

        Raises:
            UserError and subclasses: anything the user must fix (one line).
        """
        s = self.s
        check_writable_dir(s.out_dir, '--out')
        self.json_path = osp.join(s.out_dir, 'compare.json')
        previous = self._previous()
        self.cfg = cfg = load_config(s.config, s.cfg_options)
        if s.data_root:
            set_data_root(cfg, s.data_root)
        self.model_cfg = segmentor_cfg(cfg)
        check_plain_vit(self.model_cfg, s.config)
        self.scope = cfg.get('default_scope', 'mmseg')
        self.plain = build_segmentor(variant_cfg(self.model_cfg, 'plain'), s.checkpoint,
                                     s.device, self.scope)
        self.data = load_eval_data(cfg, s.val_images)
        done = {r['key'] for r in (previous or {}).get('rows', [])}
        if 'pm' in s.methods and any(row_key('pm', b) not in done for b in s.budgets):
            check_dataset((cfg.get('train_dataloader') or {}).get('dataset'), 'train')
        self.crop = default_input_shape(self.plain, cfg)
        # the images at the crop, for GFLOPs, knob search and latency: a few, not the whole
        # validation set (about 3 MB each in float at 512x512)
        num = min(len(self.data.samples), max(s.flops_images, s.batch_size))
        self.images = preprocess(self.plain, load_images(cfg, num, self.crop, split='val'))
        backbone = reduction_backbone(self.plain)
        grid = backbone.grid_size
        self.num_layers, self.num_patches = len(backbone.layers), grid[0] * grid[1]
        self.base = count_flops(self.plain, inputs=self.images[:1])
        self.base_gflops = gflops(self.base['flops']['total'])
        self.doc = previous or self._new_doc()

    def _previous(self) -> Optional[dict]:
        if not osp.exists(self.json_path):
            return None
        if not self.s.resume:
            raise UserError(f'{self.json_path} exists (an earlier comparison): --resume '
                            f'continues it and skips the rows it holds; or choose another --out')
        try:
            with open(self.json_path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f'--resume: cannot read {self.json_path}: {e}') from None
        if not isinstance(doc, dict) or doc.get('format') != FORMAT:
            raise UserError(f'--resume: {self.json_path} is not a compare_methods result')
        before, now = doc['protocol']['settings'], self.s.resume_key()
        for key in RESUME_KEYS:
            if before.get(key) != now[key]:
                raise UserError(f'--resume: {self.json_path} was measured with {key}='
                                f'{before.get(key)!r}, this run has {now[key]!r}; use the same '
                                f'settings, or another --out')
        return doc

    def _new_doc(self) -> dict:
        s, h, w = self.s, self.crop[0], self.crop[1]
        knobs = {m: method_knob(m, self.num_layers, self.num_patches, s.pm_prune_rate)
                 for m in METHODS}
        test_cfg = self.model_cfg.get('test_cfg') or {}
        protocol = dict(
            tool='tools/analysis_tools/compare_methods.py', settings=s.resume_key(),
            config=osp.abspath(s.config), checkpoint=osp.abspath(s.checkpoint),
            crop=[h, w], num_layers=self.num_layers, num_patches=self.num_patches,
            training_free=True,
            budget=f'target = budget x uncompressed GFLOPs, reached when |GFLOPs / target - 1| '
                   f'<= {s.tolerance:g}',
            gflops=f'{CONVENTION}; reduction (merge / restore) ops counted; at the crop {h}x{w}; '
                   f'per-image methods (ALGM): mean over the first {s.flops_images} validation '
                   f'images resized to the crop',
            knobs={m: f'{k.name} in [{k.lo:g}, {k.hi:g}]: {k.description}'
                   for m, k in knobs.items()},
            search='both ends of the knob range, then safeguarded interpolation on the bracket '
                   'until within 1% (or the knob resolution, or 12 steps); the closest value '
                   'evaluated is taken',
            val=dict(split='val', images=len(self.data.samples), names=self.data.names,
                     data_root=self.cfg.val_dataloader.dataset.get('data_root'),
                     test_cfg=json.loads(json.dumps(test_cfg, default=str)),
                     ignore_index=self.data.ignore_index, num_classes=len(self.data.classes)),
            metrics=dict(METRIC_DEFINITIONS),
            latency=dict(forward="tensor-mode forward (model(inputs, mode='tensor')), fused "
                                 'attention, eval, no_grad',
                         images='validation images resized to the crop',
                         batch=s.batch_size, precision='fp32', device=s.device,
                         warmup=s.warmup, iters=s.iters, repeat=s.repeat,
                         order='each method ABBA-interleaved with the uncompressed model in its '
                               'own run; the uncompressed row timed alone'),
            pm=dict(score_iters=s.score_iters, score_mode='train', split='train', seed=s.seed,
                    prune_rate=s.pm_prune_rate, allocation='global', depth_discount=0.025),
            versions=versions(), sessions=[])
        return dict(format=FORMAT, protocol=protocol, uncompressed_gflops=self.base_gflops,
                    rows=[], updated_at=_now())

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        """Measure every missing row (writing each as it comes) and return the document."""
        s, doc = self.s, self.doc
        started = time.time()
        doc['protocol']['sessions'].append(dict(
            started_at=_now(), machine=machine_info(s.device), versions=versions(),
            methods=list(s.methods), budgets=list(s.budgets)))
        self.session = len(doc['protocol']['sessions']) - 1
        done = {r['key'] for r in doc['rows']}
        if done:
            self.log(f'resume: {len(done)} rows already in {self.json_path} are kept and '
                     f'skipped: {", ".join(sorted(done))}')
        self.log(f'uncompressed: {self.base_gflops:.4g} GFLOPs per image at '
                 f'{self.crop[0]}x{self.crop[1]}; {len(self.data.samples)} validation images')
        todo = {m: [b for b in s.budgets if row_key(m, b) not in done] for m in s.methods}
        self.bar = tqdm(total=sum(map(len, todo.values())) + ('uncompressed' not in done),
                        desc='rows', unit='row', disable=not s.progress, dynamic_ncols=True)
        try:
            if 'uncompressed' not in done:
                self._add(self._uncompressed_row())
            for method, budgets in todo.items():
                if not budgets:
                    continue
                try:
                    mm = self._method_model(method)
                except MMSegPMError as e:
                    for b in budgets:
                        self._add(self._row(method, b, status='unsupported',
                                            reason=one_line(e)))
                    continue
                for budget in budgets:
                    self._add(self._method_row(mm, budget))
                del mm
        finally:
            self.bar.close()
        doc['protocol']['sessions'][-1].update(finished_at=_now(),
                                               seconds=round(time.time() - started, 1))
        self._write()
        self.log(compare_table(doc['rows']))
        return doc

    def _write(self) -> None:
        self.doc['updated_at'] = _now()
        write_outputs(self.doc, self.s.out_dir, self.s.plot_metric)

    def _add(self, row: dict) -> None:
        self.doc['rows'] = [r for r in self.doc['rows'] if r['key'] != row['key']] + [row]
        self._write()
        self.written += 1
        self.bar.update(1)
        stop = os.environ.get(STOP_ENV)
        if stop and self.written >= int(stop):
            self.log(f'{STOP_ENV}={stop}: stopping after {self.written} rows (simulated '
                     f'interruption)')
            os._exit(75)

    def _row(self, method: str, budget: Optional[float], **fields) -> dict:
        row = dict(key=fields.pop('key', None) or row_key(method, budget),
                   method=method, label=LABELS.get(method, method), budget=budget,
                   target_gflops=self.base_gflops * budget,
                   status='ok', reason=None, session=self.session, measured_at=_now())
        row.update(fields)
        return row

    def _latency(self, name: Optional[str] = None, model=None) -> dict:
        s = self.s
        models = {'uncompressed': self.plain}
        if model is not None:
            models[name] = model
        spec = BenchmarkSpec(batch_sizes=(s.batch_size, ), precisions=('fp32', ),
                             warmup=s.warmup, iters=s.iters, repeat=s.repeat, device=s.device,
                             reduction_iters=0, progress=s.progress)
        x = self.images[:s.batch_size]
        result = run_benchmark(models, {n: x for n in models}, spec, roles={
            n: 'uncompressed' if n == 'uncompressed' else 'compressed' for n in models})
        rows = {r['name']: r for r in result['rows']}
        mine, ref = rows[name or 'uncompressed'], rows['uncompressed']
        return dict(latency_ms=mine['latency_ms'], throughput_img_s=mine['throughput_img_s'],
                    reference_latency_ms=ref['latency_ms'] if model is not None else None,
                    speedup=mine['speedup'])

    def _reference_outputs(self):
        if self.reference is None:
            _, self.reference = evaluate_segmentor(self.plain, self.data, keep_reference=True,
                                                   progress=self.s.progress,
                                                   desc='uncompressed (reference)')
        return self.reference

    def _uncompressed_row(self) -> dict:
        t0 = time.time()
        metrics, self.reference = evaluate_segmentor(
            self.plain, self.data, keep_reference=True, progress=self.s.progress,
            desc='uncompressed')
        metrics.update(agreement=1.0, kl=0.0)  # by definition
        row = self._row('uncompressed', 1.0, key='uncompressed',
                        knob=None, token_reduction=None, gflops=self.base_gflops,
                        gflops_fraction=1.0, gflops_error=0.0, gflops_per_image=None,
                        tokens=None, **metrics, **self._latency())
        row.update(seconds=round(time.time() - t0, 1))
        return row

    def _method_model(self, method: str) -> MethodModel:
        s = self.s
        if method == 'pm':
            self.log(f'pm: scoring pass, {s.score_iters} training batches')
        knob = method_knob(method, self.num_layers, self.num_patches, s.pm_prune_rate)
        return build_method_model(knob, self.model_cfg, s.checkpoint, self.cfg,
                                  self.images[:s.flops_images],
                                  device=s.device, scope=self.scope,
                                  score_iters=s.score_iters, prune_rate=s.pm_prune_rate,
                                  seed=s.seed, progress=s.progress)

    def _method_row(self, mm: MethodModel, budget: float) -> dict:
        s, knob, method = self.s, mm.knob, mm.knob.method
        t0 = time.time()
        target = budget * self.base_gflops
        bar = tqdm(desc=f'search {row_key(method, budget)}', unit='eval', leave=False,
                   disable=not s.progress, dynamic_ncols=True)

        def step(value, g):
            bar.update(1)
            bar.set_postfix_str(f'{knob.name}={value:g}: {g:.4g} GFLOPs')

        try:
            res = search_knob(mm.gflops, knob, target, tol=s.tolerance, on_step=step)
        except MMSegPMError as e:
            return self._row(method, budget, status='failed', reason=one_line(e))
        finally:
            bar.close()
        knob_info = dict(name=knob.name, value=res.value, range=[knob.lo, knob.hi],
                         evaluations=[list(e) for e in res.evaluations])
        fields = dict(knob=knob_info, gflops=res.gflops, gflops_fraction=res.gflops /
                      self.base_gflops, gflops_error=res.error)
        if not res.reached:
            self.log(f'{row_key(method, budget)}: unreachable: {res.reason}')
            return self._row(method, budget, status='unreachable', reason=res.reason,
                             seconds=round(time.time() - t0, 1), **fields)
        self.log(f'{row_key(method, budget)}: {knob.name}={res.value:g} -> {res.gflops:.4g} '
                 f'GFLOPs = {100 * res.gflops / self.base_gflops:.1f}% of the uncompressed '
                 f'(target {target:.4g}, {100 * res.error:+.2f}%; {len(res.evaluations)} '
                 f'evaluations)')
        try:
            fields.update(mm.configure(res.value))
            count = mm.counts[res.value]
            fields.update(gflops_per_image=count['per_image'], tokens=count['tokens'])
            metrics, _ = evaluate_segmentor(mm.model, self.data, self._reference_outputs(),
                                            progress=s.progress,
                                            desc=f'evaluate {row_key(method, budget)}')
            fields.update(metrics)
            fields.update(self._latency(row_key(method, budget), mm.model))
        except MMSegPMError as e:
            return self._row(method, budget, status='failed', reason=one_line(e),
                             seconds=round(time.time() - t0, 1), **fields)
        return self._row(method, budget, seconds=round(time.time() - t0, 1), **fields)


def run_comparison(settings: CompareSettings,
                   log: Callable[[str], None] = tqdm.write) -> dict:
    """:meth:`Comparison.prepare` then :meth:`Comparison.run`; returns the document.

    Raises:
        UserError and subclasses: bad input, before anything is written.
    """
    comparison = Comparison(settings, log)
    comparison.prepare()
    return comparison.run()


__all__ = ['FORMAT', 'STOP_ENV', 'RESUME_KEYS', 'CompareSettings', 'Comparison', 'row_key',
           'versions', 'run_comparison']
