"""Distributed runs on CPU (gloo): torchrun training finds the same structure as one process;
the Slurm scripts launch the tools with ``--launcher slurm``.

Scores are summed over ranks (``mmengine.dist.all_reduce``), and one scoring batch contributes
``|v|`` of its *signed* sum (the official ``Attention.compute_rank_attn``), so a batch is a rank's
local batch: 2 ranks x batch 2 x 2 iterations score the same four 2-image batches as 1 process x
batch 2 x 4 iterations that sees the ranks' batches one after the other. (One process with batch 4
would not: it takes ``|v_0 + v_1|`` where the ranks take ``|v_0| + |v_1|``.) Both runs use a
sequential sampler, a deterministic pipeline (fixed resize, no random crop / flip) and eval-mode
scoring; the single-process dataset lists the images in the order the ranks consume them.
"""
import json
import os
import os.path as osp
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


DEMO = osp.join(REPO, 'configs', 'demo', 'pm_segmenter_vit-t_ade20k-sample-256.py')

# A test-only hook: every rank writes its structure and its weights after training (the
# checkpoint and pm_structure.json are written by rank 0 only).
RANK_DUMP = '''
import json
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS


@HOOKS.register_module()
class DumpRankStructureHook(Hook):
    priority = 'VERY_LOW'

    def after_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        rank = get_rank()
        summary = model.backbone.structure_summary()
        with open(osp.join(runner.work_dir, f'rank{rank}_structure.json'), 'w') as f:
            json.dump(summary, f)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                   osp.join(runner.work_dir, f'rank{rank}_weights.pth'))
'''

CONFIG = '''
_base_ = [{demo!r}]
custom_imports = dict(imports=['mmseg_pm', 'pm_rank_dump'], allow_failed_imports=False)
custom_hooks = [
    dict(type='PMCompressHook', keep_rate=0.6, prune_rate=0.1, score_iters=2, score_mode='eval'),
    dict(type='DumpRankStructureHook')
]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', scale=(256, 256), keep_ratio=False),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=False),
    dataset=dict(data_root={root!r}, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root={root!r}))
test_dataloader = val_dataloader
'''


# test doubles of Slurm's srun / scontrol: srun runs the command --ntasks times on this machine
FAKE_SRUN = r'''#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_SRUN_LOG"
[ -n "$FAKE_SRUN_DRY" ] && exit 0
N=1
while [ $# -gt 0 ]; do
    case "$1" in
        --ntasks=*) N="${1#--ntasks=}"; shift ;;
        -p|--partition|-J) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
pids=()
for ((i = 0; i < N; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$N SLURM_NODELIST=localhost "$@" &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
'''
FAKE_SCONTROL = '#!/usr/bin/env bash\necho 127.0.0.1\n'


def fake_slurm(tmp_path):
    bin_dir = tmp_path / 'fake_slurm'
    bin_dir.mkdir()
    for name, text in (('srun', FAKE_SRUN), ('scontrol', FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('MASTER_', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK'))}
    env.update(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
               FAKE_SRUN_LOG=str(tmp_path / 'srun.log'))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def write_config(tmp_path, root):
    (tmp_path / 'pm_rank_dump.py').write_text(RANK_DUMP)
    cfg = tmp_path / 'pm_dist.py'
    cfg.write_text(textwrap.dedent(CONFIG.format(demo=DEMO, root=root)))
    return str(cfg)


def run(cmd, tmp_path, env=None, base_env=None):
    env = dict(base_env or os.environ, PYTHONUNBUFFERED='1', PYTHON=sys.executable,
               CUDA_VISIBLE_DEVICES='',  # the CPU / gloo path, also on a machine with GPUs
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')]),
               **(env or {}))
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    print(f'{time.time() - start:.1f}s: {" ".join(cmd[:3])}')
    assert proc.returncode == 0, f'{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    return proc.stdout + proc.stderr


def unit_structure(summary):
    """Per unit: span, grid, N, K, merged / pruned counts, centers, assign (no weights)."""
    return summary['units']


def pm_tensors(path):
    sd = torch.load(path, map_location='cpu', weights_only=False)
    sd = sd.get('state_dict', sd)
    return {k: v for k, v in sd.items() if k.startswith('backbone.pm.')}


@pytest.mark.e2e
def test_two_ranks_match_one_process(sample_root, tmp_path):
    cfg = write_config(tmp_path, sample_root)
    dist_dir, single_dir = tmp_path / 'dist', tmp_path / 'single'
    log = run(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', str(dist_dir),
               '--cfg-options', 'train_cfg.val_begin=100'], tmp_path,
              env=dict(PORT=str(free_port())))
    assert 'Distributed launcher: pytorch' in log and "'backend': 'gloo'" in log
    assert 'Prune-and-Merge: scoring 12 blocks over 2 iterations (eval mode)' in log
    assert 'Iter(train) [2/2]' in log  # finetuning ran

    # one process, the four batches in the order the ranks consumed them:
    # rank 0 takes images (0, 2), (4, 6), rank 1 takes (1, 3), (5, 7)
    log = run([sys.executable, 'tools/train.py', cfg, '--work-dir', str(single_dir),
               '--cfg-options', 'custom_hooks.0.score_iters=4',
               'train_dataloader.dataset.indices=[0,2,1,3,4,6,5,7]',
               'train_cfg.max_iters=1', 'train_cfg.val_begin=100'], tmp_path)
    assert 'Prune-and-Merge: scoring 12 blocks over 4 iterations (eval mode)' in log

    ranks = [json.load(open(dist_dir / f'rank{r}_structure.json')) for r in range(2)]
    assert unit_structure(ranks[0]) == unit_structure(ranks[1])
    dist_record = json.load(open(dist_dir / 'pm_structure.json'))
    single_record = json.load(open(single_dir / 'pm_structure.json'))
    assert unit_structure(dist_record['structure']) == unit_structure(ranks[0])
    # the scores agree up to float32 forward/backward rounding (thread count differs) ...
    for block, s in dist_record['scores'].items():
        a, b = torch.tensor(s), torch.tensor(single_record['scores'][block])
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-12 + 1e-4 * float(b.abs().max())), block
    # ... and the structure is identical
    assert dist_record['rows'] == single_record['rows']
    assert unit_structure(dist_record['structure']) == unit_structure(single_record['structure'])

    # DDP kept the ranks' weights identical through finetuning; the checkpoint holds them
    w0, w1 = (torch.load(dist_dir / f'rank{r}_weights.pth', weights_only=False)
              for r in range(2))
    assert w0.keys() == w1.keys()
    assert max(float((w0[k].double() - w1[k].double()).abs().max()) for k in w0
               if w0[k].is_floating_point()) == 0
    saved, single = pm_tensors(dist_dir / 'iter_2.pth'), pm_tensors(single_dir / 'iter_1.pth')
    for key in saved:
        if key.endswith(('assign', 'centers')):
            assert torch.equal(saved[key], w0[key]), key
            assert torch.equal(saved[key], single[key]), key

    # Slurm: the same checkpoint tested by 2 tasks of tools/slurm_test.sh (--launcher slurm)
    env = fake_slurm(tmp_path)
    # (one thread per task, as torchrun sets it: MMEngine's OMP_NUM_THREADS=1 comes after
    # `import torch` and has no effect; 4 images)
    log = run(['bash', 'tools/slurm_test.sh', 'cpu', 'pm_test', cfg, str(dist_dir / 'iter_2.pth'),
               '--work-dir', str(tmp_path / 'slurm_test'), '--cfg-options',
               'test_dataloader.dataset.indices=4'], tmp_path, base_env=env,
              env=dict(GPUS='2', GPUS_PER_NODE='0', TASKS_PER_NODE='2', OMP_NUM_THREADS='1',
                       MASTER_PORT=str(free_port())))
    srun = open(tmp_path / 'srun.log').read()
    assert '--ntasks=2 --ntasks-per-node=2' in srun and '--gres' not in srun
    assert 'tools/test.py' in srun and '--launcher=slurm' in srun
    assert 'Distributed launcher: slurm' in log
    assert log.count('Test metrics (%): aAcc=') == 1  # printed by rank 0 only


@pytest.mark.e2e
def test_two_ranks_with_validation_exit_cleanly(sample_root, tmp_path):
    """torchrun training with validation at its end exits 0, run after run.

    Without the process group destroyed before exit (``mmseg_pm.utils.cli.destroy_dist``)
    a gloo worker thread could free the tensors of the last ``broadcast_object_list`` (the
    validation metrics) during interpreter finalization and abort the rank after a successful
    run ("terminate called without an active exception", torchrun exit code 1): about 1 run
    in 6 on 2 CPU cores. A 1-in-5 failure passes 10 runs in a row with probability 0.8**10
    (about 0.11).
    """
    root = f'data_root={sample_root}'
    for i in range(10):
        work_dir = tmp_path / f'run{i}'
        log = run(['bash', 'tools/dist_train.sh', DEMO, '2', '--work-dir', str(work_dir),
                   '--cfg-options', f'train_dataloader.dataset.{root}',
                   f'val_dataloader.dataset.{root}', f'test_dataloader.dataset.{root}'],
                  tmp_path, env=dict(PORT=str(free_port())))
        assert 'terminate called' not in log
        assert 'Iter(train) [2/2]' in log and 'Iter(val) [4/4]' in log  # 8 images, 2 ranks
        assert (work_dir / 'iter_2.pth').is_file()
        assert open(work_dir / 'last_checkpoint').read().strip().endswith('iter_2.pth')
        scalars = [json.loads(line) for f in work_dir.glob('*/vis_data/scalars.json')
                   for line in open(f)]
        val = [s for s in scalars if 'mIoU' in s]
        assert len(val) == 1 and val[0]['step'] == 2 and {'aAcc', 'mAcc'} <= val[0].keys()


def test_slurm_scripts_command_line(tmp_path):
    """The srun command line of both scripts (dry run: the fake srun only records it)."""
    env = fake_slurm(tmp_path)
    env['FAKE_SRUN_DRY'] = '1'
    run(['bash', 'tools/slurm_train.sh', 'gpu', 'pm_job', 'configs/x.py', '--work-dir',
         'work dir', '--resume'], tmp_path, base_env=env)
    run(['bash', 'tools/slurm_test.sh', 'gpu', 'pm_job', 'configs/x.py', 'ckpt.pth'], tmp_path,
        base_env=env, env=dict(GPUS='8', GPUS_PER_NODE='8'))
    train, test = open(tmp_path / 'srun.log').read().splitlines()
    assert train.startswith('srun -p gpu --job-name=pm_job --gres=gpu:4 --ntasks=4 '
                            '--ntasks-per-node=4 --cpus-per-task=5 --kill-on-bad-exit=1 ')
    assert train.endswith(f'{REPO}/tools/train.py configs/x.py --launcher=slurm --work-dir '
                          f'work dir --resume')
    assert '--gres=gpu:8 --ntasks=8 --ntasks-per-node=8' in test
    assert test.endswith(f'{REPO}/tools/test.py configs/x.py ckpt.pth --launcher=slurm')
    proc = subprocess.run(['bash', 'tools/slurm_train.sh', 'gpu'], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and 'usage:' in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU-only adjustments')
def test_prepare_cfg_for_cpu_distributed():
    from mmengine.config import Config

    from mmseg_pm.compat import prepare_cfg
    cfg = Config.fromfile(DEMO)  # model_wrapper_cfg with find_unused_parameters=True
    cfg.launcher = 'pytorch'
    prepare_cfg(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.model_wrapper_cfg.find_unused_parameters is True
    cfg = Config(dict(launcher='slurm', find_unused_parameters=True))  # no env_cfg, no wrapper
    prepare_cfg(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=False, find_unused_parameters=True)
    cfg = Config(dict(launcher='none'))
    prepare_cfg(cfg)
    assert 'model_wrapper_cfg' not in cfg


def test_init_dist_without_gpu():
    """MMEngine's init_dist calls torch.cuda.set_device(LOCAL_RANK); mmseg_pm.compat skips it
    without a GPU, so the gloo process group comes up (a 1-process group here)."""
    code = ('import mmseg_pm, torch.distributed as d\n'
            'from mmengine.dist import init_dist, get_world_size\n'
            'init_dist("pytorch", backend="gloo")\n'
            'print("world", get_world_size(), d.get_backend())\n'
            'd.destroy_process_group()\n')
    env = dict(os.environ, RANK='0', LOCAL_RANK='1', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(free_port()), CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'world 1 gloo' in proc.stdout
