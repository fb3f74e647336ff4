"""Command-line plumbing shared by ``tools/*.py``: one-line errors, argument helpers."""
import argparse
import gc
import os
import os.path as osp
import sys
import tempfile
from typing import Callable, Optional, Sequence, Tuple

from mmengine.config import DictAction

from ..errors import MMSegPMError, UserError


def run_cli(main: Callable[[], Optional[int]]) -> None:
    """Run a tool's ``main``: errors the user can fix (:class:`mmseg_pm.errors.MMSegPMError`,
    a missing file) print as one ``error: ...`` line on stderr and exit with code 2; any other
    exception is a bug and keeps its traceback (exit code 1). ``--debug`` on the command line
    shows the traceback of user errors too. Before exiting, a distributed process group is
    destroyed (:func:`destroy_dist`)."""
    debug = '--debug' in sys.argv
    if debug:
        sys.argv.remove('--debug')
    try:
        code = main()
    except Exception as e:  # noqa: BLE001  (user errors, also from a DataLoader worker)
        if debug or not (isinstance(e, (MMSegPMError, FileNotFoundError)) or _from_worker(e)):
            raise
        print(f'error: {one_line(e)}', file=sys.stderr)
        code = 2
    destroy_dist()
    sys.exit(code or 0)


def destroy_dist() -> None:
    """Destroy the default process group, if one was created, and join gloo's worker threads.

    MMEngine's ``Runner`` never destroys the group. Without this the threads outlive
    ``sys.exit``: a worker that drops the last reference to a finished collective's tensors
    (e.g. the receive buffer of ``broadcast_object_list``, MMEngine's last call in
    ``BaseMetric.evaluate``) after interpreter finalization started needs the GIL, CPython ends
    such a thread with ``pthread_exit``, and the unwind through a ``noexcept`` destructor
    aborts the process (``terminate called without an active exception``, SIGABRT, torchrun
    exit code 1) after a successful run. The runner and its DDP model (whose reducer holds the
    group) sit in reference cycles, so they are collected first; ``destroy_process_group`` then
    drops the last reference, whose destructor waits for the workers with the GIL released.
    No-op without an initialised group (single-process runs). Not called after an unexpected
    exception: a rank that failed inside a collective can keep pending work.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _from_worker(e: BaseException) -> bool:
    """True for a :class:`MMSegPMError` re-raised by a PyTorch DataLoader worker (which wraps
    the original message and traceback into a new exception of the same class)."""
    return isinstance(e, MMSegPMError) or 'in DataLoader worker process' in str(e) and any(
        line.startswith('mmseg_pm.errors.') for line in str(e).splitlines())


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (for a DataLoader worker's re-raise: the original
    error's message, without the worker's traceback)."""
    text = str(e)
    if 'in DataLoader worker process' in text:
        for line in reversed(text.splitlines()):
            if line.startswith('mmseg_pm.errors.'):
                text = line.split(': ', 1)[-1]
                break
    return ' '.join(text.split()) or type(e).__name__


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error: ...`` line (exit 2)."""

    def error(self, message: str):
        print(f'error: {message} (see {self.prog} --help)', file=sys.stderr)
        sys.exit(2)


class ConfigOptions(DictAction):
    """mmengine's ``DictAction`` for ``--cfg-options key=value ...`` that reports a token
    without ``=`` as a usage error instead of a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values or [] if '=' not in v]
        if bad:
            parser.error(f'{option_string} takes key=value pairs (mmseg syntax, e.g. '
                         f'train_dataloader.batch_size=2), got {bad[0]!r}')
        super().__call__(parser, namespace, values, option_string)


def check_writable_dir(path: str, what: str) -> None:
    """Raise UserError unless ``path`` is, or can be created as, a writable directory.

    Nothing is left behind: the first existing ancestor must be a writable directory, which
    a temporary file (deleted at once) proves where the mode bits cannot (root, read-only or
    special file systems).
    """
    path = osp.abspath(path)
    probe = path
    while not osp.exists(probe):
        parent = osp.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not osp.isdir(probe):
        raise UserError(f'{what} {path}: {probe} is a file, not a directory')
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f'{what} {path} is not writable ({probe}: permission denied); '
                        f'choose another location')
    try:  # what the mode bits do not say (read-only or special file systems, root)
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UserError(f'{what} {path} is not writable ({probe}: '
                        f'{e.strerror or type(e).__name__}); choose another location') from None


def check_output_file(path: str, what: str = 'output file', inputs: Sequence[str] = ()) -> None:
    """Raise UserError unless ``path`` can be written: its folder writable, not a directory,
    not one of ``inputs`` (which would be overwritten)."""
    if osp.isdir(path):
        raise UserError(f'{what} {path} is a directory; give a file name')
    for src in inputs:
        if src and osp.exists(src) and osp.exists(path) and osp.samefile(src, path) or \
                src and osp.abspath(src) == osp.abspath(path):
            raise UserError(f'{what} {path} is the input {src}; it would be overwritten: '
                            f'give another path')
    check_writable_dir(osp.dirname(osp.abspath(path)), f'the folder of {what}')


def parse_shape(shape: Optional[Sequence[int]]) -> Optional[Tuple[int, int]]:
    """``--shape H [W]`` -> ``(H, W)`` (square when one value); None stays None.

    Raises:
        UserError: not one or two positive integers.
    """
    if shape is None:
        return None
    if len(shape) == 1:
        shape = (shape[0], shape[0])
    if len(shape) != 2 or min(shape) < 1:
        raise UserError(f'--shape takes H W (positive pixels), got {list(shape)}')
    return int(shape[0]), int(shape[1])


def config_name(config) -> str:
    """Stem of a config path (``'pm_segmenter_vit-s_ade20k'``) for tables and JSON."""
    path = config if isinstance(config, str) else getattr(config, 'filename', 'config')
    return osp.splitext(osp.basename(str(path)))[0]


def quiet_logging(level: str = 'WARNING') -> None:
    """Make MMEngine's current logger print only ``level`` and above (for the tools, which run
    no Runner: mmengine's ``init_weights`` otherwise logs one INFO block per parameter)."""
    from mmengine.logging import MMLogger
    MMLogger.get_instance('mmseg_pm_tools', log_level=level)


__all__ = ['run_cli', 'one_line', 'ArgumentParser', 'ConfigOptions', 'check_writable_dir',
           'check_output_file', 'parse_shape', 'config_name', 'quiet_logging']
