"""Export a (token-reduced) segmentor to ONNX and check onnxruntime against PyTorch.

Usage:
  python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT --out model.onnx [--shape H W]
         [--opset N] [--exporter auto|dynamo|torchscript] [--image IMAGE] [--tolerance 1e-3]
         [--cfg-options k=v ...]

Exports the segmentor's tensor-mode forward (``model(inputs, mode='tensor')``: normalised
``(1, 3, H, W)`` float32 images -> decode-head logits ``(1, classes, h, w)``) with static shapes
(a Prune-and-Merge model has a fixed token count: H x W must be its crop, the default) through
``torch.onnx.export``: the dynamo exporter when ``onnxscript`` is installed, else (or when it
fails) the TorchScript exporter (``dynamo=False``). Static methods export (Prune-and-Merge: the
structure's indices are constants of the graph and the sparse merge becomes
ScatterElements(reduction='add'); ToMe, EViT, MSTM: sort / top-k, gather and scatter ops with
counts fixed by the input size), opset >= 18 for the scatter reductions. A method whose token
count depends on the image (ALGM) is refused: a fixed-shape graph cannot hold it.
Then runs the file with onnxruntime on CPU on a real image (``--image``, resized to H x W and
normalised by the model's data pre-processor) or a random one, and prints the max abs
difference to PyTorch; exit code 1 when it exceeds ``--tolerance`` (default 1e-3, fp32).
A Prune-and-Merge config whose checkpoint carries no structure is refused.
"""
import os
import os.path as osp
import warnings

from mmseg_pm.errors import UserError
from mmseg_pm.utils.cli import (ArgumentParser, ConfigOptions, check_output_file, parse_shape,
                                quiet_logging, run_cli)


def parse_args():
    parser = ArgumentParser(description='Export a segmentor to ONNX (tensor mode)')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint (a compressed one carries the structure)')
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument('--shape', type=int, nargs='+', metavar='H W',
                        help='static input size (default: the crop / backbone img_size)')
    parser.add_argument('--opset', type=int, default=18, help='ONNX opset (default 18)')
    parser.add_argument('--exporter', choices=['auto', 'dynamo', 'torchscript'],
                        default='auto', help='auto: dynamo when onnxscript is installed, else '
                        '(or if it fails) the TorchScript exporter')
    parser.add_argument('--image', help='real image for the check (default: random input)')
    parser.add_argument('--tolerance', type=float, default=1e-3,
                        help='max abs difference allowed (default 1e-3)')
    parser.add_argument('--cfg-options', nargs='+', action=ConfigOptions,
                        help='override settings in the config, xxx=yyy format (mmseg syntax)')
    return parser.parse_args()


def tensor_mode(segmentor):
    """Wrap a segmentor as an ``nn.Module`` (eval mode) whose ``forward(x)`` is
    ``segmentor(x, mode='tensor')``: ``(B, 3, H, W)`` -> logits ``(B, classes, h, w)``."""
    from torch import nn

    class TensorMode(nn.Module):

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x, mode='tensor')

    return TensorMode(segmentor).eval()


def example_input(model, shape, image=None):
    """``(1, 3, H, W)`` float32: ``image`` resized and normalised by the model's data
    pre-processor, or ``torch.randn`` (seed 0) when no image is given.

    Raises:
        UserError: the image file does not exist.
    """
    import torch
    h, w = shape
    if image is None:
        return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    if not osp.isfile(image):
        raise UserError(f'image not found: {image} (looked in {osp.abspath(image)})')
    import mmcv
    img = mmcv.imresize(mmcv.imread(image), (w, h))  # BGR uint8, as LoadImageFromFile
    tensor = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    with torch.no_grad():
        return model.data_preprocessor(dict(inputs=[tensor]), training=False)['inputs']


def export(wrapper, x, out: str, opset: int, exporter: str = 'auto') -> str:
    """``torch.onnx.export`` with static shapes.

    ``exporter='auto'`` tries the dynamo exporter when ``onnxscript`` is installed and falls
    back to the TorchScript one (``dynamo=False``) if it is not or if it fails; 'dynamo' and
    'torchscript' force one.

    Returns:
        str: the exporter used ('dynamo' | 'torchscript').

    Raises:
        UserError: the forced exporter is unavailable.
    """
    import importlib.util

    import torch
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    has_onnxscript = importlib.util.find_spec('onnxscript') is not None
    if exporter == 'dynamo' and not has_onnxscript:
        raise UserError('--exporter dynamo needs the onnxscript package')
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if exporter in ('auto', 'dynamo') and has_onnxscript:
            try:
                torch.onnx.export(wrapper, (x, ), out, input_names=['inputs'],
                                  output_names=['logits'], opset_version=opset, dynamo=True)
                return 'dynamo'
            except Exception as e:  # fall back to the TorchScript exporter
                if exporter == 'dynamo':
                    raise
                print(f'dynamo exporter failed ({type(e).__name__}); using the TorchScript '
                      f'exporter')
        torch.onnx.export(wrapper, (x, ), out, input_names=['inputs'], output_names=['logits'],
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    return 'torchscript'


def main():
    args = parse_args()
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from mmseg_pm.analysis.build import check_shape_fits, default_input_shape, load_segmentor
    from mmseg_pm.models.backbones import reduction_backbone

    quiet_logging()
    if args.opset < 18:
        raise UserError('--opset must be >= 18 (the token merges are ONNX ScatterElements with '
                        'add / min reductions)')
    check_output_file(args.out, '--out', inputs=[args.checkpoint, args.config])
    if not args.out.endswith('.onnx'):
        raise UserError(f'--out must end with .onnx, got {args.out}')
    model = load_segmentor(args.config, args.checkpoint, args.cfg_options)
    backbone = reduction_backbone(model)
    if getattr(backbone, 'pm', None) is not None and not backbone.is_compressed:
        raise UserError(f'{args.checkpoint} carries no Prune-and-Merge structure, so the '
                        f'export would be the uncompressed model: export a compressed '
                        f'checkpoint (or use the baseline config for the baseline)')
    reducer = backbone.reducer if backbone is not None and backbone.is_reducing else None
    if reducer is not None and not reducer.static:
        raise UserError(f'{type(reducer).__name__}: the token count depends on the image, which '
                        f'a fixed-shape ONNX graph cannot hold; export a static method '
                        f'(PruneMerge, ToMe, EViT, MSTM)')
    shape = parse_shape(args.shape) or default_input_shape(model)
    check_shape_fits(model, shape)
    x = example_input(model, shape, args.image)
    wrapper = tensor_mode(model)
    with torch.no_grad():
        expected = wrapper(x).numpy()
    exporter = export(wrapper, x, args.out, args.opset, args.exporter)
    onnx.checker.check_model(args.out)
    session = ort.InferenceSession(args.out, providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != expected.shape:
        print(f'error: onnxruntime output shape {got.shape} != PyTorch {expected.shape}')
        return 1
    diff = float(np.abs(got - expected).max())
    what = type(reducer).__name__ if reducer is not None else 'uncompressed'
    print(f'exported {what} segmentor to {args.out} ({exporter} exporter, opset {args.opset}, '
          f'input 1x3x{shape[0]}x{shape[1]}, output {tuple(got.shape)})')
    print(f'onnxruntime (CPU) vs PyTorch on a {"real" if args.image else "random"} input: '
          f'max abs diff {diff:.3e} (tolerance {args.tolerance:g})')
    if not diff <= args.tolerance:
        print('error: the ONNX model does not match PyTorch')
        return 1
    return 0


if __name__ == '__main__':
    run_cli(main)
