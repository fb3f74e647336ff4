"""tools/analysis_tools/visualize_tokens.py: group boundaries of any token-reduction method
over an image, the prediction beside it."""
import matplotlib.image as mpimg
import pytest

from tests.utils import first_image, run_tool

pytestmark = pytest.mark.e2e  # runs the tool on the real sample's images

TOOL = 'tools/analysis_tools/visualize_tokens.py'
TITLE_PX, FOOTER_PX = 30, 22


def png_size(path):
    h, w = mpimg.imread(str(path)).shape[:2]
    return w, h


def test_prune_merge_panels(tiny_files, tmp_path):
    out = tmp_path / 'tokens.png'
    proc = run_tool(TOOL, tiny_files['config'], tiny_files['pm'],
                    first_image(tiny_files['data_root']), '--out', str(out), '--steps', '0', '1',
                    '--panel-size', '200')
    assert 'PruneMerge steps at blocks [0, 1], grid 4x4' in proc.stdout
    # 2 steps + the prediction; the sample's images are wider than high: panels of the image's
    # aspect ratio (at most 2:1)
    w, h = png_size(out)
    assert h == 200 + TITLE_PX + FOOTER_PX and w % 3 == 0 and 3 * 200 <= w <= 3 * 400


@pytest.mark.parametrize('script', [TOOL, 'tools/visualize_tokens.py'])
def test_any_method_and_the_old_path(script, tiny_files, tmp_path):
    """ToMe's image-dependent groups are drawn too; the old path still works."""
    out = tmp_path / 'tome.png'
    proc = run_tool(script, tiny_files['tome_config'], tiny_files['tome'],
                    first_image(tiny_files['data_root']), '--out', str(out), '--panel-size',
                    '100')
    assert 'ToMe steps at blocks' in proc.stdout and out.is_file()
    assert png_size(out)[1] == 100 + TITLE_PX + FOOTER_PX
