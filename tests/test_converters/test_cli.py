"""The converter tools (``tools/model_converters/*.py`` over :mod:`mmseg_pm.converters.cli`)."""
import os
import os.path as osp

import pytest
import torch

from mmseg_pm.utils import run_cli

from .utils import (load_tool, our_backbone, pm_vit_source, run_script, segmenter_mmseg,
                    segmenter_source, strip, tiny_timm)

TOOLS = ('timm2mmseg', 'segmenter2mmseg', 'pm_official2mmseg_pm')


def test_converter_scripts(tmp_path, capsys):
    src = tiny_timm('deit_tiny_distilled_patch16_224', img_size=48)
    torch.save(dict(model=src.state_dict()), tmp_path / 'deit.pth')
    dst = tmp_path / 'out' / 'deit_mmseg.pth'
    assert load_tool('timm2mmseg').main([str(tmp_path / 'deit.pth'), str(dst),
                                         '--img-size', '64', '64']) == 0
    text = capsys.readouterr().out
    assert 'dist_token' in text and 'resampled 3x3 -> 4x4' in text and 'saved' in text
    out = torch.load(dst, weights_only=False)
    our_backbone().load_state_dict(out['state_dict'], strict=True)

    checkpoint, _, _ = segmenter_source()
    torch.save(checkpoint, tmp_path / 'seg.pth')
    assert load_tool('segmenter2mmseg').main([str(tmp_path / 'seg.pth'),
                                              str(tmp_path / 'seg_mmseg.pth')]) == 0
    out = torch.load(tmp_path / 'seg_mmseg.pth', weights_only=False)
    segmenter_mmseg().load_state_dict(out['state_dict'], strict=True)

    pm_ckpt, *_ = pm_vit_source(depth=3)
    torch.save(pm_ckpt, tmp_path / 'pm.pth')
    assert load_tool('pm_official2mmseg_pm').main(
        [str(tmp_path / 'pm.pth'), str(tmp_path / 'pm_mmseg.pth'), '--structure-json',
         str(tmp_path / 'pm.json')]) == 0
    text = capsys.readouterr().out
    assert 'pm_cfg' in text and 'representation' in text
    out = torch.load(tmp_path / 'pm_mmseg.pth', weights_only=False)
    structure = out['meta']['pm_structure']
    model = our_backbone(num_layers=3, pm_cfg=structure['pm_cfg'])
    model.load_state_dict(strip(out['state_dict'], 'backbone.'), strict=True)
    assert osp.isfile(tmp_path / 'pm.json')

    # bad input: one line on stderr, exit code 2
    tool = load_tool('timm2mmseg')
    for argv, msg in [([str(tmp_path / 'seg.pth'), str(tmp_path / 'x.pth')],
                       'segmenter2mmseg.py'),
                      ([str(tmp_path / 'nope.pth'), str(tmp_path / 'x.pth')], 'not found')]:
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: tool.main(argv))
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith('error: ') and msg in err and '\n' not in err
    assert not osp.exists(tmp_path / 'x.pth')


def test_converter_cli_exit_code(tmp_path):
    torch.save({'net.conv1.weight': torch.zeros(1)}, tmp_path / 'unknown.pth')
    proc = run_script('tools/model_converters/pm_official2mmseg_pm.py',
                      str(tmp_path / 'unknown.pth'), str(tmp_path / 'out.pth'))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith('error: unrecognised checkpoint key layout')
    assert not osp.exists(tmp_path / 'out.pth')


# --------------------------------------------------------------------------------------------
# refusals before any work: SRC == DST, an output that cannot be written
# --------------------------------------------------------------------------------------------
def write_sources(tmp_path):
    """One small source checkpoint per tool, under ``tmp_path / 'src'``."""
    folder = tmp_path / 'src'
    folder.mkdir()
    torch.save(tiny_timm().state_dict(), folder / 'timm.pth')
    torch.save(segmenter_source()[0], folder / 'seg.pth')
    torch.save(pm_vit_source(depth=2, permute_block=None)[0], folder / 'pm.pth')
    return dict(zip(TOOLS, (folder / 'timm.pth', folder / 'seg.pth', folder / 'pm.pth')))


def refused(tool, argv, capsys):
    """Run a tool in-process as from the command line; returns its one-line error."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: load_tool(tool).main(argv))
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), captured.err
    assert 'Traceback' not in captured.err and captured.out == ''
    return lines[0]


@pytest.fixture
def nothing_read(monkeypatch):
    """Fail if a tool reads its source (the refusals come before any work)."""
    def read(path):
        raise AssertionError(f'{path} was read')
    monkeypatch.setattr('mmseg_pm.converters.cli.read_checkpoint', read)


@pytest.mark.parametrize('tool', TOOLS)
def test_refuses_dst_equal_src(tool, tmp_path, capsys, monkeypatch, nothing_read):
    src = write_sources(tmp_path)[tool]
    content, listing = src.read_bytes(), sorted(os.listdir(src.parent))
    os.symlink(src, tmp_path / 'link.pth')
    monkeypatch.chdir(tmp_path)
    for dst in (str(src), str(tmp_path / 'link.pth'), osp.join('src', '..', 'src', src.name)):
        err = refused(tool, [str(src), dst], capsys)
        assert 'overwrite the source' in err
    if tool == 'pm_official2mmseg_pm':
        err = refused(tool, [str(src), str(tmp_path / 'out.pth'), '--structure-json', str(src)],
                      capsys)
        assert '--structure-json' in err and 'overwrite the source' in err
    assert src.read_bytes() == content and sorted(os.listdir(src.parent)) == listing
    assert sorted(os.listdir(tmp_path)) == ['link.pth', 'src']


def test_refuses_dst_equal_src_from_the_shell(tmp_path):
    src = write_sources(tmp_path)['timm2mmseg']
    content = src.read_bytes()
    proc = run_script('tools/model_converters/timm2mmseg.py', str(src), str(src))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in proc.stderr
    assert 'overwrite the source' in lines[0]
    assert src.read_bytes() == content


@pytest.mark.parametrize('tool', TOOLS)
def test_refuses_unwritable_output(tool, tmp_path, capsys, monkeypatch, nothing_read):
    src = write_sources(tmp_path)[tool]
    read_only = tmp_path / 'read_only'
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes through mode bits: deny as for any other user
        access = os.access
        monkeypatch.setattr(os, 'access', lambda p, mode, **kw: False if (
            osp.abspath(p) == str(read_only) and mode & os.W_OK) else access(p, mode, **kw))
    (tmp_path / 'a_file').write_text('not a folder')
    (tmp_path / 'a_folder').mkdir()
    try:
        for dst, msg in [(read_only / 'out.pth', 'not a writable directory'),
                         (read_only / 'new' / 'out.pth', 'not a writable directory'),
                         (tmp_path / 'a_file' / 'out.pth', 'not a writable directory'),
                         (tmp_path / 'a_folder', 'is a directory')]:
            err = refused(tool, [str(src), str(dst)], capsys)
            assert msg in err and str(dst) in err
        if tool == 'pm_official2mmseg_pm':
            err = refused(tool, [str(src), str(tmp_path / 'out.pth'), '--structure-json',
                                 str(read_only / 'pm.json')], capsys)
            assert '--structure-json' in err and 'not a writable directory' in err
        assert os.listdir(read_only) == [] and os.listdir(tmp_path / 'a_folder') == []
        assert not osp.exists(tmp_path / 'out.pth')
    finally:
        read_only.chmod(0o755)
