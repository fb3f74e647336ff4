"""Bad input to the tools (issue 10): each case either does what the user meant or stops with
one line.

A refused run exits with code 2 and prints exactly one line on stderr, ``error: ...``, naming
what is wrong (stdout may hold progress); no traceback; and it leaves nothing behind: no work
directory, log folder or output file (the folders a case prepares are listed before the run
and compared after it).

The refusals are one table (:data:`CASES`, one entry per tool and mistake), run in processes
forked from a server that imported the tools' modules once
(:func:`tests.utils.run_tool_forked`); :func:`test_refusal_in_a_fresh_interpreter` runs a
few of them as real subprocesses. A converter given the same source and destination is
covered in ``tests/test_converters/test_cli.py`` (``test_refuses_dst_equal_src*``).
"""
import os
import os.path as osp
from types import SimpleNamespace

import pytest
import torch

from tests.utils import (BASELINE, DEMO, REPO, SAMPLE, assert_one_line_error, copy_sample,
                         edit_annotation, first_image, listing, load_state_dict, quiet, run_tool,
                         run_tool_forked, timm_vit_tiny, truncated_copy, with_label)

TRAIN, TEST = 'tools/train.py', 'tools/test.py'
COMPRESS = 'tools/pm_compress.py'
FLOPS, BENCH = 'tools/analysis_tools/get_flops.py', 'tools/analysis_tools/benchmark.py'
VIS, ONNX = 'tools/analysis_tools/visualize_tokens.py', 'tools/deployment/pytorch2onnx.py'
PREPARE = 'tools/dataset_converters/prepare_ade20k_sample.py'

#: case name -> function(ctx) returning (tool arguments, needles of the error line)
CASES = {}
#: cases that run a tool on the real sample before they stop
SLOW = set()


def case(name, slow=False):
    def register(fn):
        assert name not in CASES, name
        CASES[name] = fn
        if slow:
            SLOW.add(name)
        return fn
    return register


def a_file(ctx, name='file.txt'):
    """A regular file where the cases put an output folder (unwritable, also as root)."""
    path = ctx.tmp / name
    path.write_text('not a folder\n')
    return path


def model_args(ctx, tool):
    """config [checkpoint] [image] arguments of each tool with valid files."""
    tiny = ctx.tiny
    return {
        TRAIN: [DEMO, '--data-root', ctx.sample],
        TEST: [DEMO, ctx.ckpt['compressed'], '--data-root', ctx.sample],
        COMPRESS: [DEMO, ctx.ckpt['uncompressed'], '--data-root', ctx.sample],
        FLOPS: [tiny['config'], tiny['pm']],
        BENCH: [tiny['config'], tiny['pm'], '--baseline', tiny['baseline_config'],
                tiny['baseline']],
        VIS: [tiny['config'], tiny['pm'], first_image(ctx.sample)],
        ONNX: [tiny['config'], tiny['pm']],
    }[tool]


def required_args(ctx, tool):
    """Required output options of the tools (a valid path)."""
    return {COMPRESS: ['--out', str(ctx.tmp / 'out.pth')],
            VIS: ['--out', str(ctx.tmp / 'out.png')],
            ONNX: ['--out', str(ctx.tmp / 'out.onnx')]}.get(tool, [])


# --------------------------------------------------------------------------------------------
# configs and options, every tool that reads a config
# --------------------------------------------------------------------------------------------
CONFIG_TOOLS = (TRAIN, TEST, COMPRESS, FLOPS, BENCH, VIS, ONNX)


def _with_config(ctx, tool, config):
    args = model_args(ctx, tool)
    args = [config] + args[1:]
    if tool == BENCH:
        args[args.index('--baseline') + 1] = config
    return [tool, *args, *required_args(ctx, tool)]


for _tool in CONFIG_TOOLS:
    _name = osp.basename(_tool)[:-3]

    @case(f'{_name}: config file missing')
    def _(ctx, tool=_tool):
        return _with_config(ctx, tool, 'configs/nope.py'), ['config file not found',
                                                            'configs/nope.py']

    @case(f'{_name}: empty config file')
    def _(ctx, tool=_tool):
        (ctx.tmp / 'empty.py').write_text('')
        return _with_config(ctx, tool, str(ctx.tmp / 'empty.py')), [
            str(ctx.tmp / 'empty.py'), 'defines no model']

    @case(f'{_name}: config with a syntax error')
    def _(ctx, tool=_tool):
        path = ctx.tmp / 'broken.py'
        path.write_text("_base_ = ['x.py']\nmodel = dict(\n    type='EncoderDecoder',,\n)\n")
        return _with_config(ctx, tool, str(path)), ['cannot read config', str(path),
                                                    'line 3', 'SyntaxError']

    @case(f'{_name}: --cfg-options token without =')
    def _(ctx, tool=_tool):
        return [tool, *model_args(ctx, tool), *required_args(ctx, tool), '--cfg-options',
                'model.pretrained=None', 'train_dataloader.batch_size'], [
                    '--cfg-options takes key=value pairs', "'train_dataloader.batch_size'"]


# --------------------------------------------------------------------------------------------
# outputs that cannot be written (a file where a folder should be: refused also as root)
# --------------------------------------------------------------------------------------------
def _unwritable(tool, option, leaf):
    @case(f'{osp.basename(tool)[:-3]}: {option} not writable')
    def _(ctx):
        parent = a_file(ctx)
        out = str(parent / leaf)
        args = [a for a in required_args(ctx, tool)]
        if option in args:
            args[args.index(option) + 1] = out
        else:
            args += [option, out]
        what = 'work directory' if option == '--work-dir' else option
        return [tool, *model_args(ctx, tool), *args], [what, f'{parent} is a file']


for _tool, _option, _leaf in [(TRAIN, '--work-dir', 'work'), (TEST, '--work-dir', 'work'),
                              (TEST, '--out', 'preds'), (TEST, '--show-dir', 'vis'),
                              (COMPRESS, '--out', 'out.pth'), (FLOPS, '--out', 'flops.json'),
                              (BENCH, '--out', 'bench.json'), (VIS, '--out', 'tokens.png'),
                              (ONNX, '--out', 'model.onnx')]:
    _unwritable(_tool, _option, _leaf)


@case('prepare_ade20k_sample: --out not writable')
def _(ctx):
    parent = a_file(ctx)
    return [PREPARE, '--src', SAMPLE, '--out',
            str(parent / 'sample')], ['--out', str(parent / 'sample'), f'{parent} is a file']


# --------------------------------------------------------------------------------------------
# train.py
# --------------------------------------------------------------------------------------------
def cmd_train(ctx, *options, config=DEMO, data=True):
    """tools/train.py with the work dir in tmp_path (and the sample as data root)."""
    args = [TRAIN, config, '--work-dir', str(ctx.tmp / 'work')]
    if data:
        args += ['--data-root', ctx.sample]
    return args + (['--cfg-options', *options] if options else [])


@case('train: data root missing')
def _(ctx):
    return cmd_train(ctx, f'train_dataloader.dataset.data_root={ctx.tmp}/nowhere', data=False), [
        'train data root not found', f'{ctx.tmp}/nowhere', 'prepare_ade20k_sample.py']


@case('train: --cfg-options data_root=DIR is applied to the dataloaders')
def _(ctx):
    return cmd_train(ctx, f'data_root={ctx.tmp}/elsewhere', data=False), [
        'train data root not found', f'{ctx.tmp}/elsewhere']


@case('train: --data-root DIR missing')
def _(ctx):
    return [TRAIN, DEMO, '--work-dir', str(ctx.tmp / 'work'), '--data-root',
            f'{ctx.tmp}/elsewhere'], ['train data root not found', f'{ctx.tmp}/elsewhere']


@case('train: data root without images')
def _(ctx):
    os.makedirs(ctx.tmp / 'root' / 'annotations' / 'training')
    return cmd_train(ctx, f'train_dataloader.dataset.data_root={ctx.tmp}/root', data=False), [
        'train image folder not found', 'images/training']


@case('train: empty image folder')
def _(ctx):
    os.makedirs(ctx.tmp / 'root' / 'images' / 'training')
    return cmd_train(ctx, f'train_dataloader.dataset.data_root={ctx.tmp}/root', data=False), [
        'image folder is empty']


@case('train: label above 150 in one of the first annotations')
def _(ctx):
    stems = copy_sample(ctx.sample, ctx.tmp / 'data', num_train=4)
    path = edit_annotation(ctx.tmp / 'data', stems[0], with_label(200))
    return [TRAIN, DEMO, '--work-dir', str(ctx.tmp / 'work'), '--data-root',
            str(ctx.tmp / 'data')], ['train annotation', path, 'labels [200] above 150']


@case('train: label above 150 in a late annotation', slow=True)
def _(ctx):
    """The fourth of four training annotations (past the three the pre-flight check opens):
    found by CheckLabelRange while scoring, which sees all four images."""
    stems = copy_sample(ctx.sample, ctx.tmp / 'data', num_train=4)
    path = edit_annotation(ctx.tmp / 'data', stems[3], with_label(200))
    return [TRAIN, DEMO, '--work-dir', str(ctx.tmp / 'work'), '--data-root',
            str(ctx.tmp / 'data'), '--cfg-options', 'train_cfg.val_interval=100'], [
                'annotation', path, 'labels [200] outside 1..150']


def skip_if_present(path):
    """Skip a missing-file case where the user has placed the real file."""
    if osp.exists(osp.join(REPO, path)):
        pytest.skip(f'{path} is present in this checkout')


@case('train: pretrained weights missing')
def _(ctx):
    skip_if_present('checkpoints/vit_small_p16_384_20220308-410f6037.pth')
    return cmd_train(ctx, config='configs/segmenter_vit-s_ade20k.py'), [
        'vit_small_p16_384_20220308-410f6037.pth', 'model.pretrained=None']


@case('train: baseline checkpoint of a pm_ config missing')
def _(ctx):
    skip_if_present('checkpoints/segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-'
                    '511bb103.pth')
    return cmd_train(ctx, config='configs/pm_segmenter_vit-s_ade20k.py'), [
        'load_from checkpoint not found', 'segmenter_vit-s_mask']


@case('train: PMCompressHook keep_rate out of range')
def _(ctx):
    return cmd_train(ctx, 'custom_hooks.0.keep_rate=1.5'), ['keep_rate must be in (0, 1], got 1.5']


@case('train: PMCompressHook prune_rate out of range')
def _(ctx):
    return cmd_train(ctx, 'custom_hooks.0.prune_rate=-0.1'), ['prune_rate must be in [0, 1)']


@case('train: deprecated pm_cfg.keep_rate out of range')
def _(ctx):
    return cmd_train(ctx, 'custom_hooks.0.keep_rate=None', 'model.backbone.pm_cfg.keep_rate=1.5'), [
        'keep_rate must be in (0, 1], got 1.5']


@case('train: load_from of another architecture')
def _(ctx):
    return cmd_train(ctx, f'load_from={ctx.ckpt["other_arch"]}'), [
        'does not fit the config', 'shape mismatches',
        'checkpoint (1, 1, 64) vs model (1, 1, 192)', 'architecture']


@case('train: load_from truncated')
def _(ctx):
    bad = truncated_copy(ctx.ckpt['compressed'], ctx.tmp / 'truncated.pth')
    return cmd_train(ctx, f'load_from={bad}'), [
        'cannot read load_from checkpoint', bad, 'truncated']


@case('train: validation crop above the structure crop')
def _(ctx):
    return cmd_train(ctx, 'model.test_cfg.crop_size=(320,320)'), [
        'crop_size=(320, 320) is larger than the 256x256 crop']


@case('train: --resume with nothing to resume')
def _(ctx):
    return [TRAIN, DEMO, '--work-dir', str(ctx.tmp / 'work'), '--data-root', ctx.sample,
            '--resume'], ['--resume: nothing to resume', str(ctx.tmp / 'work')]


@case('train: --resume in an empty work dir')
def _(ctx):
    (ctx.tmp / 'work').mkdir()
    return [TRAIN, DEMO, '--work-dir', str(ctx.tmp / 'work'), '--data-root', ctx.sample,
            '--resume'], ['--resume: nothing to resume', 'last_checkpoint']


@case('train: --amp without a GPU')
def _(ctx):
    return cmd_train(ctx) + ['--amp'], ['needs a GPU', 'without --amp']


# --------------------------------------------------------------------------------------------
# test.py
# --------------------------------------------------------------------------------------------
def cmd_test(ctx, checkpoint, *options, config=DEMO, data=True):
    args = [TEST, config, checkpoint, '--work-dir', str(ctx.tmp / 'work')]
    if data:
        args += ['--data-root', ctx.sample]
    return args + (['--cfg-options', *options] if options else [])


@case('test: checkpoint missing')
def _(ctx):
    return cmd_test(ctx, str(ctx.tmp / 'none.pth')), ['checkpoint not found', 'none.pth']


@case('test: checkpoint truncated')
def _(ctx):
    bad = truncated_copy(ctx.ckpt['compressed'], ctx.tmp / 'truncated.pth')
    return cmd_test(ctx, bad), ['cannot read checkpoint', bad, 'truncated']


@case('test: compressed checkpoint with the baseline config')
def _(ctx):
    return cmd_test(ctx, ctx.ckpt['compressed'], config=BASELINE), [
        'does not fit the config', 'unexpected tensors', 'backbone.pm.',
        'Prune-and-Merge structure', 'pm_ config']


@case('test: uncompressed checkpoint with a pm_ config')
def _(ctx):
    return cmd_test(ctx, ctx.ckpt['baseline']), [
        'carries no Prune-and-Merge structure', 'baseline config']


@case('test: checkpoint of another architecture')
def _(ctx):
    return cmd_test(ctx, ctx.ckpt['other_arch']), [
        'does not fit the config', 'checkpoint (1, 1, 64) vs model (1, 1, 192)']


@case('test: whole-image inference on a compressed model')
def _(ctx):
    return cmd_test(ctx, ctx.ckpt['compressed'], 'model.test_cfg.mode=whole'), [
        "test_cfg.mode='whole'", 'fixed token count', '256x256', 'model.test_cfg.mode=slide']


@case('test: --cfg-options data_root=DIR is applied to the dataloaders')
def _(ctx):
    return cmd_test(ctx, ctx.ckpt['compressed'], f'data_root={ctx.tmp}/elsewhere', data=False), [
        'test data root not found', f'{ctx.tmp}/elsewhere']


@case('test: label above 150 in a late annotation', slow=True)
def _(ctx):
    """The fifth of the eight validation annotations: found by CheckLabelRange while
    testing."""
    copy_sample(ctx.sample, ctx.tmp / 'data', num_train=1)
    stem = sorted(os.listdir(ctx.tmp / 'data' / 'annotations' / 'validation'))[4][:-4]
    path = edit_annotation(ctx.tmp / 'data', stem, with_label(200), split='validation')
    return [TEST, DEMO, ctx.ckpt['compressed'], '--work-dir', str(ctx.tmp / 'work'),
            '--data-root', str(ctx.tmp / 'data')], [
                'annotation', path, 'labels [200] outside 1..150']


# --------------------------------------------------------------------------------------------
# pm_compress.py, analysis tools, export, data preparation
# --------------------------------------------------------------------------------------------
@case('pm_compress: checkpoint missing')
def _(ctx):
    return [COMPRESS, DEMO, str(ctx.tmp / 'none.pth'), '--out', str(ctx.tmp / 'out.pth')], [
        'checkpoint not found', 'none.pth']


@case('pm_compress: --keep-rate out of range')
def _(ctx):
    return [COMPRESS, *model_args(ctx, COMPRESS), '--out', str(ctx.tmp / 'out.pth'),
            '--keep-rate', '1.5'], ['keep_rate must be in (0, 1], got 1.5']


@case('get_flops: --prune-rate without --keep-rate')
def _(ctx):
    return [FLOPS, ctx.tiny['config'], '--prune-rate', '0.1'], ['--prune-rate needs --keep-rate']


@case('get_flops: --shape of a compressed model')
def _(ctx):
    return [FLOPS, *model_args(ctx, FLOPS), '--shape', '128'], [
        'fixed token count', 'runs at its crop 64x64', '--shape 128 128']


@case('benchmark: Prune-and-Merge model without structure')
def _(ctx):
    tiny = ctx.tiny
    return [BENCH, tiny['config'], tiny['plain'], '--baseline', tiny['baseline_config'],
            tiny['baseline']], ['holds no Prune-and-Merge structure', '--keep-rate']


@case('benchmark: --data-root missing')
def _(ctx):
    return [BENCH, *model_args(ctx, BENCH), '--data-root', str(ctx.tmp / 'nowhere')], [
        'test data root not found', str(ctx.tmp / 'nowhere')]


@case('visualize_tokens: checkpoint without structure')
def _(ctx):
    tiny = ctx.tiny
    return [VIS, tiny['config'], tiny['plain'], first_image(ctx.sample), '--out',
            str(ctx.tmp / 'x.png')], ['the token reduction is the identity',
                                      'give a compressed checkpoint']


@case('visualize_tokens: a model without token reduction')
def _(ctx):
    tiny = ctx.tiny
    return [VIS, tiny['baseline_config'], tiny['baseline'], first_image(ctx.sample), '--out',
            str(ctx.tmp / 'x.png')], ['the backbone has no token reduction']


@case('pytorch2onnx: checkpoint without structure')
def _(ctx):
    return [ONNX, ctx.tiny['config'], ctx.tiny['plain'], '--out', str(ctx.tmp / 'x.onnx')], [
        'carries no Prune-and-Merge structure', 'the export would be the uncompressed model']


@case('benchmark: --precision fp16 on the CPU')
def _(ctx):
    return [BENCH, *model_args(ctx, BENCH), '--precision', 'fp16'], [
        '--precision fp16 needs a GPU', 'bf16']


@case('visualize_tokens: corrupt image')
def _(ctx):
    image = ctx.tmp / 'corrupt.jpg'
    data = open(first_image(ctx.sample), 'rb').read()
    image.write_bytes(data[:64] + bytes(len(data) - 64))
    tiny = ctx.tiny
    return [VIS, tiny['config'], tiny['pm'], str(image), '--out', str(ctx.tmp / 'x.png')], [
        'cannot read image', str(image)]


@case('visualize_tokens: not an image')
def _(ctx):
    image = ctx.tmp / 'notes.txt'
    image.write_text('hello\n')
    tiny = ctx.tiny
    return [VIS, tiny['config'], tiny['pm'], str(image), '--out', str(ctx.tmp / 'x.png')], [
        'cannot read image', str(image)]


@case('prepare_ade20k_sample: --src mistyped')
def _(ctx):
    return [PREPARE, '--src', str(ctx.tmp / 'ade20k_smaple'), '--out', str(ctx.tmp / 'out')], [
        '--src', 'ade20k_smaple', 'no ADE20K image / annotation pairs']


@case('prepare_ade20k_sample: --src an empty folder')
def _(ctx):
    (ctx.tmp / 'empty').mkdir()
    return [PREPARE, '--src', str(ctx.tmp / 'empty'), '--out', str(ctx.tmp / 'out')], [
        '--src', 'no ADE20K image / annotation pairs']


# --------------------------------------------------------------------------------------------
@pytest.fixture
def ctx(tmp_path, sample_root, demo_checkpoints, tiny_files):
    case_dir = tmp_path / 'case'
    case_dir.mkdir()
    return SimpleNamespace(tmp=case_dir, sample=sample_root, ckpt=demo_checkpoints,
                           tiny=tiny_files)


def run_case(name, ctx, runner):
    args, needles = CASES[name](ctx)
    before = listing(ctx.tmp)
    repo_before = sorted(os.listdir(REPO))
    sample_before = listing(osp.dirname(ctx.sample))
    proc = runner(*args)
    line = assert_one_line_error(proc, *needles)
    assert listing(ctx.tmp) == before, 'the refused run left files behind'
    assert sorted(os.listdir(REPO)) == repo_before
    assert listing(osp.dirname(ctx.sample)) == sample_before
    return line


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=[pytest.mark.e2e] if n in SLOW else []) for n in CASES])
def test_refused(name, ctx):
    run_case(name, ctx, run_tool_forked)


@pytest.mark.parametrize('name', ['train: config file missing',
                                  'test: compressed checkpoint with the baseline config',
                                  'visualize_tokens: not an image'])
def test_refusal_in_a_fresh_interpreter(name, ctx):
    """The same contract from a fresh ``python tools/...`` (imports included)."""
    run_case(name, ctx, lambda *args: run_tool(*args, check=False))


def test_tool_imports_print_nothing():
    """Importing what the fork server of the table preloads writes nothing to stderr (so
    forked runs see every line a fresh interpreter would print)."""
    from tests.utils import PRELOAD
    proc = run_tool('-c', 'import ' + ', '.join(PRELOAD))
    assert proc.stderr == '' and proc.stdout == ''


# --------------------------------------------------------------------------------------------
# a timm ImageNet checkpoint given to a baseline config: converted and loaded
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def timm_checkpoint(tmp_path_factory):
    """A timm ViT-Ti/16 at 224 px (14 x 14 grid) in timm's own file layout, 2 blocks (the
    model gets ``num_layers=2``: faster, the same conversion)."""
    path = tmp_path_factory.mktemp('timm') / 'vit_tiny_patch16_224.pth'
    torch.save(timm_vit_tiny(depth=2).state_dict(), path)
    return str(path)


DEPTH = 'model.backbone.num_layers=2'


def converted_backbone(timm_path):
    from mmseg_pm.converters import convert_timm_vit
    return convert_timm_vit(torch.load(timm_path, map_location='cpu'), (16, 16), patch_size=16)


@pytest.mark.e2e
def test_timm_checkpoint_as_model_pretrained_trains(timm_checkpoint, sample_root, tmp_path):
    """``--cfg-options model.pretrained=<timm file>``: one iteration at learning rate 0 keeps
    the converted weights, so the checkpoint holds exactly them."""
    work = tmp_path / 'work'
    run_tool(TRAIN, BASELINE, '--work-dir', str(work), '--data-root', sample_root,
             '--cfg-options', f'model.pretrained={timm_checkpoint}', DEPTH,
             'train_cfg.max_iters=1',
             'train_cfg.val_interval=100', 'optim_wrapper.optimizer.lr=0.0')
    saved = load_state_dict(work / 'iter_1.pth')
    expected = converted_backbone(timm_checkpoint)
    for key in ('patch_embed.projection.weight', 'pos_embed', 'layers.0.attn.attn.in_proj_weight',
                'layers.1.ffn.layers.1.weight', 'ln1.weight'):
        torch.testing.assert_close(saved['backbone.' + key], expected[key], rtol=0, atol=0)
    assert saved['backbone.pos_embed'].shape == (1, 1 + 16 * 16, 192)  # resampled 14 -> 16


def test_timm_checkpoint_via_init_cfg_loads(timm_checkpoint):
    """``model.backbone.init_cfg=dict(type='Pretrained', checkpoint=<timm file>)``."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    from mmseg_pm.utils.preflight import read_config
    quiet()
    cfg = read_config(osp.join(REPO, BASELINE), {
        'model.backbone.num_layers': 2,
        'model.backbone.init_cfg': dict(type='Pretrained', checkpoint=timm_checkpoint)})
    assert isinstance(cfg, Config)
    model = MODELS.build(cfg.model)
    model.init_weights()
    expected = converted_backbone(timm_checkpoint)
    own = model.backbone.state_dict()
    # the config builds the patch embedding without bias (mmseg's Segmenter): only that is
    # dropped
    assert set(expected) - set(own) == {'patch_embed.projection.bias'}
    for key, value in own.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
