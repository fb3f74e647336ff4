"""tools/deployment/pytorch2onnx.py on the tiny models: onnxruntime matches PyTorch."""
import re

import pytest

from tests.utils import first_image, run_tool

pytestmark = pytest.mark.e2e  # runs the tool on the real sample's images

TOOL = 'tools/deployment/pytorch2onnx.py'


@pytest.mark.parametrize('model', ['pm', 'tome'])
def test_export_matches_pytorch(model, tiny_files, tmp_path):
    config = tiny_files['config' if model == 'pm' else 'tome_config']
    out = tmp_path / f'{model}.onnx'
    proc = run_tool(TOOL, config, tiny_files[model], '--out', str(out), '--image',
                    first_image(tiny_files['data_root']))
    assert out.is_file()
    diff = float(re.search(r'max abs diff ([0-9.e+-]+)', proc.stdout).group(1))
    assert diff < 1e-3, proc.stdout
    what = 'PruneMerge' if model == 'pm' else 'ToMe'
    assert f'exported {what} segmentor' in proc.stdout
    assert 'on a real input' in proc.stdout
