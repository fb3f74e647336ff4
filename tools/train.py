"""Train a segmentor (mmseg 1.x ``tools/train.py`` CLI; adds pre-flight checks).

Usage: python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp] [--data-root DIR]
       [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}] [--debug]

Everything that can be checked before training (files, data, settings, load_from against the
model) is checked before MMEngine writes anything: bad input stops with one ``error:`` line
and exit code 2 (``--debug`` shows its traceback).
"""
import logging
import os
import os.path as osp

from mmengine.logging import print_log

from mmseg_pm.compat import prepare_cfg
from mmseg_pm.utils.cli import ArgumentParser, ConfigOptions, run_cli
from mmseg_pm.utils.preflight import read_config, set_data_root


def parse_args():
    parser = ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--resume', action='store_true', default=False,
                        help='resume from the latest checkpoint in the work_dir automatically')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training (GPU)')
    parser.add_argument('--data-root', help='data root of the train, val and test datasets')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override settings in the config, xxx=yyy format (mmseg syntax)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


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
    if args.amp:
        if cfg.optim_wrapper.type == 'AmpOptimWrapper':
            print_log('AMP training is already enabled in your config.', logger='current',
                      level=logging.WARNING)
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = args.resume
    prepare_cfg(cfg)

    from mmseg_pm.engine.preflight import check_train_run
    check_train_run(cfg)

    from mmengine.runner import Runner
    from mmseg.registry import RUNNERS

    from mmseg_pm.engine.cleanup import discard_refused_run
    with discard_refused_run(cfg.work_dir):  # bad input found while running: nothing left
        runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
        runner.train()


if __name__ == '__main__':
    run_cli(main)
