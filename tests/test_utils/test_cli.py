"""Command-line plumbing of the tools (mmseg_pm.utils.cli): one-line errors, exit code 2."""
import argparse
import os

import pytest

from mmseg_pm.errors import CheckpointReadError, ConfigError, DataError, UserError
from mmseg_pm.utils.cli import (ArgumentParser, ConfigOptions, check_output_file,
                                check_writable_dir, one_line, parse_shape, run_cli)


def exit_of(main, capsys, argv=('tool.py', )):
    """(exit code, stdout, stderr) of ``run_cli(main)`` with ``sys.argv = argv``."""
    import sys
    old = sys.argv
    sys.argv = list(argv)
    try:
        with pytest.raises(SystemExit) as e:
            run_cli(main)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize('error', [UserError('bad\n  input'), ConfigError('keep_rate x'),
                                   DataError('no images'), CheckpointReadError('truncated'),
                                   FileNotFoundError('nope.pth')])
def test_user_errors_are_one_line(error, capsys):
    def main():
        print('progress')
        raise error
    code, out, err = exit_of(main, capsys)
    assert code == 2 and out == 'progress\n'
    assert err == f'error: {" ".join(str(error).split())}\n'


def test_success_and_return_codes(capsys):
    assert exit_of(lambda: None, capsys)[0] == 0
    assert exit_of(lambda: 1, capsys)[0] == 1


def test_bugs_keep_their_traceback(capsys):
    def main():
        raise KeyError('a bug')
    with pytest.raises(KeyError):
        run_cli(main)


def test_debug_shows_the_traceback_of_user_errors():
    import sys

    def main():
        raise UserError('bad')

    old = sys.argv
    sys.argv = ['tool.py', '--debug']
    try:
        with pytest.raises(UserError):
            run_cli(main)
        assert '--debug' not in sys.argv  # removed before the tool parses its arguments
    finally:
        sys.argv = old


def test_dataloader_worker_errors():
    """A DataError raised in a DataLoader worker comes back wrapped in the worker's
    traceback; the line is the original message."""
    text = ('Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent '
            'call last):\n  File "x.py", line 1, in f\nmmseg_pm.errors.DataError: annotation '
            'a.png has labels [200] outside 1..150')
    assert one_line(DataError(text)) == 'annotation a.png has labels [200] outside 1..150'
    assert one_line(ValueError('')) == 'ValueError'


def test_argument_parser_usage_error_is_one_line(capsys):
    parser = ArgumentParser(prog='tool.py')
    parser.add_argument('config')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions)
    with pytest.raises(SystemExit) as e:
        parser.parse_args([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and 'tool.py --help' in err
    with pytest.raises(SystemExit):
        parser.parse_args(['c.py', '--cfg-options', 'a=1', 'model.pretrained'])
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "got 'model.pretrained'" in err
    args = parser.parse_args(['c.py', '--cfg-options', 'a=1', 'b.c=[1,2]'])
    assert args.cfg_options == {'a': 1, 'b.c': [1, 2]}
    assert isinstance(parser, argparse.ArgumentParser)


def test_writable_dir_and_output_file(tmp_path):
    check_writable_dir(str(tmp_path / 'a' / 'b'), 'work directory')  # creatable
    assert not (tmp_path / 'a').exists()  # nothing is created
    (tmp_path / 'file.txt').write_text('x')
    with pytest.raises(UserError, match='file.txt is a file, not a directory'):
        check_writable_dir(str(tmp_path / 'file.txt' / 'work'), 'work directory')
    with pytest.raises(UserError, match='is a directory; give a file name'):
        check_output_file(str(tmp_path), '--out')
    src = str(tmp_path / 'file.txt')
    with pytest.raises(UserError, match='would be overwritten'):
        check_output_file(src, '--out', inputs=[src])
    os.symlink(src, tmp_path / 'link.txt')
    with pytest.raises(UserError, match='would be overwritten'):
        check_output_file(str(tmp_path / 'link.txt'), '--out', inputs=[src])
    check_output_file(str(tmp_path / 'new.json'), '--out', inputs=[str(tmp_path / 'file.txt')])


def test_parse_shape():
    assert parse_shape(None) is None
    assert parse_shape([64]) == (64, 64) and parse_shape([32, 48]) == (32, 48)
    for bad in ([0], [1, 2, 3], [-4, 4]):
        with pytest.raises(UserError, match='--shape takes H W'):
            parse_shape(bad)
