"""Leave nothing behind when bad input stops a run after MMEngine's Runner started.

Most bad input is refused before the Runner exists (:mod:`.preflight`). Some is only found
while running, e.g. an annotation with labels out of range that the pre-flight check did not
open (``CheckLabelRange`` finds it when the image is loaded). The Runner has by then created
the work directory, a log folder ``work_dir/<timestamp>`` and a config dump.
"""
import contextlib
import os
import os.path as osp
import shutil

from ..errors import MMSegPMError


def _new_files(work_dir: str, before: set) -> list:
    return sorted(set(os.listdir(work_dir)) - before) if osp.isdir(work_dir) else []


def _holds_checkpoint(path: str) -> bool:
    if not osp.isdir(path):
        return path.endswith('.pth')
    return any(f.endswith('.pth') for _, _, files in os.walk(path) for f in files)


@contextlib.contextmanager
def discard_refused_run(work_dir: str):
    """On an :class:`~mmseg_pm.errors.MMSegPMError` inside the block, remove what the run
    added to ``work_dir`` (its log folder, the config dump; the work directory itself when
    the run created it) unless it produced results: a checkpoint or any other file, which are
    kept with the log. The error propagates (``run_cli`` prints it as one line).

    Use it around the Runner's construction and run::

        with discard_refused_run(cfg.work_dir):
            runner = Runner.from_cfg(cfg)
            runner.train()
    """
    work_dir = osp.abspath(work_dir)
    existed = osp.isdir(work_dir)
    before = set(os.listdir(work_dir)) if existed else set()
    created = []  # the folders the run will create, innermost first
    folder = work_dir
    while not osp.exists(folder) and osp.dirname(folder) != folder:
        created.append(folder)
        folder = osp.dirname(folder)
    try:
        yield
    except MMSegPMError:
        from mmengine.dist import is_main_process
        if not is_main_process():  # rank 0 created the folders
            raise
        new = [osp.join(work_dir, n) for n in _new_files(work_dir, before)]
        # a log folder (a directory without checkpoints) and config dumps only
        if all(osp.isdir(p) and not _holds_checkpoint(p) or p.endswith('.py') for p in new):
            for path in new:
                shutil.rmtree(path, ignore_errors=True) if osp.isdir(path) else os.remove(path)
            for folder in created:
                if osp.isdir(folder) and not os.listdir(folder):
                    os.rmdir(folder)
        raise


__all__ = ['discard_refused_run']
