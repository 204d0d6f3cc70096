"""GPU speed of the CUDA ops and of training, side by side with the reference ops (needs a CUDA GPU).

    python benchmarks/gpu_speed.py                      # ~5-8 min on one H100 (first run builds the kernels)
    python benchmarks/gpu_speed.py --skip-training      # op timings only, ~1 min
    python benchmarks/gpu_speed.py --methods=none,dia --kimg=2

1. Ops: upfirdn2d / bias_act calls at the sizes a 256x256 paper256 run uses at batch 32, reference
   path vs CUDA kernels (forward, and forward + backward), fp16 and fp32: the median wall time per
   call, and the GPU time (the kernels' summed durations, from the profiler).
2. Training: sec/kimg and peak GPU memory of the paper256 recipe at 256x256, batch 32, on a
   synthetic dataset (toy:colored-digits rendered at 256x256), for plain StyleGAN2 with the
   reference ops and with the CUDA kernels, and for every fairness method (CUDA kernels). Each run
   is a separate process (a crash or out-of-memory in one does not stop the rest); it trains
   --warmup-kimg, then is timed over --kimg including one tick (hooks' per-tick work counts).
Methods that need an auxiliary classifier get an untrained `labels:` classifier, IMLE a random-weight
VGG16 for LPIPS (speed does not depend on weights); dia runs phase 2 and two LDR recordings inside
the timed part. With --official DIR, also runs the official train.py and ours with one command line
and reports both sec/kimg side by side. Writes benchmarks/results/gpu_speed.md.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from training_hooks import TrainingHook  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Op timings

def median_ms(fn, iters=30, warmup=5, calls=10):
    """Median over `iters` samples of the mean time per call of `calls` back-to-back calls: queued
    calls as in training (the CPU runs ahead of the GPU), and less exposed to one call's CPU jitter."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def kernel_ms(fn, iters=20, warmup=3):
    """GPU time per call: the summed durations of the kernels `fn` launches (CUPTI, via the profiler),
    without the host time between launches. It is what an op costs once the CPU runs ahead of the
    GPU, as it does in a training step; `median_ms` on small tensors measures the host instead."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    # The device-side events are the kernels (and memsets/copies) themselves, each with its own interval.
    total_us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    if total_us <= 0:
        raise RuntimeError('the profiler recorded no GPU kernels (is CUPTI available?)')
    return total_us / 1e3 / iters


def op_cases(device, dtype):
    """(name, make_inputs, op(inputs, impl)) at the sizes of a 256x256 paper256 step, batch 32."""
    from stylegan2_fair.ops import bias_act, upfirdn2d
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)

    def images(*shape):
        return lambda: [torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)]

    def with_bias(*shape):
        return lambda: [torch.randn(shape, device=device, dtype=dtype).requires_grad_(True),
                        torch.randn(shape[1], device=device, dtype=dtype).requires_grad_(True)]
    return [
        ('upsample2d [32,256,64,64] (G up, 64->128)', images(32, 256, 64, 64),
         lambda t, impl: upfirdn2d.upsample2d(t[0], f, impl=impl)),
        ('upfirdn2d pad 1 gain 4 [32,128,129,129] (G conv up, after the transposed conv)', images(32, 128, 129, 129),
         lambda t, impl: upfirdn2d.upfirdn2d(t[0], f, padding=1, gain=4, impl=impl)),
        ('upsample2d [32,3,128,128] (toRGB skip)', images(32, 3, 128, 128),
         lambda t, impl: upfirdn2d.upsample2d(t[0], f, impl=impl)),
        ('downsample2d [32,64,256,256] (D skip, 256->128)', images(32, 64, 256, 256),
         lambda t, impl: upfirdn2d.downsample2d(t[0], f, impl=impl)),
        ('upfirdn2d pad 2 [32,64,256,256] (D conv down, before the strided conv)', images(32, 64, 256, 256),
         lambda t, impl: upfirdn2d.upfirdn2d(t[0], f, padding=2, impl=impl)),
        ('bias_act lrelu clamp 256 [32,64,256,256]', with_bias(32, 64, 256, 256),
         lambda t, impl: bias_act.bias_act(t[0], t[1], act='lrelu', clamp=256, impl=impl)),
        ('bias_act lrelu [32,256,64,64]', with_bias(32, 256, 64, 64),
         lambda t, impl: bias_act.bias_act(t[0], t[1], act='lrelu', impl=impl)),
        ('bias_act linear [32,512] (mapping)', with_bias(32, 512),
         lambda t, impl: bias_act.bias_act(t[0], t[1], act='linear', impl=impl)),
        # Low resolutions: the generic upfirdn2d kernel and the flat bias_act kernel.
        ('upsample2d [32,512,8,8] (G up, 8->16)', images(32, 512, 8, 8),
         lambda t, impl: upfirdn2d.upsample2d(t[0], f, impl=impl)),
        ('bias_act lrelu [32,512,8,8]', with_bias(32, 512, 8, 8),
         lambda t, impl: bias_act.bias_act(t[0], t[1], act='lrelu', impl=impl)),
        # paper256 runs 32x32 and up in fp16 (num_fp16_res=4): its largest fp32 maps are these.
        ('bias_act lrelu [32,512,16,16] (largest fp32 maps)', with_bias(32, 512, 16, 16),
         lambda t, impl: bias_act.bias_act(t[0], t[1], act='lrelu', impl=impl)),
    ]


def benchmark_ops(device):
    rows = []
    torch.backends.cudnn.benchmark = True
    for dtype in (torch.float16, torch.float32):
        for name, make, op in op_cases(device, dtype):
            try:
                inputs = make()
                out = op(inputs, 'ref')
                grad = torch.randn_like(out)

                def forward(impl):
                    with torch.no_grad():
                        op(inputs, impl)

                def forward_backward(impl):
                    torch.autograd.grad(op(inputs, impl), inputs, grad)
                row = dict(op=name, dtype=str(dtype).replace('torch.', ''))
                for label, fn in (('fwd', forward), ('fwd+bwd', forward_backward)):
                    row[f'{label} ref ms'] = median_ms(lambda: fn('ref'))
                    # 'auto' is what training runs: the kernels, except tiny bias_act calls
                    # (bias_act.MIN_KERNEL_NUMEL), which stay on the reference ops.
                    row[f'{label} cuda ms'] = median_ms(lambda: fn('auto'))
                    row[f'{label} speed-up'] = row[f'{label} ref ms'] / row[f'{label} cuda ms']
                    try:  # the profiler needs CUPTI; without it the wall figures still stand
                        row[f'{label} ref gpu ms'] = kernel_ms(lambda: fn('ref'))
                        row[f'{label} cuda gpu ms'] = kernel_ms(lambda: fn('auto'))
                    except RuntimeError as err:
                        print(f'no GPU time for {name}: {err}', flush=True)
                        row[f'{label} ref gpu ms'] = row[f'{label} cuda gpu ms'] = float('nan')
                    row[f'{label} gpu speed-up'] = row[f'{label} ref gpu ms'] / row[f'{label} cuda gpu ms']
                del inputs, out, grad
            except Exception as err:  # one failing case (e.g. out of memory) must not hide the others
                row = dict(op=name, dtype=str(dtype).replace('torch.', ''), error=f'{type(err).__name__}: {err}'[:200])
            torch.cuda.empty_cache()
            rows.append(row)
            print(format_op_row(row), flush=True)
    return rows


OP_COLUMNS = [f'{label} {what}' for label in ('fwd', 'fwd+bwd') for what in
              ('ref ms', 'cuda ms', 'speed-up', 'ref gpu ms', 'cuda gpu ms', 'gpu speed-up')]


def format_op_row(row):
    if 'error' in row:
        return f"| {row['op']} | {row['dtype']} | failed: {row['error']} |" + ' |' * (len(OP_COLUMNS) - 1)
    cells = [f'{row[c]:.2f}x' if c.endswith('speed-up') else f'{row[c]:.3f}' for c in OP_COLUMNS]
    return f"| {row['op']} | {row['dtype']} | " + ' | '.join(cells) + ' |'


# ----------------------------------------------------------------------------------------------
# Training timings (each in its own process: `gpu_speed.py train-one ...`)

def train_one(opts):
    """Train one configuration and print one `RESULT {json}` line."""
    import training_hooks
    from stylegan2_fair.cli.train import setup_training_options
    from stylegan2_fair.training_loop import TrainingLoop

    os.environ['STYLEGAN2_FAIR_OPS'] = opts.ops
    cli_kwargs = dict(json.loads(opts.hook_options))
    _, args = setup_training_options(data=opts.data, cfg='paper256', batch=opts.batch, workers=opts.workers,
                                     device=opts.device, fair_method=opts.method, kimg_per_tick=opts.kimg,
                                     hook_kwargs=cli_kwargs)
    args['batch_gpu'] = min(opts.batch_gpu, args['batch_size'])
    if opts.channel_base is not None:  # smaller networks, for the CPU smoke test
        args['G_kwargs']['synthesis_kwargs']['channel_base'] = args['D_kwargs']['channel_base'] = opts.channel_base
    hooks = training_hooks.create_hooks(args['fair_method'], args['hook_kwargs'])
    timer = StepTimer(warmup_nimg=opts.warmup_kimg * 1000)
    kwargs = {k: v for k, v in args.items() if k not in ('num_gpus', 'fair_method', 'hook_kwargs', 'device')}
    kwargs.update(image_snapshot_ticks=None, network_snapshot_ticks=None, metrics=[],
                  total_kimg=opts.warmup_kimg + opts.kimg)
    with tempfile.TemporaryDirectory() as run_dir:
        loop = TrainingLoop(run_dir=run_dir, hooks=hooks + [timer], device=opts.device, progress=False, **kwargs)
        setup_start = time.time()
        loop.train()
    sec_per_kimg = (timer.end_time - timer.start_time) / ((timer.end_nimg - timer.start_nimg) / 1000)
    result = dict(method=opts.method, ops=opts.ops, sec_per_kimg=sec_per_kimg,
                  peak_mem_gib=timer.peak_bytes / 2**30,
                  total_sec=time.time() - setup_start, batch=args['batch_size'], batch_gpu=args['batch_gpu'])
    print('RESULT ' + json.dumps(result), flush=True)


class StepTimer(TrainingHook):
    """A hook that clocks training: starts once the warm-up images are done (resetting the peak
    memory meter), and keeps the time and image count of the latest step."""
    name = 'gpu_speed_timer'

    def __init__(self, warmup_nimg):
        self.warmup_nimg = warmup_nimg
        self.start_time = self.start_nimg = self.end_time = self.end_nimg = None
        self.peak_bytes = 0

    def on_step_end(self, run):
        cuda = run.device.type == 'cuda'
        if cuda:
            torch.cuda.synchronize()
        if self.start_time is None and run.cur_nimg >= self.warmup_nimg:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            self.start_time, self.start_nimg = time.time(), run.cur_nimg
        elif self.start_time is not None and cuda:
            # Read every step: the loop resets the peak meter at each tick for its status line.
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated())
        self.end_time, self.end_nimg = time.time(), run.cur_nimg


def run_training(opts, method, ops, hook_options):
    cmd = [sys.executable, os.path.abspath(__file__), 'train-one', f'--data={opts.data}', f'--method={method}',
           f'--ops={ops}', f'--kimg={opts.kimg}', f'--warmup-kimg={opts.warmup_kimg}', f'--batch={opts.batch}',
           f'--batch-gpu={opts.batch_gpu}', f'--workers={opts.workers}', f'--device={opts.device}',
           f'--hook-options={json.dumps(hook_options)}'] + ([f'--channel-base={opts.channel_base}']
                                                          if opts.channel_base else [])
    print(f'$ {" ".join(cmd)}', flush=True)
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=opts.run_timeout)
    except subprocess.TimeoutExpired:
        return dict(method=method, ops=ops, error=f'no result within --run-timeout={opts.run_timeout:g} s')
    for line in out.stdout.splitlines():
        if line.startswith('RESULT '):
            return json.loads(line[len('RESULT '):])
    tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
    return dict(method=method, ops=ops, error=' / '.join(tail)[-300:] or f'exit code {out.returncode}')


def make_classifier(data, path):
    """An untrained `labels:` classifier over the dataset's classes, for methods that need one."""
    from stylegan2_fair.classifiers.small_cnn import LabelClassifier
    from stylegan2_fair.dataset import ImageFolderDataset
    dataset = ImageFolderDataset(path=data, use_labels=True)
    num_classes = max(int(dataset.label_dim), 2)
    LabelClassifier([f'class{k}' for k in range(num_classes)], resolution=64, channels=dataset.num_channels).save(path)
    return f'labels:{path}'


def hook_options_for(method, classifier, opts):
    """train.py options for a method: the classifier; the LPIPS backbone (IMLE's perceptual distance:
    'random' weights where VGG16's cannot be downloaded; speed does not depend on them); for dia, its
    costliest state in the timed part: phase 2 (auxiliary D) from the start and two LDR recordings."""
    import inspect

    import training_hooks
    if method == 'none':
        return {}
    params = inspect.signature(training_hooks.get_hook_class(method).__init__).parameters
    options = {'classifier': classifier} if 'classifier' in params else {}
    if 'lpips_backbone' in params:
        options['lpips_backbone'] = opts.lpips_backbone
    if method == 'dia':
        options.update(dia_phase2_kimg=opts.warmup_kimg, dia_record_every=opts.kimg / 2)
    return options


def prepare_dataset(opts):
    from stylegan2_fair.cli.dataset_tool import convert_dataset
    os.makedirs(opts.workdir, exist_ok=True)
    res = opts.resolution
    opts.data = os.path.join(opts.workdir, f'colored-digits-{res}-{opts.num_images}.zip')
    if not os.path.exists(opts.data):
        print(f'Rendering {opts.num_images} {res}x{res} images into {opts.data}...', flush=True)
        convert_dataset('toy:colored-digits', opts.data, resolution=res, num_images=opts.num_images, progress=False)


def benchmark_training(opts):
    import training_hooks
    classifier = make_classifier(opts.data, os.path.join(opts.workdir, 'untrained-classifier.pt'))
    methods = training_hooks.list_hooks() if opts.methods == 'all' else training_hooks.parse_methods(opts.methods)
    configs = ([] if opts.skip_ref_training else [('none', 'ref', {})]) + [('none', 'cuda', {})] + \
        [(m, 'cuda', {}) for m in methods if m != 'none']
    if 'imle' in methods:  # the cheaper composition measured on CPU (results/imle.md): terms every 4th step
        configs.append(('imle', 'cuda', dict(imle_pairs=4, imle_interval=4)))
    rows = []
    for method, ops, extra in configs:
        row = run_training(opts, method, ops, dict(hook_options_for(method, classifier, opts), **extra))
        if extra:
            row['variant'] = ', '.join(f'{k.split("_", 1)[1]} {v}' for k, v in extra.items())
        rows.append(row)
        print(format_train_row(row, plain_cuda_row(rows)), flush=True)
    return rows


def format_train_row(row, plain):
    """One table row; `plain` is plain StyleGAN2 with the CUDA ops, the yardstick of the ratio column."""
    label = 'StyleGAN2' if row['method'] == 'none' else row['method']
    label += f" ({'reference ops' if row['ops'] == 'ref' else 'CUDA ops'}{', ' + row['variant'] if 'variant' in row else ''})"
    if 'error' in row:
        return f"| {label} | failed: {row['error']} | | |"
    ratio = f"{row['sec_per_kimg'] / plain['sec_per_kimg']:.2f}" if plain and 'sec_per_kimg' in plain else ''
    return f"| {label} | {row['sec_per_kimg']:.2f} | {ratio} | {row['peak_mem_gib']:.1f} |"


def plain_cuda_row(rows):
    return next((r for r in rows if r['method'] == 'none' and r['ops'] == 'cuda'), None)


# ----------------------------------------------------------------------------------------------
# Our train.py against the official one: same command line, same GPU, sec/kimg from the tick lines

TICK_RE = re.compile(r'^tick\s+(\d+).*?sec/kimg\s+([\d.]+)(?:.*?gpumem\s+([\d.]+))?')


def run_cli(opts, name, train_cmd):
    """Run one train.py for --cli-kimg kimg and return the median sec/kimg of ticks 2 and later (tick 0
    is the first step, with the kernel builds; tick 1 may still hold cuDNN autotuning) and the peak GPU
    memory those ticks report."""
    outdir = os.path.join(opts.workdir, f'cli-{name}')
    cmd = [sys.executable] + train_cmd + [f'--outdir={outdir}', f'--data={opts.data}', '--gpus=1', '--cfg=paper256',
           f'--batch={opts.batch}', f'--kimg={opts.cli_kimg}', '--metrics=none', '--snap=1000', '--seed=0']
    print(f'$ {" ".join(cmd)}', flush=True)
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=opts.run_timeout)
        stdout, stderr, ended = out.stdout, out.stderr, f'exit code {out.returncode}'
    except subprocess.TimeoutExpired as err:  # the ticks it did finish still count
        stdout, stderr = (_text(err.stdout), _text(err.stderr))
        ended = f'stopped after --run-timeout={opts.run_timeout:g} s'
    with open(os.path.join(opts.workdir, f'cli-{name}.log'), 'w') as f:
        f.write(f'$ {" ".join(cmd)}\n{stdout}\n--- stderr ---\n{stderr}\n{ended}\n')
    ticks = [m.groups() for m in map(TICK_RE.match, stdout.splitlines()) if m]
    steady = [(float(sec), float(mem or 'nan')) for tick, sec, mem in ticks if int(tick) >= 2]
    if not steady:
        tail = (stderr or stdout).strip().splitlines()[-4:]
        return dict(name=name, error=f'{ended}: ' + ' / '.join(tail)[-400:])
    return dict(name=name, sec_per_kimg=statistics.median(s for s, _ in steady),
                peak_mem_gib=max(m for _, m in steady), ticks=len(steady),
                warnings=sorted({ln.strip()[:160] for ln in stderr.splitlines() if 'warn' in ln.lower()})[:5])


def _text(data):
    return data.decode(errors='replace') if isinstance(data, bytes) else (data or '')


def benchmark_cli(opts):
    rows = [run_cli(opts, 'official', [os.path.join(REPO, 'benchmarks', '_official_train.py'),
                                       os.path.abspath(opts.official)]),
            run_cli(opts, 'stylegan2-fair', [os.path.join(REPO, 'train.py')])]
    for row in rows:
        print(format_cli_row(row, rows[0]), flush=True)
    return rows


def format_cli_row(row, official):
    if 'error' in row:
        return f"| {row['name']} | failed: {row['error']} | | | |"
    ratio = f"{row['sec_per_kimg'] / official['sec_per_kimg']:.3f}" if 'sec_per_kimg' in official else ''
    return f"| {row['name']} | {row['sec_per_kimg']:.3f} | {ratio} | {row['peak_mem_gib']:.2f} | {row['ticks']} |"


# ----------------------------------------------------------------------------------------------

def write_report(path, command, op_rows, train_rows, opts, cli_rows=()):
    device = torch.cuda.get_device_name(0) if opts.device == 'cuda' else 'CPU (harness smoke test)'
    lines = ['# GPU speed: CUDA ops vs reference ops, and training sec/kimg', '',
             f'Machine: {device}, {platform.platform()}, torch {torch.__version__} '
             f'(CUDA {torch.version.cuda}), {os.cpu_count()} CPU cores', '', f'Command: `{command}`', '']
    if op_rows:
        lines += ['## Ops (ms per call; speed-up = reference / CUDA path as training runs it, '
                  "impl='auto': bias_act on fewer than 65536 elements stays on the reference ops)", '',
                  'Wall: median of the mean of 10 back-to-back calls (host time included; small tensors are '
                  'host-bound). GPU: the summed kernel durations per call from the profiler (what the op costs '
                  'when the CPU runs ahead, as in a training step).', '',
                  '| op | dtype | ' + ' | '.join(c.replace(' ms', '').replace('gpu', 'GPU') for c in OP_COLUMNS) + ' |',
                  '|---|---|' + '---|' * len(OP_COLUMNS)] + [format_op_row(r) for r in op_rows] + ['']
    if train_rows:
        lines += [f'## Training, {opts.resolution}x{opts.resolution} paper256 recipe, batch {opts.batch} '
                  f'(batch_gpu {opts.batch_gpu}), '
                  f'{opts.kimg} kimg timed after {opts.warmup_kimg} kimg warm-up',
                  '', 'Ratio: this row\'s sec/kimg over plain StyleGAN2 with the CUDA ops (1.30 = 30% overhead). '
                  'Peak memory: torch.cuda.max_memory_allocated during the timed part.', '',
                  '| run | sec/kimg | ratio to plain (CUDA ops) | peak GPU memory (GiB) |', '|---|---|---|---|']
        lines += [format_train_row(r, plain_cuda_row(train_rows)) for r in train_rows] + ['']
    if cli_rows:
        lines += [f'## Plain training: official train.py vs ours, same command, same GPU', '',
                  f'`train.py --gpus=1 --cfg=paper256 --batch={opts.batch} --kimg={opts.cli_kimg} --metrics=none` '
                  f'on the same {opts.resolution}x{opts.resolution} dataset; sec/kimg is the median over ticks 2 and '
                  'later (tick 0 is the first step, with the kernel builds), memory the peak those ticks report.', '',
                  '| train.py | sec/kimg | ratio to official | peak GPU memory (GiB) | ticks |', '|---|---|---|---|---|']
        lines += [format_cli_row(r, cli_rows[0]) for r in cli_rows] + ['']
        for row in cli_rows:
            if row.get('warnings'):
                lines += [f"Warnings from {row['name']}: " + '; '.join(f'`{w}`' for w in row['warnings']), '']
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('\n'.join(lines))
    print(f'Wrote {path}')


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('mode', nargs='?', default='all', choices=['all', 'train-one'])
    parser.add_argument('--methods', default='all', help="comma-separated fairness methods, or 'all'")
    parser.add_argument('--kimg', type=float, default=1.0, help='timed training length per run')
    parser.add_argument('--warmup-kimg', type=float, default=0.5, help='untimed training before the clock starts')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--batch-gpu', type=int, default=32, help='lower it to accumulate if 32 does not fit')
    parser.add_argument('--workers', type=int, default=3)
    parser.add_argument('--num-images', type=int, default=1024, help='size of the synthetic dataset')
    parser.add_argument('--workdir', default=os.path.join(tempfile.gettempdir(), 'gpu-speed'))
    parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results', 'gpu_speed.md'))
    parser.add_argument('--skip-ops', action='store_true')
    parser.add_argument('--skip-training', action='store_true')
    parser.add_argument('--lpips-backbone', metavar='PATH', default='random',
                        help="VGG16 weights file for methods using LPIPS (IMLE); default 'random' weights (same speed)")
    parser.add_argument('--official', metavar='DIR', help='a checkout of NVlabs/stylegan2-ada-pytorch: also time '
                        'its train.py against ours with the same command line')
    parser.add_argument('--cli-kimg', type=int, default=12, help='length of each train.py run for --official')
    parser.add_argument('--skip-ref-training', action='store_true', help='no training row with the reference ops')
    parser.add_argument('--skip-methods', action='store_true', help='no per-method training rows')
    parser.add_argument('--run-timeout', type=float, default=900, help='seconds before one training run is given up')
    # A CPU smoke test of the harness itself: --device=cpu --resolution=32 --skip-ops --batch=4 ...
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    parser.add_argument('--resolution', type=int, default=256)
    parser.add_argument('--channel-base', type=int, help='override the networks\' channel_base')
    # train-one only:
    parser.add_argument('--data')
    parser.add_argument('--method', default='none')
    parser.add_argument('--ops', default='cuda', choices=['ref', 'cuda'])
    parser.add_argument('--hook-options', default='{}')
    return parser.parse_args(argv)


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('gpu_speed.py needs a CUDA GPU (none is visible); it measures the CUDA kernels')
    if opts.mode == 'train-one':
        return train_one(opts)
    os.environ.pop('STYLEGAN2_FAIR_OPS', None)
    if opts.device == 'cuda':
        from stylegan2_fair.ops import cuda_build
        cuda_build.get_plugin(required=True)  # build once up front: a failure stops here, with the compiler's output
    elif not opts.skip_ops:
        raise SystemExit('--device=cpu only smoke-tests the training harness: add --skip-ops')
    command = 'python benchmarks/gpu_speed.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    op_rows = [] if opts.skip_ops else benchmark_ops(torch.device('cuda'))
    if not opts.skip_training:
        prepare_dataset(opts)
    train_rows = [] if opts.skip_training or opts.skip_methods else benchmark_training(opts)
    cli_rows = benchmark_cli(opts) if opts.official and not opts.skip_training else []
    write_report(opts.out, command.strip(), op_rows, train_rows, opts, cli_rows)


if __name__ == '__main__':
    main()
