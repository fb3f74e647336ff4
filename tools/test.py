"""Test (and evaluate) a segmentor (mmseg 1.x ``tools/test.py`` CLI; adds pre-flight checks).

Usage: python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show]
       [--show-dir DIR] [--wait-time S] [--tta] [--data-root DIR] [--cfg-options k=v ...]
       [--launcher ...] [--debug]
Prints the metrics (mIoU, mAcc, aAcc in %) at the end. ``--show-dir`` draws every image.
The checkpoint must fit the config strictly (a compressed checkpoint never runs silently as an
uncompressed model, nor the reverse); bad input stops with one ``error:`` line, exit code 2.
"""
import os
import os.path as osp

from mmseg_pm.compat import prepare_cfg
from mmseg_pm.errors import UserError
from mmseg_pm.utils.cli import ArgumentParser, ConfigOptions, run_cli
from mmseg_pm.utils.preflight import read_config, set_data_root


def parse_args():
    parser = ArgumentParser(description='MMSeg test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='dump the evaluation metrics into this dir as json')
    parser.add_argument('--out', type=str,
                        help='the directory to save output prediction for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory where painted images will be saved '
                        '(every image)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--data-root', help='data root of the test (and val) dataset')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
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
    default_hooks['visualization']['interval'] = 1  # every image (mmseg draws every 50th)
    if args.show:
        default_hooks['visualization']['show'] = True
        default_hooks['visualization']['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir
    return cfg


def main():
    args = parse_args()
    cfg = read_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.data_root:
        set_data_root(cfg, args.data_root)
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

    from mmseg_pm.engine.preflight import check_test_run
    check_test_run(cfg, args.checkpoint, [(cfg.work_dir, 'work directory'),
                                          (args.out, '--out'), (args.show_dir, '--show-dir')])

    from mmengine.dist import is_main_process
    from mmengine.runner import Runner

    from mmseg_pm.engine.cleanup import discard_refused_run
    with discard_refused_run(cfg.work_dir):  # bad input found while running: nothing left
        runner = Runner.from_cfg(cfg)
        metrics = runner.test()
    if is_main_process():
        scalars = {k: float(v) for k, v in metrics.items() if getattr(v, 'size', 1) == 1}
        print('Test metrics (%): ' + ', '.join(f'{k}={v:.2f}' for k, v in scalars.items()))


if __name__ == '__main__':
    run_cli(main)
