"""The CUDA kernels compile without a GPU, and the path each op takes follows impl and STYLEGAN2_FAIR_OPS.

The compile test needs a CUDA build of torch, nvcc and ninja (skipped otherwise); it builds for one
explicit architecture into a fresh folder, so it needs no GPU and no cache (~0.5-1.5 min on 2 cores).
"""
import re
import subprocess
import types
import warnings

import pytest
import torch

from stylegan2_fair.ops import bias_act, cuda_build, upfirdn2d


@pytest.fixture
def fresh_state(monkeypatch):
    """No plugin loaded or failed yet in this process, STYLEGAN2_FAIR_OPS unset, and a stand-in
    GPU of compute capability 8.0 with kernels built for 8.0."""
    monkeypatch.setattr(cuda_build, '_plugin', None)
    monkeypatch.setattr(cuda_build, '_failure', None)
    monkeypatch.delenv(cuda_build.ENV_VAR, raising=False)
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '8.0')
    monkeypatch.setattr(cuda_build, 'device_capability', lambda device: (8, 0))


def _fake_cuda_tensor(dtype=torch.float32):
    # What the switch reads from a tensor: enough to exercise it on a machine without a GPU.
    return types.SimpleNamespace(is_cuda=True, dtype=dtype, device=torch.device('cuda', 0))


def _record_builds(monkeypatch, result=None, error=None):
    calls = []

    def build():
        calls.append(1)
        if error is not None:
            raise error
        return result
    monkeypatch.setattr(cuda_build, 'build_extension', build)
    return calls


def _toolkit_or_skip():
    if torch.version.cuda is None:
        pytest.skip('this torch is a CPU-only build: no CUDA extension can be built')
    home = cuda_build.find_cuda_home()
    if home is None:
        pytest.skip('no CUDA toolkit (nvcc + headers) found; set CUDA_HOME to compile the kernels')
    from torch.utils.cpp_extension import is_ninja_available
    if not is_ninja_available():
        pytest.skip('ninja is not installed (pip install ninja)')
    out = subprocess.run([f'{home}/bin/nvcc', '--version'], capture_output=True, text=True).stdout
    nvcc = re.search(r'release (\d+)\.(\d+)', out)
    if nvcc is None:
        pytest.skip(f'cannot read the version of {home}/bin/nvcc')
    # torch refuses a different major version and only warns about a different minor one.
    if int(nvcc.group(1)) != int(torch.version.cuda.split('.')[0]):
        pytest.skip(f'nvcc {nvcc.group(1)}.{nvcc.group(2)} and torch CUDA {torch.version.cuda} differ in major '
                    f'version, which torch cannot build extensions for')


def test_extension_compiles_and_loads_without_a_gpu(tmp_path):
    _toolkit_or_skip()
    module = cuda_build.build_extension(build_dir=str(tmp_path), arch_list='8.0', name='sg2f_compile_test')
    assert list(module.activation_names()) == list(bias_act.activation_funcs)
    assert any(p.suffix == '.so' or p.suffix == '.pyd' for p in tmp_path.iterdir())
    # The bindings are callable and reject CPU tensors with a message naming the fix.
    with pytest.raises(RuntimeError, match='must be a CUDA tensor'):
        module.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(2, 2), 1, 1, 1, 1, 0, 0, 0, 0, False, 1.0)
    with pytest.raises(RuntimeError, match='must be a CUDA tensor'):
        module.bias_act(torch.zeros(4), None, None, 0, 0, 0, 0.0, 1.0, -1.0, False)


def test_auto_on_cpu_tensors_runs_the_reference_ops_without_building(monkeypatch, fresh_state):
    calls = _record_builds(monkeypatch, error=AssertionError('must not build for CPU tensors'))
    x, f = torch.randn(1, 2, 6, 6), upfirdn2d.setup_filter([1, 3, 3, 1])
    y = upfirdn2d.upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], impl='auto')
    assert torch.equal(y, upfirdn2d._upfirdn2d_ref(x, f, 2, 2, 1, 1, (2, 1, 2, 1), False, 1))
    y = bias_act.bias_act(x, torch.ones(2), act='lrelu', impl='auto')
    assert torch.equal(y, bias_act.bias_act(x, torch.ones(2), act='lrelu', impl='ref'))
    assert not calls


def test_auto_on_a_cuda_tensor_builds_once_and_uses_the_kernels(monkeypatch, fresh_state):
    calls = _record_builds(monkeypatch, result=object())
    assert cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'auto')
    assert cuda_build.use_cuda_kernels(_fake_cuda_tensor(torch.float16), 'auto')
    assert len(calls) == 1


def test_env_ref_forces_the_reference_path_and_builds_nothing(monkeypatch, fresh_state):
    calls = _record_builds(monkeypatch, result=object())
    monkeypatch.setenv(cuda_build.ENV_VAR, 'ref')
    assert not cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'auto')
    assert not cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'cuda')
    assert not upfirdn2d._use_cuda(_fake_cuda_tensor(), 'auto')
    assert not bias_act._use_cuda(_fake_cuda_tensor(), 'auto')
    assert not calls


def test_impl_ref_never_builds(monkeypatch, fresh_state):
    calls = _record_builds(monkeypatch, result=object())
    assert not cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'ref')
    assert not calls


def test_failed_build_warns_once_and_falls_back(monkeypatch, fresh_state):
    calls = _record_builds(monkeypatch, error=RuntimeError('Error building extension: nvcc fatal'))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert not cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'auto')
        assert not cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'auto')
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and 'nvcc fatal' in messages[0] and 'STYLEGAN2_FAIR_OPS=ref' in messages[0]
    assert len(calls) == 1  # not retried on every call


def test_kernels_built_without_the_gpus_arch_warn_once_and_fall_back(monkeypatch, fresh_state):
    # TORCH_CUDA_ARCH_LIST=8.0 on an H100: the build succeeds, yet no kernel has an image for 9.0.
    calls = _record_builds(monkeypatch, result=object())
    monkeypatch.setattr(cuda_build, 'device_capability', lambda device: (9, 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert not cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'auto')
        assert not cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'auto')
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and 'do not include cuda:0' in messages[0] and 'add 9.0 to TORCH_CUDA_ARCH_LIST' \
        in messages[0]
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match='cannot run on this GPU.*add 9.0 to TORCH_CUDA_ARCH_LIST'):
        cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'cuda')


def test_named_archs_are_checked_by_running_a_tiny_op(monkeypatch, fresh_state):
    # 'Hopper' is for torch to expand: the check asks the GPU instead, by one kernel launch.
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', 'Hopper')
    launches = []
    monkeypatch.setattr(cuda_build, '_run_tiny_op', lambda plugin, device: launches.append(device))
    _record_builds(monkeypatch, result=object())
    assert cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'auto')
    assert launches == [torch.device('cuda', 0)]


@pytest.mark.parametrize('arch_list,capability,runs', [
    ('8.0', (8, 0), True),
    ('8.0', (8, 6), True),          # machine code runs on later minors of its major
    ('8.6', (8, 0), False),         # ... not on earlier ones
    ('8.0;8.6', (9, 0), False),     # nor on another major: TORCH_CUDA_ARCH_LIST=8.0 on an H100
    ('8.0;9.0+PTX', (9, 0), True),
    ('8.0+PTX', (9, 0), True),      # PTX is compiled by the driver for any newer GPU
    ('9.0+PTX', (8, 6), False),     # ... but never for an older one
    ('9.0a', (9, 0), True),
    ('9.0a', (9, 1), False),        # arch-specific: that GPU only
    ('9.0a+PTX', (10, 0), False),   # ... its PTX too
    ('10.0f', (10, 3), True),       # family-specific: its major's later minors too
    (['8.0', '8.6'], (8, 9), True),
    ('8.0, 8.6', (9, 0), False),    # commas and spaces separate entries as ';' does
    ('Ampere', (8, 0), None),       # names: only torch knows what they expand to
    ('Hopper;8.0', (8, 6), True),   # a known entry that runs decides
])
def test_arch_list_runs_on(arch_list, capability, runs):
    assert cuda_build.arch_list_runs_on(arch_list, capability) is runs


def test_resolved_arch_list_is_the_argument_then_the_env_then_the_gpus(monkeypatch):
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '7.5;8.0')
    assert cuda_build.resolve_arch_list('9.0+PTX') == ['9.0+PTX']
    assert cuda_build.resolve_arch_list() == ['7.5', '8.0']
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', 'native')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 3)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda i: [(9, 0), (8, 0), (9, 0)][i])
    assert cuda_build.resolve_arch_list() == ['8.0', '9.0+PTX']  # as torch builds for them: PTX for the newest
    monkeypatch.delenv('TORCH_CUDA_ARCH_LIST')
    assert cuda_build.resolve_arch_list() == ['8.0', '9.0+PTX']


@pytest.mark.parametrize('how', ['env', 'impl'])
def test_cuda_request_makes_a_failed_build_an_error(monkeypatch, fresh_state, how):
    _record_builds(monkeypatch, error=RuntimeError('nvcc fatal'))
    impl = 'auto'
    if how == 'env':
        monkeypatch.setenv(cuda_build.ENV_VAR, 'cuda')
    else:
        impl = 'cuda'
    with pytest.raises(RuntimeError, match='could not be built.*nvcc fatal'):
        cuda_build.use_cuda_kernels(_fake_cuda_tensor(), impl)


def test_unsupported_dtype_falls_back_unless_cuda_is_requested(monkeypatch, fresh_state):
    calls = _record_builds(monkeypatch, result=object())
    assert not cuda_build.use_cuda_kernels(_fake_cuda_tensor(torch.bfloat16), 'auto')
    with pytest.raises(ValueError, match='float16, float32 or float64.*bfloat16'):
        cuda_build.use_cuda_kernels(_fake_cuda_tensor(torch.bfloat16), 'cuda')
    assert not calls


def test_unknown_env_value_names_the_choices(monkeypatch, fresh_state):
    monkeypatch.setenv(cuda_build.ENV_VAR, 'fast')
    with pytest.raises(ValueError, match="STYLEGAN2_FAIR_OPS='fast'.*auto, ref, cuda"):
        cuda_build.use_cuda_kernels(_fake_cuda_tensor(), 'auto')


def test_arch_list_becomes_gencode_flags():
    assert cuda_build.arch_flags('8.0;9.0+PTX') == [
        '-gencode=arch=compute_80,code=sm_80', '-gencode=arch=compute_90,code=sm_90',
        '-gencode=arch=compute_90,code=compute_90']
    assert cuda_build.arch_flags(['8.6']) == ['-gencode=arch=compute_86,code=sm_86']
    with pytest.raises(ValueError, match='MAJOR.MINOR'):
        cuda_build.arch_flags('sm_80')


NAME_CONFIG = dict(sources_digest='0123456789ab', torch_version='2.5.1+cu124', cuda_version='12.4',
                   python_tag='cpython-311', arch_list=['8.0', '9.0+PTX'], cflags=['-O1'], cuda_cflags=['-O3'])


def test_extension_name_is_stable_for_one_configuration():
    name = cuda_build.extension_name(**NAME_CONFIG)
    assert name == cuda_build.extension_name(**{k: (list(v) if isinstance(v, list) else v) for k, v in
                                                 NAME_CONFIG.items()})
    assert name.startswith('stylegan2_fair_ops_0123456789ab_') and name.isidentifier()


@pytest.mark.parametrize('key,other', [
    ('sources_digest', 'ba9876543210'), ('torch_version', '2.6.0+cu124'), ('cuda_version', '12.6'),
    ('python_tag', 'cpython-312'), ('arch_list', ['8.0']), ('arch_list', ['8.0', '9.0']),
    ('cflags', ['-O2']), ('cuda_cflags', ['-O3', '-gencode=arch=compute_80,code=sm_80']),
])
def test_extension_name_changes_with_each_part_of_the_configuration(key, other):
    # Processes with another torch, CUDA or arch list must not share (and rewrite) one build directory.
    assert cuda_build.extension_name(**{**NAME_CONFIG, key: other}) != cuda_build.extension_name(**NAME_CONFIG)


def test_build_names_the_extension_after_its_configuration(monkeypatch, tmp_path):
    # build_extension feeds extension_name what it compiles with: the resolved arch list among it.
    from torch.utils import cpp_extension
    loads = []
    monkeypatch.setattr(cpp_extension, 'load', lambda **kwargs: loads.append(kwargs) or object())
    monkeypatch.setattr(torch.version, 'cuda', '12.4')
    monkeypatch.setattr(cuda_build, 'find_cuda_home', lambda: str(tmp_path))
    monkeypatch.setattr(cpp_extension, 'CUDA_HOME', str(tmp_path))
    for archs in ('8.0', '9.0', '8.0'):
        monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', archs)
        cuda_build.build_extension(build_dir=str(tmp_path / 'build'))
    cuda_build.build_extension(build_dir=str(tmp_path / 'build'), arch_list='9.0')
    names = [kwargs['name'] for kwargs in loads]
    assert names[0] != names[1] and names[0] == names[2] and names[3] not in names[:3]
    assert loads[3]['extra_cuda_cflags'] == ['-O3', '-gencode=arch=compute_90,code=sm_90']


def test_extension_name_changes_with_the_sources(monkeypatch, tmp_path):
    for name in cuda_build.SOURCES + cuda_build.HEADERS:
        (tmp_path / name).write_text('// ' + name)
    monkeypatch.setattr(cuda_build, 'SOURCE_DIR', str(tmp_path))
    before = cuda_build.source_digest()
    (tmp_path / 'ops.h').write_text('// changed')
    assert cuda_build.source_digest() != before
