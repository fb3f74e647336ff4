"""Test (and evaluate) a segmentor (mmseg 1.x ``tools/test.py`` CLI; adds pre-flight checks).

Usage: python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show]
       [--show-dir DIR] [--wait-time S] [--tta] [--cfg-options k=v ...] [--launcher ...]
Prints the metrics (mIoU, mAcc, aAcc in %) at the end.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction

from mmseg_pm.utils import UserError, run_cli
from mmseg_pm.utils.preflight import check_config_path, check_test
from mmseg_pm.utils.runtime import (check_inference_fits_structure, check_loaded_structure,
                                    is_fixed_token_count_error, prepare_cfg)


def parse_args():
    parser = argparse.ArgumentParser(description='MMSeg test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='dump the evaluation metrics into this dir as json')
    parser.add_argument('--out', type=str,
                        help='the directory to save output prediction for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory where painted images will be saved')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, xxx=yyy format (mmseg syntax)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true', help='Test time augmentation')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def trigger_visualization_hook(cfg, args):
    default_hooks = cfg.default_hooks
    if 'visualization' not in default_hooks:
        raise UserError('--show/--show-dir need a visualization hook in default_hooks: '
                        "visualization=dict(type='SegVisualizationHook')")
    default_hooks['visualization']['draw'] = True
    if args.show:
        default_hooks['visualization']['show'] = True
        default_hooks['visualization']['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir
    return cfg


def main():
    args = parse_args()
    check_config_path(args.config)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    prepare_cfg(cfg)
    check_test(cfg, args.checkpoint)

    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    check_loaded_structure(runner.model, args.checkpoint)
    check_inference_fits_structure(runner.model, cfg.test_dataloader.dataset.get('pipeline'))
    try:
        metrics = runner.test()
    except ValueError as e:  # a compressed backbone fed an input above its crop
        if is_fixed_token_count_error(e):
            raise UserError(str(e)) from e
        raise
    from mmengine.dist import is_main_process
    if is_main_process():
        scalars = {k: float(v) for k, v in metrics.items() if getattr(v, 'size', 1) == 1}
        print('Test metrics (%): ' + ', '.join(f'{k}={v:.2f}' for k, v in scalars.items()))


if __name__ == '__main__':
    run_cli(main)
