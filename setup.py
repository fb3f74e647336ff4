"""Installs the ``mmseg_pm`` package (``pip install -e .``).

The runtime requirements are read from ``requirements.txt`` so that both files always declare the
same version ranges. Install torch and mmcv first (``make install`` does, see README).
"""
import os.path as osp
import re

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(path='requirements.txt'):
    """Return the requirement lines of ``path`` without comments and blank lines."""
    with open(osp.join(HERE, path)) as f:
        lines = [line.split('#', 1)[0].strip() for line in f]
    return [line for line in lines if line]


def read_version():
    with open(osp.join(HERE, 'mmseg_pm', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


setup(
    name='mmseg_pm',
    version=read_version(),
    description='Prune-and-Merge token compression for plain-ViT segmentation in '
    'MMSegmentation 1.x',
    long_description=open(osp.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['mmseg_pm', 'mmseg_pm.*']),
    python_requires='>=3.8',
    install_requires=read_requirements('requirements.txt'),
    extras_require=dict(tests=read_requirements('requirements-test.txt')),
    zip_safe=False,
)
