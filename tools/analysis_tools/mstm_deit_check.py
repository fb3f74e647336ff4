"""MSTM on a timm DeiT-S classifier: GFLOPs at 224 and CPU throughput against the dense DeiT-S.

Usage:
  python tools/analysis_tools/mstm_deit_check.py [--keep-rate 0.7] [--blocks 3 6 9]
         [--fusion add|pool|cross_attn|concat|none] [--batch-size 8] [--iters N]
         [--rounds R] [--warmup W] [--threads T] [--seed S] [--out result.json]

A check, as far as a CPU without ImageNet allows, of the claim of Bian et al., "Multi-Scale And
Token Mergence: Make Your ViT More Efficient" (arXiv 2306.04897): DeiT-S 4.6 -> ~3.1 GFLOPs (33%
fewer) at a 0.1% top-1 drop. timm's ``deit_small_patch16_224`` is built with random weights
(``pretrained=False``: nothing is downloaded), its encoder converted into a ``TokenReductionViT``
(dense, and with MSTM) and its head put on the final class token
(:mod:`mmseg_pm.analysis.classification`). The dense model's logits are checked against timm's
(max abs difference <= 1e-4), then both are counted (mmengine.analysis, one multiply-add = one
FLOP, per image, both reduction-op conventions) and timed on the CPU: fp32, random normal
inputs, eval mode, ``torch.no_grad``, ``warmup`` untimed forwards each, then ``rounds`` rounds of
``iters`` timed forwards per model, the order reversed every other round (ABBA). Throughput is
batch / median latency; the MSTM / dense ratio is also given paired per round (median of the
per-round ratios) and of the minimum latencies, which resist a shared, loaded CPU better.
The accuracy part of the claim needs ImageNet and (re)training: it is not checked.
"""
import os
import statistics
import time

from mmseg_pm.utils.cli import ArgumentParser, check_output_file, quiet_logging, run_cli

PAPER = dict(dense_gflops=4.6, mstm_gflops=3.1, fewer_pct=33.0, top1_drop_pct=0.1,
             source='Bian et al., arXiv 2306.04897, abstract (DeiT-S)')
FUSIONS = ('add', 'pool', 'cross_attn', 'concat', 'none')
PARITY_TOL = 1e-4


def parse_args(argv=None):
    parser = ArgumentParser(description='MSTM on timm DeiT-S: GFLOPs and CPU throughput vs '
                            'dense (random weights)')
    parser.add_argument('--keep-rate', type=float, default=0.7,
                        help='MSTM crucial fraction per stage, in (0, 1] (default 0.7)')
    parser.add_argument('--blocks', type=int, nargs='+', default=[3, 6, 9],
                        help='0-based reduction blocks of the 12 (default 3 6 9)')
    parser.add_argument('--fusion', choices=FUSIONS, default='add',
                        help='multi-scale fusion before the first reduction (default add)')
    parser.add_argument('--batch-size', type=int, default=8, help='images per forward (8)')
    parser.add_argument('--iters', type=int, default=2,
                        help='timed forwards per model and round (default 2)')
    parser.add_argument('--rounds', type=int, default=10,
                        help='rounds, the order reversed every other one (ABBA; default 10)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed forwards per model first (default 2)')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--seed', type=int, default=0, help='seed of weights and inputs')
    parser.add_argument('--out', help='write the result as JSON here')
    args = parser.parse_args(argv)
    if not 0 < args.keep_rate <= 1:
        parser.error(f'--keep-rate must be in (0, 1], got {args.keep_rate}')
    if any(not 0 <= b < 12 for b in args.blocks) or len(set(args.blocks)) != len(args.blocks):
        parser.error(f'--blocks must be distinct block indices in 0..11, got {args.blocks}')
    for name in ('batch_size', 'iters', 'rounds'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.warmup < 0:
        parser.error(f'--warmup must be >= 0, got {args.warmup}')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be >= 1, got {args.threads}')
    if args.out:
        check_output_file(args.out, '--out')
    return args


def interleaved_throughput(models, x, warmup, rounds, iters):
    """Time two or more models on ``x``: ``warmup`` untimed forwards each, then ``rounds``
    rounds of ``iters`` timed forwards per model, the order reversed every other round (ABBA).

    Returns:
        dict: name -> ``latency_ms`` (:func:`~mmseg_pm.analysis.benchmark.latency_stats`, ms
        per forward of the batch), ``throughput_img_s`` (batch / median latency),
        ``samples_s`` (every timed forward, seconds, in order) and ``round_median_s``.
    """
    import torch

    from mmseg_pm.analysis.benchmark import latency_stats
    names = list(models)
    times = {n: [[] for _ in range(rounds)] for n in names}
    with torch.no_grad():
        for n in names:
            for _ in range(warmup):
                models[n](x)
        for r in range(rounds):
            for n in (names if r % 2 == 0 else names[::-1]):
                for _ in range(iters):
                    t0 = time.perf_counter()
                    models[n](x)
                    times[n][r].append(time.perf_counter() - t0)
    out = {}
    for n in names:
        flat = [t for per_round in times[n] for t in per_round]
        stats = latency_stats(flat)
        out[n] = dict(latency_ms=stats, throughput_img_s=1e3 * x.shape[0] / stats['median'],
                      samples_s=flat,
                      round_median_s=[statistics.median(t) for t in times[n]])
    return out


def speed_ratios(speed, ref='dense', other='mstm'):
    """Throughput ratios ``other / ref`` (> 1: ``other`` is faster) three ways: of the median
    latencies (the headline), the median over rounds of the per-round ratio (paired: the two
    models ran back to back, so load that drifts between rounds cancels), and of the minimum
    latencies (the least disturbed forward of each); plus the spread of each model
    (IQR / median) as a noise indicator."""
    a, b = speed[ref], speed[other]
    paired = [ra / rb for ra, rb in zip(a['round_median_s'], b['round_median_s'])]
    return dict(median=a['latency_ms']['median'] / b['latency_ms']['median'],
                paired_rounds=statistics.median(paired), paired_per_round=paired,
                min=a['latency_ms']['min'] / b['latency_ms']['min'],
                spread={n: speed[n]['latency_ms']['iqr'] / speed[n]['latency_ms']['median']
                        for n in (ref, other)})


def table(result):
    rows = result['models']
    head = ('| model | GFLOPs (M/R counted) | GFLOPs (M/R not counted) | tokens per block '
            '(CLS incl.) | img/s | throughput ratio |')
    lines = [head, '|' + '---|' * 6]
    dense = rows['dense']['throughput_img_s']
    for name, row in rows.items():
        f = row['flops']
        lines.append(f"| {row['label']} | {f['gflops_mr_counted']:.3f} | "
                     f"{f['gflops_mr_not_counted']:.3f} | {_tokens(f['tokens'])} | "
                     f"{row['throughput_img_s']:.2f} | {row['throughput_img_s'] / dense:.3f} |")
    return '\n'.join(lines)


def _tokens(tokens):
    """[197, 197, 197, 197, 139, ...] -> '197x4, 139x3, ...'."""
    runs = []
    for t in tokens:
        if runs and runs[-1][0] == t:
            runs[-1][1] += 1
        else:
            runs.append([t, 1])
    return ', '.join(f'{t}x{k}' for t, k in runs)


def main(argv=None):
    start = time.perf_counter()
    args = parse_args(argv)
    import timm
    import torch

    from mmseg_pm.analysis.benchmark import machine_info
    from mmseg_pm.analysis.classification import (CLASSIFIER_CONVENTION, classifier_from_timm,
                                                  count_classifier_flops)
    from mmseg_pm.errors import UserError
    from mmseg_pm.utils.io import save_json

    quiet_logging()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    timm_model = timm.create_model('deit_small_patch16_224', pretrained=False).eval()
    fusion = None if args.fusion == 'none' else args.fusion
    mstm_cfg = dict(type='MSTM', keep_rate=args.keep_rate, reduce_blocks=tuple(args.blocks),
                    fusion=fusion)
    dense = classifier_from_timm(timm_model)
    mstm = classifier_from_timm(timm_model, token_reduction=mstm_cfg)

    # parity: the dense TokenReductionViT classifier is timm's DeiT-S
    gen = torch.Generator().manual_seed(args.seed)
    probe = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        ref = timm_model(probe)
        diff = float((dense(probe) - ref).abs().max())
    parity = dict(max_abs_diff=diff, tol=PARITY_TOL, passed=diff <= PARITY_TOL,
                  logit_scale=float(ref.abs().max()), images=probe.shape[0])
    if not parity['passed']:
        raise UserError(f'dense TokenReductionViT logits differ from timm DeiT-S by {diff:.3g} '
                        f'(> {PARITY_TOL}): the conversion does not reproduce the model')

    flops = {name: count_classifier_flops(m, (224, 224))
             for name, m in (('dense', dense), ('mstm', mstm))}
    x = torch.randn(args.batch_size, 3, 224, 224, generator=gen)
    load_start = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    speed = interleaved_throughput(dict(dense=dense, mstm=mstm), x, args.warmup, args.rounds,
                                   args.iters)
    labels = dict(dense='DeiT-S dense (TokenReductionViT)',
                  mstm=f'DeiT-S + MSTM (keep {args.keep_rate:g}, blocks '
                       f'{"/".join(map(str, args.blocks))}, fusion {args.fusion})')
    models = {n: dict(label=labels[n], flops=flops[n], **speed[n]) for n in ('dense', 'mstm')}
    fd, fm = flops['dense'], flops['mstm']
    fewer = {conv: 100.0 * (1 - fm[f'flops_{conv}'] / fd[f'flops_{conv}'])
             for conv in ('mr_counted', 'mr_not_counted')}
    ratios = speed_ratios(speed)
    ratio = ratios['median']
    info = machine_info('cpu')
    info['loadavg_1min_start'] = load_start
    protocol = dict(
        model='timm deit_small_patch16_224, random weights (pretrained=False), seed '
              f'{args.seed}; encoder converted with convert_timm_vit into TokenReductionViT '
              '(LN eps 1e-6), timm head on the final class token',
        input='224x224, random normal (already normalised), fp32', batch=args.batch_size,
        warmup=args.warmup, rounds=args.rounds, iters=args.iters,
        samples_per_model=args.rounds * args.iters,
        order='ABBA: model order reversed every other round',
        timer='time.perf_counter per forward; throughput = batch / median latency',
        forward='classifier forward (logits), eval mode, torch.no_grad',
        flops=CLASSIFIER_CONVENTION, **info)
    result = dict(
        args=vars(args), mstm_cfg=mstm_cfg, parity=parity, models=models,
        gflops_fewer_pct=fewer, throughput_ratio=ratio, latency_ratio=1 / ratio,
        throughput_ratios=ratios,
        paper=PAPER, protocol=protocol)

    print('MSTM on DeiT-S, classification check (random weights)\n')
    print(f"parity: dense TokenReductionViT + timm head vs timm DeiT-S logits, max |diff| = "
          f"{diff:.2e} over {probe.shape[0]} images (tol {PARITY_TOL:g}, logits up to "
          f"{parity['logit_scale']:.2f}): {'passed' if parity['passed'] else 'FAILED'}\n")
    print(table(result))
    print(f"\nGFLOPs fewer: {fewer['mr_counted']:.1f}% (M/R counted), "
          f"{fewer['mr_not_counted']:.1f}% (M/R not counted); throughput ratio MSTM / dense "
          f"{ratio:.3f} of the median latencies (paired per round {ratios['paired_rounds']:.3f},"
          f" of the minima {ratios['min']:.3f})")
    spread = max(ratios['spread'].values())
    if spread > 0.1:
        print(f'warning: timings are noisy (IQR / median up to {spread:.0%}; the CPU is shared, '
              f'load avg {info.get("loadavg_1min")}): compare the paired and minimum ratios, '
              f'or rerun on an idle machine')
    print(f"paper claim ({PAPER['source']}): {PAPER['dense_gflops']} -> ~{PAPER['mstm_gflops']} "
          f"GFLOPs, {PAPER['fewer_pct']:.0f}% fewer; measured here {fd['gflops_mr_counted']:.2f} "
          f"-> {fm['gflops_mr_counted']:.2f} (M/R counted) / {fm['gflops_mr_not_counted']:.2f} "
          f"(M/R not counted)")
    print(f"the paper's \"{PAPER['top1_drop_pct']}% accuracy drop\" is not checked: it needs "
          f'ImageNet and pretrained / finetuned weights (random weights here)')
    print(f"\nprotocol: batch {args.batch_size}, input 224x224, fp32, device cpu "
          f"({info.get('cpu')}), threads {info['threads']}, torch {info['torch']}; warmup "
          f"{args.warmup}, {args.rounds} ABBA rounds x {args.iters} timed forwards per model, "
          f"medians; load avg (1 min) {load_start} at the start, {info.get('loadavg_1min')} at "
          f"the end ({info['cpu_count']} CPUs)")
    print(f'FLOPs: {CLASSIFIER_CONVENTION}; "M/R counted" adds the reducer\'s uncounted '
          f'weighted merges, "M/R not counted" removes its counted matmuls (CLS row, '
          f'similarity)')
    result['wall_s'] = time.perf_counter() - start
    print(f"wall time {result['wall_s']:.1f} s")
    if args.out:
        save_json(result, args.out)
        print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    run_cli(main)
