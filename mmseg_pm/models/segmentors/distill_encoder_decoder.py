"""``PMDistillEncoderDecoder``: self-distillation finetuning of a compressed segmentor."""
import copy
from typing import Optional

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.utils import add_prefix
from torch import Tensor

NORMALIZATIONS = ('numel', 'pixel')


def distill_kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 20.0,
                    alpha: float = 1.0, normalize: str = 'numel') -> Tensor:
    """Soft KD per pixel: ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T))``.

    Official recipe (NUST-Machine-Intelligence-Laboratory/prune_and_merge ``pm-vit/losses.py``
    ``DistillationLoss``, soft distillation): alpha 1.0, T 20, the summed KL divided by the
    number of elements (``'numel'``: ``B * classes * H * W``, as the classification code's
    ``B * classes``). ``'pixel'`` divides by ``B * H * W`` (per-pixel batch-mean KL, the usual
    KD scale, ``classes`` times stronger).

    Args:
        student_logits (Tensor): ``(B, classes, H, W)``.
        teacher_logits (Tensor): ``(B, classes, H, W)``, no gradient needed.
        temperature (float): T > 0. Default: 20.
        alpha (float): weight. Default: 1.0.
        normalize (str): ``'numel'`` or ``'pixel'``. Default: ``'numel'``.

    Returns:
        Tensor: scalar loss; 0 when the logits are equal.

    Raises:
        ValueError: shape mismatch, T <= 0 or unknown normalisation.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f'student logits {tuple(student_logits.shape)} and teacher logits '
                         f'{tuple(teacher_logits.shape)} differ')
    if temperature <= 0:
        raise ValueError(f'temperature must be > 0, got {temperature}')
    if normalize not in NORMALIZATIONS:
        raise ValueError(f'normalize must be one of {NORMALIZATIONS}, got {normalize!r}')
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = F.kl_div(log_s, log_t, reduction='sum', log_target=True)
    denom = student_logits.numel() if normalize == 'numel' else (
        student_logits.numel() // student_logits.shape[1])
    return alpha * t * t * kl / denom


@MODELS.register_module()
class PMDistillEncoderDecoder(EncoderDecoder):
    """mmseg ``EncoderDecoder`` trained with self-distillation from its uncompressed self.

    Mao et al., "Prune and Merge", IEEE TMM 2025 (arXiv 2503.23455): finetuning with
    self-distillation from the uncompressed model. Works for any token reducer: the teacher is
    the model as it was before the compression step (or before a reducer was switched on).

    Modifications to ``EncoderDecoder``:

    * :meth:`init_teacher` freezes a copy of the current model, token reduction off, as the
      teacher: eval mode, no gradients, not a submodule, so it is neither in ``state_dict()``
      nor in ``parameters()`` (checkpoints and the optimizer hold only the student);
      ``PMCompressHook`` calls it right before compressing, ``SelfDistillationHook`` before
      training with any other reducer; both carry the teacher's weights in training
      checkpoints (``checkpoint['pm_teacher']``) for ``--resume``;
    * :meth:`loss` adds ``loss_kd`` (:func:`distill_kl_loss`) between the student's and the
      teacher's decode-head logits at the decode head's resolution (before upsampling);
    * :meth:`task_loss` is the plain mmseg loss (used by the scoring pass);
    * inference (``predict`` / ``tensor`` mode) runs the student only.

    Args:
        distill_cfg (dict): ``alpha`` (1.0), ``temperature`` (20.0), ``normalize``
            (``'numel'`` | ``'pixel'``). Defaults from the official recipe.
        **kwargs: ``EncoderDecoder`` arguments.
    """

    def __init__(self, distill_cfg: Optional[dict] = None, **kwargs):
        super().__init__(**kwargs)
        self.distill_cfg = dict(alpha=1.0, temperature=20.0, normalize='numel')
        self.distill_cfg.update(distill_cfg or {})
        if self.distill_cfg['normalize'] not in NORMALIZATIONS:
            raise ValueError(f"distill_cfg.normalize must be one of {NORMALIZATIONS}, got "
                             f"{self.distill_cfg['normalize']!r}")
        self.__dict__['_teacher'] = None  # not a submodule on purpose

    @property
    def teacher(self):
        return self.__dict__['_teacher']

    def init_teacher(self, state_dict: Optional[dict] = None, reduction: bool = False) -> None:
        """Freeze a copy of this model (or of it with ``state_dict`` loaded, strictly) as the
        teacher; ``reduction=False`` switches its token reduction off (the uncompressed model,
        same weights).

        Raises:
            RuntimeError: ``state_dict`` does not fit the model.
        """
        self.__dict__['_teacher'] = None
        teacher = copy.deepcopy(self)
        if state_dict is not None:
            teacher.load_state_dict(state_dict, strict=True)
        if not reduction and hasattr(teacher.backbone, 'reduction_enabled'):
            teacher.backbone.reduction_enabled = False
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.__dict__['_teacher'] = teacher

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return out

    def task_loss(self, inputs: Tensor, data_samples) -> dict:
        """The plain mmseg losses (decode and auxiliary heads), no distillation."""
        return super().loss(inputs, data_samples)

    def loss(self, inputs: Tensor, data_samples) -> dict:
        """Task losses plus ``loss_kd`` once a teacher exists."""
        if self.teacher is None or self.distill_cfg['alpha'] == 0:
            return self.task_loss(inputs, data_samples)
        x = self.extract_feat(inputs)
        seg_logits = self.decode_head(x)
        losses = add_prefix(
            self.decode_head.loss_by_feat(seg_logits, data_samples), 'decode')
        if self.with_auxiliary_head:
            losses.update(self._auxiliary_head_forward_train(x, data_samples))
        with torch.no_grad():
            t_logits = self.teacher.decode_head(self.teacher.extract_feat(inputs))
        if t_logits.shape[-2:] != seg_logits.shape[-2:]:
            t_logits = resize(t_logits, seg_logits.shape[-2:], mode='bilinear',
                              align_corners=False)
        losses['loss_kd'] = distill_kl_loss(
            seg_logits, t_logits, self.distill_cfg['temperature'], self.distill_cfg['alpha'],
            self.distill_cfg['normalize'])
        return losses
