"""``SelfDistillationHook``: the frozen teacher of a self-distillation finetuning run."""
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ...converters.fit import check_checkpoint_fits
from .rng_state_hook import RNGStateHook


def unwrap(model):
    """The segmentor inside a DDP wrapper."""
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class SelfDistillationHook(RNGStateHook):
    """Teacher set-up and carry for ``PMDistillEncoderDecoder`` with any token reducer.

    * ``before_train``: a model without a teacher freezes one from its weights with the token
      reduction switched off (the uncompressed model: ``load_from`` an uncompressed checkpoint,
      then finetune the reduced student against it);
    * checkpoints carry the teacher's weights (``checkpoint['pm_teacher']``), restored on
      ``--resume``, and torch's RNG state (:class:`RNGStateHook`), so a resumed run continues
      exactly;
    * a loaded checkpoint (``load_from`` or ``--resume``) must fit the model
      (:func:`mmseg_pm.converters.fit.check_checkpoint_fits`; MMEngine alone would load it
      non-strictly and train from random weights).
    """

    def before_train(self, runner) -> None:
        model = unwrap(runner.model)
        if hasattr(model, 'init_teacher') and model.teacher is None:
            if runner.cfg.get('resume', False):
                print_log('self-distillation: the resumed checkpoint has no teacher weights; '
                          'distillation is off for this run', logger='current', level=30)
                return
            model.init_teacher(reduction=False)
            print_log('self-distillation: teacher = the loaded weights without token reduction',
                      logger='current')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        super().before_save_checkpoint(runner, checkpoint)
        teacher = getattr(unwrap(runner.model), 'teacher', None)
        if teacher is not None:
            checkpoint['pm_teacher'] = {k: v.cpu() for k, v in teacher.state_dict().items()}

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        super().after_load_checkpoint(runner, checkpoint)
        model = unwrap(runner.model)
        check_checkpoint_fits(model, checkpoint.get('state_dict', checkpoint), 'the checkpoint')
        if 'pm_teacher' in checkpoint and hasattr(model, 'init_teacher'):
            model.init_teacher(checkpoint['pm_teacher'], reduction=False)
