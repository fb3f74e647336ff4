"""Accuracy of a segmentor on validation images, against the ground truth (mIoU) and against a
reference model's predictions (pixel agreement, KL divergence of the logits).

Every image goes through the config's own test pipeline and inference (``model.test_step``:
mmseg's data pre-processor, ``test_cfg`` whole or slide inference, logits resized to the
original image), one image at a time.

* **mIoU** (%): mmseg's ``IoUMetric`` semantics: per image, the intersection / union
  histograms of the labelled pixels (label != ``ignore_index``) at the original resolution
  (``IoUMetric.intersect_and_union``), summed over the images; per-class IoU =
  intersection / union, classes with an empty union are NaN and left out of the mean
  (``IoUMetric.total_area_to_metrics`` + ``nanmean``). Not rounded (``IoUMetric`` rounds to
  two decimals). ``aAcc`` (%) as there.
* **Agreement** (fraction in [0, 1]): labelled pixels (same mask as the mIoU) where the
  model's and the reference's predicted classes (argmax of the logits at the original
  resolution) are equal, over all labelled pixels of all images.
* **KL** (nats per position): ``KL(p_ref || p_model) = sum_k p_ref,k (log p_ref,k -
  log p_model,k)`` of the class softmax at **the decode head's output resolution** (the
  tensor its ``forward`` returns, before mmseg resizes it: 1/16 of the crop for Segmenter's
  mask head, 1/4 for UPerNet), at every position of every inference window (every slide crop,
  or the whole image), labelled or not; the mean over all positions of all images.
"""
import contextlib
import copy
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import DataError, UserError
from ..utils.preflight import check_dataset

METRIC_DEFINITIONS = dict(
    miou="mIoU (%) with mmseg's IoUMetric semantics (labelled pixels at the original "
         'resolution, histograms summed over the images, NaN classes left out of the mean; '
         'not rounded)',
    agreement='fraction of labelled pixels (original resolution) whose predicted class equals '
              "the uncompressed model's",
    kl="mean KL(uncompressed || compressed) in nats of the class softmax per position at the "
       "decode head's output resolution (before mmseg's resize), over every inference window "
       '(slide crop or whole image) of every image, labelled or not',
)


@dataclass
class EvalData:
    """Validation samples, decoded once and reused by every model.

    Attributes:
        samples (list[dict]): packed samples of the config's test pipeline (``inputs`` uint8
            ``(3, H, W)``, ``data_samples`` with ``gt_sem_seg`` at the original size).
        classes (tuple[str]): the dataset's class names (their number is the IoU's).
        ignore_index (int): label excluded from every metric.
        names (list[str]): image file names, in order.
    """
    samples: List[dict]
    classes: tuple
    ignore_index: int = 255
    names: List[str] = field(default_factory=list)


def load_eval_data(cfg, num_images: Optional[int] = None, split: str = 'val',
                   ignore_index: int = 255) -> EvalData:
    """The first ``num_images`` images (all when None) of the config's ``<split>_dataloader``
    dataset, through its own pipeline.

    Raises:
        UserError / DataError: no such dataset in the config, missing data, or no images.
    """
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    dataset_cfg = copy.deepcopy((cfg.get(f'{split}_dataloader') or {}).get('dataset'))
    if not dataset_cfg:
        raise UserError(f'the config has no {split}_dataloader.dataset to evaluate on')
    check_dataset(dataset_cfg, split)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    dataset = DATASETS.build(dataset_cfg)
    if len(dataset) == 0:
        raise DataError(f'the {split} dataset under {dataset_cfg.get("data_root")} has no images')
    n = len(dataset) if num_images is None else min(int(num_images), len(dataset))
    samples = [dataset[i] for i in range(n)]
    names = [s['data_samples'].metainfo.get('img_path', str(i)).rsplit('/', 1)[-1]
             for i, s in enumerate(samples)]
    evaluator = cfg.get(f'{split}_evaluator') or {}
    if isinstance(evaluator, dict):
        ignore_index = evaluator.get('ignore_index', ignore_index)
    return EvalData(samples, tuple(dataset.metainfo['classes']), ignore_index, names)


@contextlib.contextmanager
def capture_head_logits(model: nn.Module) -> Iterator[List[Tensor]]:
    """Collect every output of ``model.decode_head.forward`` while inside (one per inference
    window): float32 CPU tensors ``(B, K, h, w)`` at the head's own resolution.

    The head's ``predict`` calls ``self.forward`` directly (module hooks would not fire), so the
    instance's ``forward`` is wrapped for the duration and restored after.
    """
    head = model.decode_head
    store: List[Tensor] = []
    original = head.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        if torch.is_tensor(out):
            store.append(out.detach().float().cpu())
        return out

    head.forward = forward
    try:
        yield store
    finally:
        del head.forward


def predict_sample(model: nn.Module, sample: dict):
    """Run ``model.test_step`` on one packed sample (its data sample is copied, so a sample
    can be reused by every model).

    Returns:
        tuple: predicted classes ``(H, W)`` LongTensor and labels ``(H, W)`` LongTensor at the
        original resolution, and the list of the decode head's logits ``(1, K, h, w)`` per
        inference window.
    """
    data = dict(inputs=[sample['inputs']],
                data_samples=[copy.deepcopy(sample['data_samples'])])
    with torch.no_grad(), capture_head_logits(model) as windows:
        out = model.test_step(data)[0]
    pred = out.pred_sem_seg.data.squeeze(0).long().cpu()
    label = out.gt_sem_seg.data.squeeze(0).long().cpu()
    return pred, label, list(windows)


@dataclass
class Reference:
    """The reference model's outputs per image: predicted classes (int16 ``(H, W)``) and the
    log-softmax of its head logits per inference window (float32 ``(1, K, h, w)``)."""
    preds: List[Tensor] = field(default_factory=list)
    log_probs: List[List[Tensor]] = field(default_factory=list)


class SegEvaluation:
    """Accumulates mIoU histograms, agreement counts and KL sums over images.

    Args:
        num_classes (int): K.
        ignore_index (int): label excluded from mIoU and agreement. Default: 255.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.areas = [torch.zeros(self.num_classes, dtype=torch.float64) for _ in range(4)]
        self.agree = self.labelled = 0
        self.kl_sum, self.kl_count = 0.0, 0
        self.images = 0

    def add(self, pred: Tensor, label: Tensor, ref_pred: Optional[Tensor] = None,
            windows: Optional[List[Tensor]] = None,
            ref_log_probs: Optional[List[Tensor]] = None) -> None:
        """Add one image: ``pred`` / ``label`` / ``ref_pred`` ``(H, W)``; ``windows`` the model's
        head logits and ``ref_log_probs`` the reference's log-softmax, one ``(1, K, h, w)`` per
        inference window.

        Raises:
            ValueError: the model's and the reference's windows differ in number or shape.
        """
        from mmseg.evaluation.metrics import IoUMetric
        areas = IoUMetric.intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        for total, area in zip(self.areas, areas):
            total += area.double()
        self.images += 1
        mask = label != self.ignore_index
        if ref_pred is not None:
            self.agree += int((pred[mask] == ref_pred.long()[mask]).sum())
            self.labelled += int(mask.sum())
        if windows is not None and ref_log_probs is not None:
            if len(windows) != len(ref_log_probs):
                raise ValueError(f'{len(windows)} inference windows vs the reference\'s '
                                 f'{len(ref_log_probs)}')
            for logits, ref in zip(windows, ref_log_probs):
                if logits.shape != ref.shape:
                    raise ValueError(f'head logits {tuple(logits.shape)} vs the reference\'s '
                                     f'{tuple(ref.shape)}')
                # the same float32 log-softmax as the reference's, then float64 sums
                log_q = torch.log_softmax(logits, dim=1).double()
                ref = ref.double()
                kl = (ref.exp() * (ref - log_q)).sum(dim=1)
                self.kl_sum += float(kl.sum())
                self.kl_count += kl.numel()

    def result(self) -> dict:
        """``miou`` and ``aacc`` (%), ``agreement`` (fraction), ``kl`` (nats), ``images``,
        ``labelled_pixels``, ``kl_positions`` (None where nothing was measured)."""
        from mmseg.evaluation.metrics import IoUMetric
        metrics = IoUMetric.total_area_to_metrics(*self.areas, ['mIoU'])
        with np.errstate(invalid='ignore'):
            iou = metrics['IoU']
            miou = float(np.nanmean(iou)) * 100 if np.isfinite(iou).any() else None
        aacc = float(metrics['aAcc']) * 100 if np.isfinite(metrics['aAcc']) else None
        return dict(miou=miou, aacc=aacc,
                    agreement=self.agree / self.labelled if self.labelled else None,
                    kl=self.kl_sum / self.kl_count if self.kl_count else None,
                    images=self.images, labelled_pixels=self.labelled or None,
                    kl_positions=self.kl_count or None)


def evaluate_segmentor(model: nn.Module, data: EvalData, reference: Optional[Reference] = None,
                       keep_reference: bool = False, progress: bool = True,
                       desc: str = 'evaluate'):
    """Evaluate ``model`` on every sample of ``data``.

    Args:
        model (nn.Module): an mmseg segmentor in eval mode.
        data (EvalData): the samples.
        reference (Reference, optional): the uncompressed model's outputs, for agreement and
            KL (None: both None).
        keep_reference (bool): also return this model's outputs as a :class:`Reference`.
        progress (bool): tqdm bar over the images.
        desc (str): the bar's label.

    Returns:
        tuple: (metrics dict of :meth:`SegEvaluation.result`, Reference or None).
    """
    acc = SegEvaluation(len(data.classes), data.ignore_index)
    own = Reference() if keep_reference else None
    bar = tqdm(data.samples, desc=desc, unit='img', disable=not progress, dynamic_ncols=True,
               leave=False)
    for i, sample in enumerate(bar):
        pred, label, windows = predict_sample(model, sample)
        if reference is not None:
            acc.add(pred, label, reference.preds[i], windows, reference.log_probs[i])
        else:
            acc.add(pred, label)
        if own is not None:
            own.preds.append(pred.to(torch.int16))
            own.log_probs.append([torch.log_softmax(w, dim=1) for w in windows])
    bar.close()
    return acc.result(), own


__all__ = ['METRIC_DEFINITIONS', 'EvalData', 'load_eval_data', 'capture_head_logits',
           'predict_sample', 'Reference', 'SegEvaluation', 'evaluate_segmentor']
