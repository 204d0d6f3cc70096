"""Build and load the fused CUDA kernels (ops/cuda/) on first use, or say why the reference ops run.

The sources are compiled just in time by `torch.utils.cpp_extension.load` (ninja) into one
extension, cached under TORCH_EXTENSIONS_DIR (torch's default cache when unset): a later process
finds it there, and ninja rebuilds only what a changed source or flag affects. Processes building at once (one per
GPU) wait on torch's lock in the build directory, so the first builds and the rest load its result.
The extension's name (and so its build directory) covers everything the binary depends on: the
sources, torch, its CUDA and Python versions, the CUDA archs and the compiler flags (see
`extension_name`). Otherwise processes with another torch or arch list sharing one
TORCH_EXTENSIONS_DIR (mixed-GPU nodes, a shared home) would rebuild the same directory and relink
the same .so under each other, which torch imports after releasing its lock.

The environment variable STYLEGAN2_FAIR_OPS picks the path for every op:
    auto (default)  CUDA kernels for CUDA tensors; if they cannot be built, ONE warning and the
                    reference ops (training never stops over a build problem)
    ref             reference ops only; nothing is compiled
    cuda            CUDA kernels for CUDA tensors, and a failed build is an error
The CUDA architectures are those of TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0") when set, else those of
the visible GPUs; `build_extension(arch_list=...)` compiles for an explicit list without a GPU.
Kernels built without the current GPU's arch (e.g. TORCH_CUDA_ARCH_LIST=8.0 on an H100) count as a
failed build: one warning and the reference ops, instead of "no kernel image" from every op.
"""
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
import warnings

import torch

ENV_VAR = 'STYLEGAN2_FAIR_OPS'
MODES = ('auto', 'ref', 'cuda')
SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cuda')
SOURCES = ('ops.cpp', 'upfirdn2d.cu', 'bias_act.cu')
HEADERS = ('ops.h', 'scalar.cuh')
SUPPORTED_DTYPES = (torch.float16, torch.float32, torch.float64)
# ops.cpp is host glue (argument checks, allocation): -O1 compiles it faster than -O3 at no cost.
CFLAGS = ('-O1',)
CUDA_CFLAGS = ('-O3',)
# Older torch releases guard builds with a lock FILE (FileBaton) that a killed build leaves behind,
# and every later build then waits forever (the classic "hangs at 'Setting up PyTorch plugin'").
# A build takes a minute or two, so a lock much older than that is stale.
STALE_LOCK_SECONDS = 15 * 60

_lock = threading.Lock()
_plugin = None
_failure = None  # the exception of the one failed build attempt of this process


def ops_mode():
    """STYLEGAN2_FAIR_OPS as one of MODES ('auto' when unset)."""
    mode = os.environ.get(ENV_VAR, '').strip().lower() or 'auto'
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not understood; set it to one of {', '.join(MODES)} "
                         f"(or unset it)")
    return mode


IMPLS = ('auto', 'ref', 'cuda')


def use_cuda_kernels(x, impl):
    """Whether an op called with `impl` ('auto', 'ref' or 'cuda') should run its CUDA kernel on x.

    Never for CPU tensors or impl='ref' or STYLEGAN2_FAIR_OPS=ref. impl='cuda' or
    STYLEGAN2_FAIR_OPS=cuda turn a failed build or an unsupported dtype into an error.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == 'ref' or not x.is_cuda:
        return False
    mode = ops_mode()
    if mode == 'ref':
        return False
    required = impl == 'cuda' or mode == 'cuda'
    if x.dtype not in SUPPORTED_DTYPES:
        if required:
            raise ValueError(f"the CUDA kernels take float16, float32 or float64 tensors, got {x.dtype}; "
                             f"cast the input, or use impl='auto'/'ref' to run the reference op")
        return False
    return get_plugin(required=required, device=x.device) is not None


def get_plugin(required=False, device=None):
    """The loaded extension module, building it if needed; None (after one warning) if it cannot be built
    or has no kernels for the GPU `device` (default: the current one) it will first run on."""
    global _plugin, _failure
    with _lock:
        if _plugin is None and _failure is None:
            try:
                plugin = build_extension()
                check_kernels_run_on(plugin, device)
                _plugin = plugin
            except Exception as err:  # any build or arch problem must leave training on the reference path
                _failure = err
                if not required:
                    warnings.warn(f'stylegan2_fair: the CUDA kernels could not be built or cannot run on this GPU, so '
                                  f'the slower reference ops run instead. Set {ENV_VAR}=ref to skip the build, or '
                                  f'{ENV_VAR}=cuda to make this an error. Cause: {_summarize(err)}',
                                  RuntimeWarning, stacklevel=3)
    if _plugin is None and required:
        raise RuntimeError(f'stylegan2_fair: the CUDA kernels could not be built or cannot run on this GPU '
                           f'({ENV_VAR}=cuda or impl="cuda" requires them): {_summarize(_failure)}') from _failure
    return _plugin


def _summarize(err, limit=3000):
    text = f'{type(err).__name__}: {err}'
    return text if len(text) <= limit else '...' + text[-limit:]


def source_digest():
    """Short hash of every kernel source and header: part of the extension name, so that two versions
    of this package sharing one TORCH_EXTENSIONS_DIR never overwrite each other's build."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        with open(os.path.join(SOURCE_DIR, name), 'rb') as f:
            digest.update(name.encode() + b'\0' + f.read())
    return digest.hexdigest()[:12]


def _split_arch_list(arch_list):
    """['8.0', '9.0+PTX'] from '8.0;9.0+PTX' (';', ',' or spaces between entries) or from a list."""
    if isinstance(arch_list, str):
        arch_list = re.split(r'[;,\s]+', arch_list)
    return [a.strip() for a in arch_list if a and a.strip()]


def parse_arch(arch):
    """(major, minor, variant, ptx) of a TORCH_CUDA_ARCH_LIST entry: '9.0a+PTX' -> (9, 0, 'a', True).

    variant is '' (plain), 'a' (arch-specific: this exact GPU only) or 'f' (family-specific)."""
    number, ptx = (arch[:-4], True) if arch.upper().endswith('+PTX') else (arch, False)
    match = re.fullmatch(r'(\d+)\.(\d)([af]?)', number)
    if match is None:
        raise ValueError(f'CUDA arch {arch!r} is not understood; write it as MAJOR.MINOR, e.g. 8.0 or 9.0+PTX')
    return int(match.group(1)), int(match.group(2)), match.group(3), ptx


def arch_flags(arch_list):
    """nvcc -gencode flags for '8.0;9.0+PTX' or ['8.0', '9.0+PTX'] (the TORCH_CUDA_ARCH_LIST syntax)."""
    flags = []
    for arch in _split_arch_list(arch_list):
        major, minor, variant, ptx = parse_arch(arch)
        code = f'{major}{minor}{variant}'
        flags.append(f'-gencode=arch=compute_{code},code=sm_{code}')
        if ptx:
            flags.append(f'-gencode=arch=compute_{code},code=compute_{code}')
    if not flags:
        raise ValueError('arch_list is empty; give at least one CUDA arch such as 8.0')
    return flags


def resolve_arch_list(arch_list=None):
    """The CUDA archs a build targets, as TORCH_CUDA_ARCH_LIST entries (['8.0', '9.0+PTX']).

    arch_list when given, else TORCH_CUDA_ARCH_LIST, else (unset or 'native') the visible GPUs'
    capabilities, the highest with +PTX, which is what torch compiles for then.
    """
    if arch_list is not None:
        return _split_arch_list(arch_list)
    env = os.environ.get('TORCH_CUDA_ARCH_LIST', '').strip()
    if env and env != 'native':
        return _split_arch_list(env)
    if not torch.cuda.is_available():
        return []
    archs = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return [f'{major}.{minor}' for major, minor in archs[:-1]] + [f'{archs[-1][0]}.{archs[-1][1]}+PTX']


def arch_list_runs_on(arch_list, capability):
    """Whether kernels built for arch_list ('8.0;9.0+PTX' or a list) have an image that a GPU of
    `capability` (major, minor) can run: True, False, or None if an entry is a name such as
    'Ampere' that only torch expands.

    Machine code for X.Y runs on major X from minor Y up (an 'a' variant on X.Y only); plain PTX for
    X.Y is compiled by the driver for any GPU of X.Y or newer ('a'/'f' PTX is not: no credit taken).
    """
    unknown = False
    for arch in _split_arch_list(arch_list):
        try:
            if _arch_runs_on(*parse_arch(arch), tuple(capability)):
                return True
        except ValueError:
            unknown = True
    return None if unknown else False


def _arch_runs_on(arch_major, arch_minor, variant, ptx, capability):
    built = (arch_major, arch_minor)
    if built == capability:
        return True
    if variant != 'a' and arch_major == capability[0] and arch_minor <= capability[1]:
        return True
    return ptx and not variant and built <= capability


def extension_name(sources_digest, torch_version, cuda_version, python_tag, arch_list, cflags, cuda_cflags):
    """The module name of one build configuration: equal configurations share a build (and its cache),
    any difference in what goes into the binary gives another name and so another build directory."""
    config = json.dumps([torch_version, cuda_version, python_tag, list(arch_list), list(cflags), list(cuda_cflags)])
    return f'stylegan2_fair_ops_{sources_digest}_{hashlib.sha256(config.encode()).hexdigest()[:12]}'


def device_capability(device):
    """(major, minor) of a CUDA device (a function of its own so that tests can stand in for a GPU)."""
    return torch.cuda.get_device_capability(device)


def check_kernels_run_on(plugin, device=None):
    """Raise a RuntimeError naming the fix if the built kernels cannot run on `device` (default: the
    current GPU; nothing to check without one). Without this, a build for the wrong archs succeeds and
    every op then fails with "no kernel image is available"."""
    if device is None:
        if not torch.cuda.is_available():
            return
        device = torch.device('cuda', torch.cuda.current_device())
    archs = resolve_arch_list()
    capability = tuple(device_capability(device))
    runs = arch_list_runs_on(archs, capability)
    if runs is None:  # named archs: ask the GPU itself
        _run_tiny_op(plugin, device)
    elif not runs:
        raise RuntimeError(f"the CUDA kernels were built for the archs {';'.join(archs)} (TORCH_CUDA_ARCH_LIST), "
                           f"which do not include {device}'s {capability[0]}.{capability[1]}; add "
                           f"{capability[0]}.{capability[1]} to TORCH_CUDA_ARCH_LIST, or unset it to build for "
                           f"the visible GPUs")


def _run_tiny_op(plugin, device):
    try:
        plugin.bias_act(torch.zeros(1, device=device), None, None, 0, 0, 0, 0.0, 1.0, -1.0, False)
        torch.cuda.synchronize(device)
    except RuntimeError as err:
        raise RuntimeError(f"the CUDA kernels built for TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')!r} "
                           f"do not run on {device} ({err}); add its arch to TORCH_CUDA_ARCH_LIST, or unset it to "
                           f"build for the visible GPUs") from err


def find_cuda_home():
    """The CUDA toolkit to compile with (bin/nvcc and include/cuda_runtime_api.h), or None.

    torch guesses CUDA_HOME as the parent of `which nvcc`'s folder; an nvcc wrapper script in
    /usr/local/bin makes that /usr/local, which has no CUDA headers. So check candidates by content.
    """
    from torch.utils import cpp_extension
    candidates = [cpp_extension.CUDA_HOME, os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH')]
    nvcc = shutil.which('nvcc')
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    if torch.version.cuda:
        candidates.append(f'/usr/local/cuda-{torch.version.cuda}')
    candidates += ['/usr/local/cuda'] + sorted(glob.glob('/usr/local/cuda-*'), reverse=True)
    for home in filter(None, candidates):
        has_nvcc = any(os.path.isfile(os.path.join(home, 'bin', exe)) for exe in ('nvcc', 'nvcc.exe'))
        if has_nvcc and os.path.isfile(os.path.join(home, 'include', 'cuda_runtime_api.h')):
            return home
    return None


def build_extension(build_dir=None, arch_list=None, name=None, verbose=False):
    """Compile (if needed) and import the extension; raises with the compiler's output on failure.

    build_dir: None = torch's cache (TORCH_EXTENSIONS_DIR). arch_list: None = TORCH_CUDA_ARCH_LIST
    or the visible GPUs, else e.g. '8.0;9.0' (needed where no GPU is visible). name: the module name,
    by default one that changes with the sources and the build configuration (`extension_name`).
    """
    from torch.utils import cpp_extension
    if torch.version.cuda is None:
        raise RuntimeError(f'this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch '
                           f'to use the CUDA kernels')
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise RuntimeError('no CUDA toolkit found (nvcc and the CUDA headers); install one matching torch '
                           f'{torch.version.cuda} and set CUDA_HOME to it')
    if cpp_extension.CUDA_HOME != cuda_home:
        # cpp_extension reads its module-level guess for include/library paths and nvcc.
        cpp_extension.CUDA_HOME = cuda_home
    if arch_list is None and not os.environ.get('TORCH_CUDA_ARCH_LIST') and not torch.cuda.is_available():
        raise RuntimeError('no GPU is visible to choose CUDA architectures for; set TORCH_CUDA_ARCH_LIST '
                           '(e.g. "8.0;9.0") to compile anyway')
    cuda_flags = list(CUDA_CFLAGS) + (arch_flags(arch_list) if arch_list is not None else [])
    name = name or extension_name(source_digest(), torch.__version__, torch.version.cuda, sys.implementation.cache_tag,
                                  resolve_arch_list(arch_list), CFLAGS, cuda_flags)
    if build_dir is not None:
        os.makedirs(build_dir, exist_ok=True)
    _remove_stale_lock(cpp_extension, name, build_dir)
    if _is_main_process() and not verbose:
        print(f'stylegan2_fair: loading the CUDA kernels (compiled on first use, about a minute; cached in '
              f'{build_dir or _default_build_dir(cpp_extension, name)})', flush=True)
    return cpp_extension.load(name=name, sources=[os.path.join(SOURCE_DIR, s) for s in SOURCES],
                              extra_cflags=list(CFLAGS), extra_cuda_cflags=cuda_flags,
                              extra_include_paths=[SOURCE_DIR], build_directory=build_dir, verbose=verbose)


def _default_build_dir(cpp_extension, name):
    try:
        return cpp_extension._get_build_directory(name, verbose=False)
    except Exception:  # private API: only used for messages and stale-lock cleanup
        return os.environ.get('TORCH_EXTENSIONS_DIR', "torch's extension cache")


def _remove_stale_lock(cpp_extension, name, build_dir):
    if hasattr(cpp_extension, 'FileLock'):
        return  # an OS-level lock: released by the kernel when its holder dies
    lock = os.path.join(build_dir or _default_build_dir(cpp_extension, name), 'lock')
    try:
        age = time.time() - os.path.getmtime(lock)
    except OSError:
        return
    if age > STALE_LOCK_SECONDS:
        warnings.warn(f'stylegan2_fair: removing the build lock {lock}, left {age / 60:.0f} min ago by a build that '
                      f'did not finish (it would make every later build wait forever)', RuntimeWarning)
        try:
            os.remove(lock)
        except OSError:
            pass


def _is_main_process():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return os.environ.get('RANK', '0') == '0'
