"""Peak memory of one forward pass (CUDA allocator; CPU resident set size)."""
import re
import resource

import torch
from torch import Tensor, nn


def _status_kib(field: str):
    try:
        with open('/proc/self/status') as f:
            m = re.search(rf'^{field}:\s+(\d+)\s+kB', f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_cpu_peak() -> bool:
    """Reset the process's peak RSS (Linux: ``/proc/self/clear_refs``), after handing freed
    heap pages back to the OS (glibc ``malloc_trim``) so that RSS is live memory."""
    import ctypes
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _status_kib('VmHWM') is not None
    except OSError:
        return False


def peak_memory(forward, device: str) -> dict:
    """Peak memory of one call of ``forward()``, in MiB.

    Returns:
        dict: ``kind`` ('cuda_max_allocated' | 'rss_peak' | 'rss_process_peak'), ``peak_mib``
        (CUDA: max allocated during the call; CPU: peak resident set size of the process
        during the call, which includes every model loaded) and ``forward_mib`` (peak minus
        the amount before: the call's own working memory; None when the CPU peak cannot be
        reset).
    """
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return dict(kind='cuda_max_allocated', peak_mib=peak / 2**20,
                    forward_mib=(peak - before) / 2**20)
    if _reset_cpu_peak():
        before = _status_kib('VmRSS')
        forward()
        peak = _status_kib('VmHWM')
        return dict(kind='rss_peak', peak_mib=peak / 1024, forward_mib=(peak - before) / 1024)
    forward()
    return dict(kind='rss_process_peak',
                peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                forward_mib=None)


def forward_peak_memory(model: nn.Module, x: Tensor, device: str, autocast) -> dict:
    """:func:`peak_memory` of ``model(x, mode='tensor')`` under ``torch.no_grad`` and the
    ``autocast`` context manager factory."""
    def forward():
        with torch.no_grad(), autocast():
            model(x, mode='tensor')
    return peak_memory(forward, device)


__all__ = ['peak_memory', 'forward_peak_memory']
