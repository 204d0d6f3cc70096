"""Training speed on this machine: sec/kimg of --cfg=tiny and of a larger config, side by side.

    python benchmarks/train_speed.py [--kimg 0.5] [--device cpu]

Builds toy colored-digits datasets at 16x16 (tiny) and 32x32 (a 'small' config: the paper256
recipe shrunk to 32x32 with channel_base 4096), trains each for --kimg after one warm-up
iteration, and prints sec/kimg and the ratio.
"""
import argparse
import os
import tempfile
import time

import torch

from stylegan2_fair.cli.dataset_tool import convert_dataset
from stylegan2_fair.cli.train import setup_training_options
from stylegan2_fair.training_loop import TrainingLoop


def measure(data, cfg, kimg, device, overrides=None):
    _, args = setup_training_options(data=data, cfg=cfg, workers=0, device=device)
    for key in ('num_gpus', 'fair_method', 'hook_kwargs'):
        args.pop(key)
    for key, value in (overrides or {}).items():
        args[key] = value
    args['image_snapshot_ticks'] = args['network_snapshot_ticks'] = None
    args.update(total_kimg=kimg, kimg_per_tick=1e9)
    with tempfile.TemporaryDirectory() as run_dir:
        loop = TrainingLoop(run_dir=run_dir, progress=False, **args)
        loop.setup()
        loop.start_time = loop.tick_start_time = time.time()
        loop._step()  # warm-up: first-call allocations, lazy init
        start_nimg, start = loop.cur_nimg, time.time()
        while loop.cur_nimg < start_nimg + kimg * 1000:
            loop._step()
        elapsed = time.time() - start
        return elapsed / ((loop.cur_nimg - start_nimg) / 1000), args['batch_size']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--kimg', type=float, default=0.5)
    parser.add_argument('--device', default='cpu')
    opts = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tiny_zip, small_zip = os.path.join(tmp, 't.zip'), os.path.join(tmp, 's.zip')
        convert_dataset('toy:colored-digits', tiny_zip, resolution=16, num_images=512, progress=False)
        convert_dataset('toy:colored-digits', small_zip, resolution=32, num_images=512, progress=False)
        tiny_sec, tiny_batch = measure(tiny_zip, 'tiny', opts.kimg, opts.device)
        _, args = setup_training_options(data=small_zip, cfg='paper256', workers=0, device=opts.device)
        g, d = args['G_kwargs'], args['D_kwargs']
        g['synthesis_kwargs'].update(channel_base=4096, num_fp16_res=0)
        d.update(channel_base=4096, num_fp16_res=0)
        small = dict(G_kwargs=g, D_kwargs=d, batch_size=16, batch_gpu=16)
        small_sec, small_batch = measure(small_zip, 'paper256', opts.kimg / 2, opts.device, small)
    print(f'device: {opts.device}, threads: {torch.get_num_threads()}')
    print(f'tiny   (16x16, batch {tiny_batch}): {tiny_sec:8.2f} sec/kimg')
    print(f'small  (32x32, paper256 recipe, channel_base 4096, batch {small_batch}): {small_sec:8.2f} sec/kimg')
    print(f'ratio small/tiny: {small_sec / tiny_sec:.1f}x')


if __name__ == '__main__':
    main()
