# mmseg's configs/_base_/default_runtime.py, plus the mmseg_pm import.
# `import mmseg_pm` registers PruneMergeViT & co. and applies the stack fixes (mmseg_pm/compat.py).
custom_imports = dict(imports=['mmseg_pm'], allow_failed_imports=False)
default_scope = 'mmseg'
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches to 'gloo' on machines without a GPU
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
tta_model = dict(type='SegTTAModel')
