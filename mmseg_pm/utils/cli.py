"""Command-line plumbing shared by ``tools/*.py``: one-line errors, argument helpers."""
import os.path as osp
import sys
from typing import Callable, Optional, Sequence, Tuple

from ..errors import MMSegPMError, UserError


def run_cli(main: Callable[[], Optional[int]]) -> None:
    """Run a tool's ``main``: errors the user can fix (:class:`mmseg_pm.errors.MMSegPMError`,
    a missing file) print as one ``error: ...`` line on stderr and exit with code 2; any other
    exception is a bug and keeps its traceback. ``--debug`` on the command line shows the
    traceback of user errors too."""
    debug = '--debug' in sys.argv
    if debug:
        sys.argv.remove('--debug')
    try:
        code = main()
    except (MMSegPMError, FileNotFoundError) as e:
        if debug:
            raise
        message = ' '.join(str(e).split()) or type(e).__name__
        print(f'error: {message}', file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


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


__all__ = ['run_cli', 'parse_shape', 'config_name', 'quiet_logging']
