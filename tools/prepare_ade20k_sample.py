"""Moved to ``tools/dataset_converters/prepare_ade20k_sample.py`` (mmseg's place for dataset
tools); this path keeps working with the same arguments."""
import os.path as osp
import runpy

if __name__ == '__main__':
    runpy.run_path(osp.join(osp.dirname(osp.abspath(__file__)), 'dataset_converters',
                            'prepare_ade20k_sample.py'), run_name='__main__')
