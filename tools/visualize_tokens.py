"""Moved to ``tools/analysis_tools/visualize_tokens.py`` (mmseg keeps visualisers there); this
path keeps working with the same arguments."""
import os.path as osp
import runpy

if __name__ == '__main__':
    runpy.run_path(osp.join(osp.dirname(osp.abspath(__file__)), 'analysis_tools',
                            'visualize_tokens.py'), run_name='__main__')
