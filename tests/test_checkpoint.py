"""Checkpoint I/O: official StyleGAN2-ADA pickles load safely and exactly; our snapshots round-trip."""
import json
import os
import pickle
import sys
import time

import numpy as np
import pytest
import torch

from stylegan2_fair import checkpoint
from stylegan2_fair.checkpoint import CheckpointError, PersistentRecord, UnsafePickleError
try:
    from tests import malicious_pickles as mp
except ImportError:   # tests/ is not a package: pytest put tests/ itself on sys.path
    import malicious_pickles as mp

CASES = ['uncond-skip-resnet-32', 'cond5-skip-resnet-16-clamp']


def _official_pkl(fixtures, case):
    return fixtures / f'{case}-official-format.pkl'


@pytest.fixture(scope='module', params=CASES)
def official(request, official_fixtures):
    """(case, loaded snapshot dict, golden arrays) per fixture case, loaded once."""
    case = request.param
    loaded = checkpoint.load_network_pkl(_official_pkl(official_fixtures, case))
    return case, loaded, dict(np.load(official_fixtures / f'{case}.npz'))


@pytest.fixture
def uncond_records(official_fixtures):
    """A fresh raw read (records, not modules) of the unconditional fixture, free to mutate."""
    return checkpoint.read_pickle_safely(_official_pkl(official_fixtures, 'uncond-skip-resnet-32'))


def _write(tmp_path, data, name='variant.pkl'):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _assert_state_matches_golden(module, golden, prefix):
    state = module.state_dict()
    expected = {key[len(prefix) + 1:]: value for key, value in golden.items() if key.startswith(prefix + '.')}
    assert sorted(state) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(state[name].numpy(), value, err_msg=name)


# ----------------------------------------------------------------------------------------------
# Official pickles

def test_official_pickle_loads_as_our_classes_without_official_modules(official):
    from stylegan2_fair.augment import AugmentPipe
    from stylegan2_fair.networks import Discriminator, Generator
    _, loaded, _ = official
    assert type(loaded['G']) is Generator and type(loaded['G_ema']) is Generator
    assert type(loaded['D']) is Discriminator
    assert type(loaded['augment_pipe']) is AugmentPipe
    assert not [name for name in sys.modules if name.split('.')[0] in ('torch_utils', 'dnnlib')]


def test_official_pickle_tensors_equal_official_state_dict(official):
    _, loaded, golden = official
    _assert_state_matches_golden(loaded['G'], golden, 'G')
    _assert_state_matches_golden(loaded['G_ema'], golden, 'G')
    _assert_state_matches_golden(loaded['D'], golden, 'D')


def test_official_pickle_networks_reproduce_official_outputs(official):
    _, loaded, golden = official
    z, c = torch.from_numpy(golden['z']), torch.from_numpy(golden['c'])
    with torch.no_grad():
        for name in ('G', 'G_ema'):
            ws = loaded[name].mapping(z, c, truncation_psi=1)
            img = loaded[name].synthesis(ws, noise_mode='const')
            np.testing.assert_allclose(ws.numpy(), golden['ws'], atol=1e-4, rtol=0)
            np.testing.assert_allclose(img.numpy(), golden['img'], atol=1e-4, rtol=0)
        logits = loaded['D'](torch.from_numpy(golden['img']), c)
    np.testing.assert_allclose(logits.numpy(), golden['d_logits'], atol=1e-4, rtol=0)


def test_official_pickle_augment_pipe_and_dataset_kwargs(official):
    _, loaded, _ = official
    assert loaded['augment_pipe'].p.item() == pytest.approx(0.25)
    kwargs = loaded['training_set_kwargs']
    assert type(kwargs) is dict and kwargs['class_name'] == 'training.dataset.ImageFolderDataset'


def test_official_pickle_kwargs_become_plain_dicts(official_fixtures, official):
    case, loaded, _ = official
    expected = json.loads((official_fixtures / f'{case}.json').read_text())['G_kwargs']
    assert loaded['G'].init_kwargs['mapping_kwargs'] == expected['mapping_kwargs']
    assert type(loaded['G'].init_kwargs['mapping_kwargs']) is dict


def test_official_pickle_from_numpy1_loads(tmp_path, official_fixtures):
    data = _official_pkl(official_fixtures, 'uncond-skip-resnet-32').read_bytes()
    numpy1 = mp.rename_global_module(data, 'numpy._core.multiarray', 'numpy.core.multiarray')
    assert b'numpy.core.multiarray' in numpy1 and b'numpy._core' not in numpy1
    records = checkpoint.read_pickle_safely(_write(tmp_path, numpy1))
    act_gain = records['G'].state['_modules']['synthesis'].state['_modules']['b8'].state['_modules']['conv0'] \
        .state['act_gain']
    assert isinstance(act_gain, np.float64) and act_gain == pytest.approx(2 ** 0.5)
    loaded = checkpoint.load_network_pkl(tmp_path / 'variant.pkl')
    golden = np.load(official_fixtures / 'uncond-skip-resnet-32.npz')
    _assert_state_matches_golden(loaded['G'], golden, 'G')


def test_official_pickle_with_frozen_discriminator_layers_loads(tmp_path, official_fixtures, uncond_records):
    d_state = uncond_records['D'].state
    d_state['_init_kwargs']['block_kwargs'] = {'freeze_layers': 2}
    moved = []
    for layer in ('fromrgb', 'conv0'):   # the first two D layers, as `--freezed=2` stores them
        layer_state = d_state['_modules']['b32'].state['_modules'][layer].state
        for name in ('weight', 'bias'):
            layer_state['_buffers'][name] = layer_state['_parameters'].pop(name).detach().clone()
            moved.append(f'b32.{layer}.{name}')
    loaded = checkpoint.load_network_pkl(_write(tmp_path, mp.records_to_pickle(uncond_records)))
    raw = checkpoint.read_pickle_safely(tmp_path / 'variant.pkl')
    assert 'weight' in raw['D'].state['_modules']['b32'].state['_modules']['conv0'].state['_buffers']
    golden = np.load(official_fixtures / 'uncond-skip-resnet-32.npz')
    _assert_state_matches_golden(loaded['D'], golden, 'D')
    for name in moved:
        np.testing.assert_array_equal(loaded['D'].state_dict()[name].numpy(), golden[f'D.{name}'])


def test_pickle_with_only_g_ema_sets_other_keys_to_none(tmp_path, uncond_records):
    path = _write(tmp_path, mp.records_to_pickle({'G_ema': uncond_records['G_ema']}))
    loaded = checkpoint.load_network_pkl(path)
    assert loaded['G_ema'] is not None
    assert all(loaded[key] is None for key in ('G', 'D', 'augment_pipe', 'training_set_kwargs'))


def test_module_src_in_official_pickle_is_never_executed(tmp_path, uncond_records):
    marker = tmp_path / 'module_src_ran'
    src = f'open({os.fspath(marker)!r}, "w").close()\n'
    path = _write(tmp_path, mp.records_to_pickle(uncond_records, module_src=src))
    loaded = checkpoint.load_network_pkl(path)
    assert loaded['G'] is not None and not marker.exists()


def _add_synthesis_input(records):
    synthesis = records['G'].state['_modules']['synthesis']
    synthesis.state['_modules']['input'] = PersistentRecord('SynthesisInput', {
        '_parameters': {}, '_buffers': {'freqs': torch.zeros(4, 2)}, '_modules': {}, '_init_kwargs': {}})


def _add_magnitude_ema(records):
    layer = records['G'].state['_modules']['synthesis'].state['_modules']['b8'].state['_modules']['conv0']
    layer.state['_buffers']['magnitude_ema'] = torch.ones([])


def _add_stylegan3_kwarg(records):
    records['G'].state['_init_kwargs']['magnitude_ema_beta'] = 0.999   # StyleGAN3 passes these flat


@pytest.mark.parametrize('mutate', [_add_synthesis_input, _add_magnitude_ema, _add_stylegan3_kwarg])
def test_stylegan3_network_is_rejected_clearly(tmp_path, uncond_records, mutate):
    mutate(uncond_records)
    path = _write(tmp_path, mp.records_to_pickle(uncond_records))
    with pytest.raises(CheckpointError, match='this is a StyleGAN3 network.*supports StyleGAN2/StyleGAN2-ADA'):
        checkpoint.load_network_pkl(path)


def test_unknown_network_class_is_rejected(tmp_path, uncond_records):
    uncond_records['G'].class_name = 'StyleGANXLGenerator'
    path = _write(tmp_path, mp.records_to_pickle(uncond_records))
    with pytest.raises(CheckpointError, match="unknown network class 'StyleGANXLGenerator'"):
        checkpoint.load_network_pkl(path)


def test_unknown_submodule_class_is_rejected(tmp_path, uncond_records):
    uncond_records['D'].state['_modules']['b32'].class_name = 'AttentionBlock'
    path = _write(tmp_path, mp.records_to_pickle(uncond_records))
    with pytest.raises(CheckpointError, match="unknown sub-module class 'AttentionBlock' at b32"):
        checkpoint.load_network_pkl(path)


def test_pickled_tensor_with_wrong_shape_is_reported_by_name(tmp_path, uncond_records):
    mapping = uncond_records['G'].state['_modules']['mapping']
    mapping.state['_buffers']['w_avg'] = torch.zeros(7)
    path = _write(tmp_path, mp.records_to_pickle(uncond_records))
    with pytest.raises(CheckpointError, match=r'mapping\.w_avg: pickle \[7\] vs ours \[64\]'):
        checkpoint.load_network_pkl(path)


# ----------------------------------------------------------------------------------------------
# Hostile pickles

PAYLOADS = sorted(mp.payload_pickles('unused'))


def _wait_for(path, seconds=5.0):
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.02)
    return path.exists()


@pytest.mark.parametrize('payload', PAYLOADS)
def test_hostile_pickle_is_refused_without_running_its_payload(tmp_path, payload):
    marker = tmp_path / 'payload_ran'
    path = _write(tmp_path, mp.payload_pickles(marker)[payload])
    with pytest.raises(UnsafePickleError) as refusal:
        checkpoint.load_network_pkl(path)
    assert isinstance(refusal.value, pickle.UnpicklingError)
    time.sleep(0.1)   # a spawned process, had one been started, would have touched the marker by now
    assert not marker.exists()


@pytest.mark.parametrize('payload', sorted(mp.RUN_BY_PLAIN_PICKLE))
def test_hostile_pickle_payload_is_real_under_plain_pickle(tmp_path, payload):
    # Control for the test above: the same bytes DO run their payload when loaded unsafely.
    marker = tmp_path / 'payload_ran'
    data = mp.payload_pickles(marker)[payload]
    try:
        mp.run_then_reap(lambda: pickle.loads(data))
    except Exception:
        pass   # the payload runs before the (bogus) structure around it fails
    assert _wait_for(marker)


@pytest.mark.parametrize('payload, refused', [('os.system', 'refused global os.system'),
                                              ('builtins.eval', 'refused global builtins.eval'),
                                              ('storage-bytes', 'weights_only')])
def test_refusal_names_what_was_refused(tmp_path, payload, refused):
    path = _write(tmp_path, mp.payload_pickles(tmp_path / 'marker')[payload])
    with pytest.raises(UnsafePickleError, match=refused):
        checkpoint.load_network_pkl(path)


def test_tensor_with_backward_hooks_is_refused(tmp_path):
    import collections
    storage = mp.Call(mp.Global('torch.storage', '_load_from_bytes'), mp.storage_bytes(torch.zeros(1)))
    hooks = collections.OrderedDict([(0, mp.Global('torch._utils', '_rebuild_parameter'))])
    tensor = mp.Call(mp.Global('torch._utils', '_rebuild_tensor_v2'), storage, 0, (1,), (1,), False, hooks)
    with pytest.raises(UnsafePickleError, match='backward hooks'):
        checkpoint.load_network_pkl(_write(tmp_path, mp.dumps({'G': tensor})))


# ----------------------------------------------------------------------------------------------
# Our own snapshots

@checkpoint.register_module_class
class CheckpointTestNet(torch.nn.Module):
    def __init__(self, width, scale=1.0):
        super().__init__()
        self.init_kwargs = dict(width=width, scale=scale)
        self.weight = torch.nn.Parameter(torch.randn(width, width))
        self.register_buffer('running', torch.randn(width))


def test_own_snapshot_round_trips_modules_and_plain_data(tmp_path):
    net = CheckpointTestNet(width=3, scale=0.5)
    data = dict(G_ema=net, D_aux=CheckpointTestNet(width=2),
                meta={'kimg': 12, 'arr': np.arange(4, dtype=np.int16), 'tensor': torch.ones(2), 'pair': (1, 'a')})
    checkpoint.save_network_pkl(tmp_path / 'snap.pkl', data)
    loaded = checkpoint.load_network_pkl(tmp_path / 'snap.pkl')
    assert type(loaded['G_ema']) is CheckpointTestNet and loaded['G_ema'].init_kwargs == net.init_kwargs
    for name, tensor in net.state_dict().items():
        assert torch.equal(loaded['G_ema'].state_dict()[name], tensor)
    assert loaded['D_aux'].weight.shape == (2, 2)
    assert loaded['meta']['kimg'] == 12 and loaded['meta']['pair'] == (1, 'a')
    np.testing.assert_array_equal(loaded['meta']['arr'], np.arange(4))
    assert torch.equal(loaded['meta']['tensor'], torch.ones(2))
    assert loaded['G'] is None and loaded['training_set_kwargs'] is None


def test_own_snapshot_of_official_networks_round_trips(tmp_path, official):
    _, original, _ = official
    checkpoint.save_network_pkl(tmp_path / 'snap.pkl', original)
    loaded = checkpoint.load_network_pkl(tmp_path / 'snap.pkl')
    for key in ('G', 'D', 'G_ema', 'augment_pipe'):
        assert type(loaded[key]) is type(original[key])
        assert loaded[key].init_kwargs == original[key].init_kwargs
        reference = original[key].state_dict()
        assert sorted(loaded[key].state_dict()) == sorted(reference)
        for name, tensor in loaded[key].state_dict().items():
            assert torch.equal(tensor, reference[name]), f'{key}.{name}'
    assert loaded['training_set_kwargs'] == original['training_set_kwargs']


def test_own_snapshot_names_no_code_only_tensor_rebuilders(tmp_path):
    checkpoint.save_network_pkl(tmp_path / 'snap.pkl', dict(G=CheckpointTestNet(width=2), meta={'a': np.ones(2)}))
    globals_seen = []

    class RecordingUnpickler(checkpoint.RestrictedUnpickler):
        def find_class(self, module, name):
            globals_seen.append(f'{module}.{name}')
            return super().find_class(module, name)
    with open(tmp_path / 'snap.pkl', 'rb') as file:
        RecordingUnpickler(file).load()
    modules = {name.rsplit('.', 1)[0] for name in globals_seen}
    assert modules <= {'torch._utils', 'torch.storage', 'collections', 'numpy', 'numpy._core.multiarray'}
    assert 'torch._utils._rebuild_tensor_v2' in globals_seen
    assert b'CheckpointTestNet' in (tmp_path / 'snap.pkl').read_bytes()   # the class, by name only


def test_saving_an_unregistered_module_fails_before_writing(tmp_path):
    class Unregistered(torch.nn.Module):
        init_kwargs = {}
    with pytest.raises(CheckpointError, match='unknown network class .Unregistered.*register_module_class'):
        checkpoint.save_network_pkl(tmp_path / 'snap.pkl', dict(G=Unregistered()))
    assert os.listdir(tmp_path) == []


def test_saving_arbitrary_objects_is_refused(tmp_path):
    with pytest.raises(TypeError, match='cannot save a .*object'):
        checkpoint.save_network_pkl(tmp_path / 'snap.pkl', dict(extra=object()))


def test_snapshot_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'snap.pkl'
    checkpoint.save_network_pkl(path, dict(G=CheckpointTestNet(width=2), meta={'version': 1}))

    def dump_half_then_fail(obj, file, protocol=None):
        file.write(b'\x80\x04partial')
        raise OSError('disk full (simulated)')
    monkeypatch.setattr(checkpoint.pickle, 'dump', dump_half_then_fail)
    with pytest.raises(OSError, match='simulated'):
        checkpoint.save_network_pkl(path, dict(G=CheckpointTestNet(width=2), meta={'version': 2}))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ['snap.pkl']
    assert checkpoint.load_network_pkl(path)['meta'] == {'version': 1}


def test_registering_a_different_class_under_a_taken_name_is_refused():
    class CheckpointTestNet(torch.nn.Module):   # noqa: F811 (same name, different class)
        pass
    with pytest.raises(ValueError, match='already registered'):
        checkpoint.register_module_class(CheckpointTestNet)


def test_training_state_round_trips(tmp_path):
    net = CheckpointTestNet(width=2)
    opt = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.0, 0.99))
    net.weight.sum().backward()
    opt.step()
    state = dict(cur_nimg=4000, opt=opt.state_dict(), rng=[dict(numpy=np.random.get_state(),
                                                                torch=torch.get_rng_state())])
    checkpoint.save_training_state(tmp_path / 'state.pt', state)
    loaded = checkpoint.load_training_state(tmp_path / 'state.pt')
    assert loaded['cur_nimg'] == 4000
    assert torch.equal(loaded['opt']['state'][0]['exp_avg'], opt.state_dict()['state'][0]['exp_avg'])
    np.testing.assert_array_equal(loaded['rng'][0]['numpy'][1], np.random.get_state()[1])
    assert torch.equal(loaded['rng'][0]['torch'], state['rng'][0]['torch'])


def test_snapshot_name_uses_six_digit_kimg():
    assert checkpoint.snapshot_name(1234) == 'network-snapshot-001234.pkl'
    assert checkpoint.snapshot_name(nimg=1_234_999) == 'network-snapshot-001234.pkl'
    with pytest.raises(ValueError, match='exactly one'):
        checkpoint.snapshot_name(1, nimg=1000)


# ----------------------------------------------------------------------------------------------
# Resume helper

def test_load_state_into_copies_matching_names():
    source, target = CheckpointTestNet(width=3), CheckpointTestNet(width=3)
    report = checkpoint.load_state_into(target, source)
    assert report['copied'] == ['running', 'weight'] and report['missing'] == []
    assert torch.equal(target.weight, source.weight) and torch.equal(target.running, source.running)


def test_load_state_into_lists_every_shape_mismatch():
    source, target = CheckpointTestNet(width=3), CheckpointTestNet(width=2)
    before = target.weight.detach().clone()
    with pytest.raises(CheckpointError) as error:
        checkpoint.load_state_into(target, source, what='G')
    message = str(error.value)
    assert 'cannot load G' in message
    assert 'running: source [3] vs target [2]' in message
    assert 'weight: source [3, 3] vs target [2, 2]' in message
    assert torch.equal(target.weight, before)   # nothing half-copied


def test_load_state_into_strict_reports_missing_names():
    source = {'weight': torch.zeros(2, 2)}
    target = CheckpointTestNet(width=2)
    assert checkpoint.load_state_into(target, source)['missing'] == ['running']
    with pytest.raises(CheckpointError, match='missing from source: running'):
        checkpoint.load_state_into(target, source, strict=True)
