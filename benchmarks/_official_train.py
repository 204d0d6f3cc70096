"""Run the official StyleGAN2-ADA train.py on a newer torch than it was written for (speed comparisons).

    python benchmarks/_official_train.py OFFICIAL_DIR [train.py options...]

Three shims, nothing else changed: torch >= 2.2's Sampler.__init__ takes no dataset argument (the
official InfiniteSampler passes one); its plugin loader expects the built extension in sys.modules;
its grid_sample fallback (its own op is enabled for torch
1.7-1.9 only) has no second derivative on CUDA, which R1 needs through the augmentation: ours is
put in its place (same bilinear, zero-padded, align_corners=False sampling).
"""
import os
import runpy
import sys

import torch.utils.cpp_extension
import torch.utils.data

official = os.path.abspath(sys.argv[1])
sys.path[:0] = [official, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
torch.utils.data.Sampler.__init__ = lambda self, *args, **kwargs: None
_load = torch.utils.cpp_extension.load


def _load_and_register(name, *args, **kwargs):
    # Newer torch no longer leaves the built module in sys.modules, where the official
    # custom_ops.get_plugin imports it from right after (else: "No module named 'upfirdn2d_plugin'"
    # and a silent fallback to its slow reference ops).
    module = _load(name, *args, **kwargs)
    sys.modules[name] = module
    return module


torch.utils.cpp_extension.load = _load_and_register

from stylegan2_fair.ops.grid_sample import grid_sample  # noqa: E402
from torch_utils.ops import grid_sample_gradfix  # noqa: E402

grid_sample_gradfix.grid_sample = lambda input, grid: grid_sample(input, grid)
sys.argv = [os.path.join(official, 'train.py')] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
