"""Network pickles: official StyleGAN2-ADA snapshots and our own, read without executing their code.

An official snapshot stores each network as `_reconstruct_persistent_obj(meta)`, where `meta` holds
the whole Python source of the defining module; the official loader runs that source, so loading an
untrusted pickle runs arbitrary code and needs the official `torch_utils`/`dnnlib` on the path.
Here every global a pickle names is answered from an explicit allow-list. Persistent objects become
inert records (class name + state), which are rebuilt as this package's classes by name, from their
recorded constructor kwargs, and filled tensor by tensor. Nothing from the file is ever executed.

Our own snapshots are plain data: each module is written as {class_name, init_kwargs, state_dict},
so they load through the same restricted reader.
"""
import collections
import dataclasses
import inspect
import io
import os
import pickle
import warnings

import numpy as np
import torch

from .fileio import atomic_write

NETWORK_KEYS = ('G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs')
_RECORD_TAG = '__stylegan2_fair_module__'   # marks a module record inside our own snapshots
_RECORD_VERSION = 1


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something outside the allow-list; nothing it names was run."""


class CheckpointError(ValueError):
    """The pickle is safe to read but does not describe networks this package can rebuild."""


# ----------------------------------------------------------------------------------------------
# Registry of module classes that snapshots may name

_DEFAULT_CLASSES = {   # name -> module holding it; imported on first use so this file stands alone
    'Generator': 'stylegan2_fair.networks',
    'Discriminator': 'stylegan2_fair.networks',
    'AugmentPipe': 'stylegan2_fair.augment',
}
_registered_classes = {}

# Sub-modules of official StyleGAN2(-ADA) networks. They are rebuilt by their top-level network's
# constructor, so only their names are checked (an unknown name means a foreign architecture).
STYLEGAN2_SUBMODULES = frozenset([
    'MappingNetwork', 'SynthesisNetwork', 'SynthesisBlock', 'SynthesisLayer', 'ToRGBLayer',
    'FullyConnectedLayer', 'Conv2dLayer', 'DiscriminatorBlock', 'DiscriminatorEpilogue',
    'MinibatchStdLayer'])

# StyleGAN3 pickles reuse the StyleGAN2 class names; these only exist in StyleGAN3 networks.
_STYLEGAN3_CLASSES = frozenset(['SynthesisInput'])
_STYLEGAN3_TENSORS = frozenset(['magnitude_ema', 'up_filter', 'down_filter'])
_STYLEGAN3_KWARGS = frozenset([
    'magnitude_ema_beta', 'conv_kernel', 'use_radial_filters', 'num_critical', 'first_cutoff',
    'first_stopband', 'last_stopband_rel', 'margin_size', 'output_scale', 'filter_size',
    'lrelu_upsampling', 'is_torgb', 'is_critically_sampled', 'in_sampling_rate',
    'out_sampling_rate', 'in_cutoff', 'out_cutoff', 'in_half_width', 'out_half_width'])

# Constant buffers a constructor recomputes itself (official AugmentPipe filter banks): copied when
# our class keeps them under the same name, otherwise skipped rather than reported as unexpected.
_DERIVED_BUFFERS = {'AugmentPipe': frozenset(['Hz_geom', 'Hz_fbank'])}


def register_module_class(cls, name=None):
    """Allow snapshots to hold modules of `cls` (usable as a decorator). Returns `cls`.

    The class must record its constructor kwargs in `self.init_kwargs` so it can be rebuilt.
    """
    name = name or cls.__name__
    known = _registered_classes.get(name)
    if known is not None and known is not cls:
        raise ValueError(f'module class name {name!r} is already registered to {known.__module__}.'
                         f'{known.__qualname__}; pass a different name= to register_module_class')
    _registered_classes[name] = cls
    return cls


def _module_class(name, where):
    if name in _registered_classes:
        return _registered_classes[name]
    if name in _DEFAULT_CLASSES:
        module = __import__(_DEFAULT_CLASSES[name], fromlist=[name])
        return register_module_class(getattr(module, name))
    known = sorted(set(_DEFAULT_CLASSES) | set(_registered_classes))
    raise CheckpointError(f'{where}: unknown network class {name!r}; this package can rebuild {known}. '
                          f'If it is a training hook\'s network, call register_module_class() on its '
                          f'class before loading.')


# ----------------------------------------------------------------------------------------------
# Restricted unpickling

@dataclasses.dataclass
class PersistentRecord:
    """An official persistent object, kept as data: its class name and its `__dict__`."""
    class_name: str
    state: dict
    version: int = 0


class _EasyDictStandIn(dict):
    """Answers `dnnlib.util.EasyDict`; converted to a plain dict after loading."""


def _persistent_record(meta):
    # Stand-in for torch_utils.persistence._reconstruct_persistent_obj: keeps the data, drops
    # module_src unread (running it is exactly what makes official pickles unsafe).
    kind = meta.get('type') if isinstance(meta, dict) else type(meta).__name__
    if kind != 'class':
        raise UnsafePickleError(f'persistent object meta must be a dict with type "class", got {kind!r}')
    class_name, state = meta.get('class_name'), meta.get('state')
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise UnsafePickleError('persistent object meta lacks a string class_name and a dict state')
    return PersistentRecord(class_name=class_name, state=state, version=meta.get('version', 0))


def _load_storage_from_bytes(data):
    # Stand-in for torch.storage._load_from_bytes, which would call torch.load(weights_only=False).
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError(f'tensor storage must be bytes, got {type(data).__name__}')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')   # TypedStorage deprecation notices, one per tensor
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location='cpu')
    except pickle.UnpicklingError as error:
        raise UnsafePickleError(f'refused a tensor storage whose embedded pickle is not plain tensor '
                                f'data (torch weights_only check): {error}') from None
    except Exception as error:
        raise CheckpointError(f'a tensor storage in the pickle is corrupt or of an unknown format '
                              f'({type(error).__name__}: {error}); the file is damaged') from error
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f'tensor storage bytes decoded to {type(storage).__name__}, not a storage')
    return storage


def _no_hooks(hooks):
    # Hooks would be callables run later by autograd; real snapshots never carry any.
    if hooks is not None and (not isinstance(hooks, dict) or len(hooks) > 0):
        raise UnsafePickleError('refused a tensor that carries backward hooks')


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f'tensor rebuilt from a {type(storage).__name__}, not a storage')
    _no_hooks(backward_hooks)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f'parameter rebuilt from a {type(data).__name__}, not a tensor')
    _no_hooks(backward_hooks)
    return torch.nn.Parameter(data, requires_grad=requires_grad)


_np_multiarray = (np._core if hasattr(np, '_core') else np.core).multiarray
_ALLOWED_GLOBALS = {
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _persistent_record,
    ('dnnlib.util', 'EasyDict'): _EasyDictStandIn,
    ('dnnlib', 'EasyDict'): _EasyDictStandIn,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch.storage', '_load_from_bytes'): _load_storage_from_bytes,
    ('torch', 'Size'): torch.Size,
    ('numpy', 'dtype'): np.dtype,
    ('numpy', 'ndarray'): np.ndarray,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'complex'): complex,
    ('builtins', 'bytearray'): bytearray,
}
for _numpy_module in ('numpy._core.multiarray', 'numpy.core.multiarray'):   # numpy 2 / numpy 1 names
    _ALLOWED_GLOBALS[(_numpy_module, 'scalar')] = _np_multiarray.scalar
    _ALLOWED_GLOBALS[(_numpy_module, '_reconstruct')] = _np_multiarray._reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals; anything else raises UnsafePickleError."""

    def __init__(self, file, source='<pickle>'):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        answer = _ALLOWED_GLOBALS.get((module, name))
        if answer is None and module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            answer = getattr(torch, name)   # torch.float32 and friends are plain values
        if answer is None and (module, name) == ('dnnlib.tflib.network', 'Network'):
            from .tf_convert import TFNetworkRecord   # TF pickles: an inert record of the network's state
            answer = TFNetworkRecord
        if answer is None:
            hint = ''
            if module.startswith('dnnlib.tflib'):
                hint = (' This looks like a TensorFlow StyleGAN pickle, but of the dnnlib.tflib names only '
                        'dnnlib.tflib.network.Network (the G, D, Gs networks) can be read; a pickle of '
                        'other TF objects (optimizers, training state) cannot be converted.')
            raise UnsafePickleError(
                f'refused global {module}.{name} in {self.source}: it is not on the allow-list of '
                f'names a StyleGAN2-ADA or stylegan2-fair network pickle needs, so the file is '
                f'malicious, corrupt or of another format; nothing from it was run.{hint}')
        return answer

    def persistent_load(self, pid):
        raise UnsafePickleError(f'refused persistent id {pid!r} in {self.source}: network pickles use none')


def _describe_source(path_or_file):
    if hasattr(path_or_file, 'read'):
        return str(getattr(path_or_file, 'name', '<file object>'))
    return os.fspath(path_or_file)


def read_pickle_safely(path_or_file):
    """Unpickle with the restricted reader; official networks come back as PersistentRecord."""
    source = _describe_source(path_or_file)
    if hasattr(path_or_file, 'read'):
        return RestrictedUnpickler(path_or_file, source=source).load()
    with open(path_or_file, 'rb') as file:
        return RestrictedUnpickler(file, source=source).load()


# ----------------------------------------------------------------------------------------------
# Rebuilding networks

def _plain(value):
    """EasyDict stand-ins -> dict, recursively (kwargs and training_set_kwargs are plain data)."""
    if isinstance(value, dict):
        items = ((key, _plain(item)) for key, item in value.items())
        return collections.OrderedDict(items) if type(value) is collections.OrderedDict else dict(items)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(_plain(item) for item in value)
    return value


def _walk_records(record, prefix=''):
    """Yield (dotted prefix, record) for an official record and its nested sub-module records."""
    yield prefix, record
    for name, child in (record.state.get('_modules') or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f'sub-module {prefix}{name} is a {type(child).__name__}, '
                                  f'not a persistent network object')
        yield from _walk_records(child, f'{prefix}{name}.')


def _all_keys(kwargs):
    """Keys of a kwargs dict and of the dicts nested in it (mapping_kwargs, synthesis_kwargs, ...)."""
    keys = set(kwargs)
    for value in kwargs.values():
        if isinstance(value, dict):
            keys |= _all_keys(value)
    return keys


def _stylegan3_evidence(record):
    for prefix, sub in _walk_records(record):
        if sub.class_name in _STYLEGAN3_CLASSES:
            return f'class {sub.class_name} at {prefix or "top level"}'
        for group in ('_parameters', '_buffers'):
            found = _STYLEGAN3_TENSORS & set(sub.state.get(group) or {})
            if found:
                return f'tensor {prefix}{sorted(found)[0]}'
        found = _STYLEGAN3_KWARGS & _all_keys(sub.state.get('_init_kwargs') or {})
        if found:
            return f'constructor argument {sorted(found)[0]!r} of {prefix or sub.class_name}'
    return None


def _official_tensors(record, where):
    """Flatten an official record's tensors to {dotted name: tensor}, checking sub-module names."""
    tensors = {}
    for prefix, sub in _walk_records(record):
        if prefix and sub.class_name not in STYLEGAN2_SUBMODULES and sub.class_name not in _registered_classes:
            raise CheckpointError(f'{where}: unknown sub-module class {sub.class_name!r} at {prefix[:-1]}; '
                                  f'this is not a StyleGAN2/StyleGAN2-ADA network')
        skip = set(sub.state.get('_non_persistent_buffers_set') or ())
        # Parameters and buffers share one namespace: frozen layers (--freezed) keep weights as buffers.
        for group in ('_parameters', '_buffers'):
            for name, tensor in (sub.state.get(group) or {}).items():
                if tensor is None or name in skip:
                    continue
                if not isinstance(tensor, torch.Tensor):
                    raise CheckpointError(f'{where}: {prefix}{name} is a {type(tensor).__name__}, not a tensor')
                tensors[prefix + name] = tensor
    return tensors


def _construct(cls, args, kwargs, where):
    try:
        inspect.signature(cls).bind(*args, **kwargs)
        return cls(*args, **kwargs)
    except TypeError as error:
        raise CheckpointError(f'{where}: {cls.__name__} cannot be built from the pickled constructor '
                              f'arguments {kwargs} ({error}); the network was made by an incompatible '
                              f'version or architecture') from error


def _fill(module, tensors, where, derived=frozenset()):
    """Copy `tensors` into `module` by name; every name must match both ways, with equal shapes."""
    targets = module.state_dict(keep_vars=True)
    not_tensors = sorted(name for name, value in tensors.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f'{where}: entries {not_tensors} of the pickled state are not tensors')
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets) - set(derived))
    mismatched = [f'{name}: pickle {list(tensors[name].shape)} vs ours {list(targets[name].shape)}'
                  for name in sorted(set(targets) & set(tensors))
                  if tensors[name].shape != targets[name].shape]
    if missing or unexpected or mismatched:
        lines = [f'{where}: the pickled tensors do not fit {type(module).__name__}'
                 f'({getattr(module, "init_kwargs", "")})']
        if missing:
            lines.append(f'  missing from the pickle: {", ".join(missing)}')
        if unexpected:
            lines.append(f'  not in our network: {", ".join(unexpected)}')
        if mismatched:
            lines.append('  shape mismatch: ' + '; '.join(mismatched))
        lines.append('  The pickle was made with different network options or code; build the network with '
                     'matching options.')
        raise CheckpointError('\n'.join(lines))
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(tensors[name])


def _build_official(record, where):
    evidence = _stylegan3_evidence(record)
    if evidence is not None:
        raise CheckpointError(f'{where}: this is a StyleGAN3 network ({evidence}); stylegan2-fair supports '
                              f'StyleGAN2/StyleGAN2-ADA networks only. Use NVlabs/stylegan3 for this pickle, '
                              f'or start from a StyleGAN2-ADA snapshot.')
    cls = _module_class(record.class_name, where)
    args = _plain(record.state.get('_init_args', ()))
    kwargs = _plain(record.state.get('_init_kwargs', {}))
    module = _construct(cls, tuple(args), dict(kwargs), where)
    _fill(module, _official_tensors(record, where), where, _DERIVED_BUFFERS.get(record.class_name, ()))
    return module.train(bool(record.state.get('training', False)))


def _is_module_record(value):
    return isinstance(value, dict) and value.get(_RECORD_TAG) == _RECORD_VERSION


def _build_own(record, where):
    cls = _module_class(record['class_name'], where)
    module = _construct(cls, (), dict(_plain(record['init_kwargs'])), where)
    _fill(module, dict(record['state_dict']), where)
    return module.train(bool(record.get('training', False)))


def _materialise(value, device, where):
    """Turn records into modules (on `device`) and EasyDicts into dicts, anywhere in the structure."""
    if isinstance(value, PersistentRecord):
        module = _build_official(value, where)
    elif _is_module_record(value):
        module = _build_own(value, where)
    elif isinstance(value, dict):
        items = ((key, _materialise(item, device, f'{where}.{key}')) for key, item in value.items())
        return collections.OrderedDict(items) if type(value) is collections.OrderedDict else dict(items)
    elif isinstance(value, list):
        return [_materialise(item, device, f'{where}[{i}]') for i, item in enumerate(value)]
    elif type(value) is tuple:
        return tuple(_materialise(item, device, f'{where}[{i}]') for i, item in enumerate(value))
    else:
        return value
    # Snapshots hold frozen copies, as the official ones do (eval/requires_grad off is the caller's call).
    return module.requires_grad_(False).to(device)


def load_network_pkl(path_or_file, device='cpu'):
    """Load an official StyleGAN2-ADA snapshot, a TensorFlow StyleGAN2(-ADA) pickle or one of ours,
    executing nothing from the file (TF pickles are converted by `tf_convert`).

    Returns a dict with G, D, G_ema, augment_pipe, training_set_kwargs (None where absent) plus any
    other top-level keys of the pickle. Networks are this package's classes on `device`, with
    requires_grad off. Raises UnsafePickleError for disallowed content, CheckpointError for
    networks that cannot be rebuilt (StyleGAN3, unknown classes, mismatched tensors).
    """
    source = _describe_source(path_or_file)
    data = read_pickle_safely(path_or_file)
    from . import tf_convert
    if tf_convert.is_tf_pickle(data):   # TensorFlow (G, D, Gs): converted from its variables
        return tf_convert.convert_tf_pickle(data, source, device)
    if not isinstance(data, dict):
        raise CheckpointError(f'{source}: expected a pickled dict of networks, got {type(data).__name__}')
    result = dict.fromkeys(NETWORK_KEYS)
    for key, value in data.items():
        result[key] = _materialise(value, torch.device(device), f'{source}:{key}')
    return result


# ----------------------------------------------------------------------------------------------
# Writing our own snapshots

_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes, np.generic, torch.dtype)


def _module_record(module, where):
    name = type(module).__name__
    if _module_class(name, where) is not type(module):
        raise CheckpointError(f'{where}: {type(module).__qualname__} is not the class registered as {name!r}; '
                              f'register it with register_module_class(cls, name=...) under a unique name')
    if not isinstance(getattr(module, 'init_kwargs', None), dict):
        raise CheckpointError(f'{where}: {name} has no dict `init_kwargs`; record its constructor kwargs '
                              f'there so the snapshot can rebuild it')
    state = collections.OrderedDict((key, tensor.detach().cpu().clone())
                                    for key, tensor in module.state_dict().items())
    return {_RECORD_TAG: _RECORD_VERSION, 'class_name': name,
            'init_kwargs': _to_plain_data(module.init_kwargs, f'{where}.init_kwargs'),
            'state_dict': state, 'training': module.training}


def _to_plain_data(value, where):
    """Modules -> records; check that everything else is data the restricted reader accepts."""
    if isinstance(value, torch.nn.Module):
        return _module_record(value, where)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f'{where}: numpy arrays of Python objects cannot be saved; use a list')
        return value
    if isinstance(value, dict):
        items = ((key, _to_plain_data(item, f'{where}.{key}')) for key, item in value.items())
        return collections.OrderedDict(items) if isinstance(value, collections.OrderedDict) else dict(items)
    if isinstance(value, list):
        return [_to_plain_data(item, f'{where}[{i}]') for i, item in enumerate(value)]
    if isinstance(value, (tuple, set, frozenset)):   # namedtuples and subclasses are stored as the base type
        base = next(kind for kind in (tuple, set, frozenset) if isinstance(value, kind))
        return base(_to_plain_data(item, f'{where}[{i}]') for i, item in enumerate(value))
    if isinstance(value, _PLAIN_SCALARS):
        return value
    raise TypeError(f'{where}: cannot save a {type(value).__qualname__} in a snapshot; only modules, tensors, '
                    f'numpy arrays and plain data (dict, list, tuple, numbers, strings) are allowed')


def _atomic_write(path, payload):
    """Pickle `payload` atomically (all or nothing)."""
    atomic_write(path, lambda f: pickle.dump(payload, f, protocol=4))


def save_network_pkl(path, data):
    """Write a snapshot dict atomically; modules are stored as {class_name, init_kwargs, state_dict}."""
    if not isinstance(data, dict):
        raise TypeError(f'save_network_pkl expects a dict of networks and data, got {type(data).__name__}')
    _atomic_write(path, {key: _to_plain_data(value, key) for key, value in data.items()})


def save_training_state(path, state):
    """Write resumable training state (counters, optimiser states, RNG states) atomically, as plain data."""
    if not isinstance(state, dict):
        raise TypeError(f'save_training_state expects a dict, got {type(state).__name__}')
    _atomic_write(path, _to_plain_data(state, 'training_state'))


def load_training_state(path_or_file):
    """Read what save_training_state wrote, through the restricted reader."""
    state = read_pickle_safely(path_or_file)
    if not isinstance(state, dict):
        raise CheckpointError(f'{path_or_file}: expected a training-state dict, got {type(state).__name__}')
    return _materialise(state, torch.device('cpu'), 'training_state')


def snapshot_name(kimg=None, *, nimg=None):
    """File name of a snapshot, official style: network-snapshot-NNNNNN.pkl (whole kimg)."""
    if (kimg is None) == (nimg is None):
        raise ValueError('snapshot_name needs exactly one of kimg or nimg=')
    kimg = int(nimg) // 1000 if nimg is not None else int(kimg)
    if kimg < 0:
        raise ValueError(f'snapshot_name: kimg must be >= 0, got {kimg}')
    return f'network-snapshot-{kimg:06d}.pkl'


# ----------------------------------------------------------------------------------------------
# Resume

def load_state_into(module, source, strict=False, what=None):
    """Copy parameters and buffers from `source` (a module or a name->tensor dict) into `module`.

    Names present on both sides are copied; with strict=True a name present on only one side is an
    error too. Shape mismatches always raise, listing every mismatching name with both shapes.
    Returns dict(copied=[...], missing=[...], unexpected=[...]) (missing: in `module` only).
    """
    what = what or type(module).__name__
    if isinstance(source, torch.nn.Module):
        source = dict(list(source.named_parameters()) + list(source.named_buffers()))
    elif not isinstance(source, dict):
        raise TypeError(f'{what}: load_state_into needs a module or a dict of tensors, got {type(source).__name__}')
    targets = dict(list(module.named_parameters()) + list(module.named_buffers()))
    missing = sorted(set(targets) - set(source))
    unexpected = sorted(set(source) - set(targets))
    mismatched = [f'{name}: source {list(source[name].shape)} vs target {list(targets[name].shape)}'
                  for name in sorted(set(targets) & set(source))
                  if tuple(source[name].shape) != tuple(targets[name].shape)]
    problems = []
    if mismatched:
        problems.append('shape mismatch: ' + '; '.join(mismatched))
    if strict and missing:
        problems.append('missing from source: ' + ', '.join(missing))
    if strict and unexpected:
        problems.append('not in target: ' + ', '.join(unexpected))
    if problems:
        raise CheckpointError(f'cannot load {what}: ' + '\n  '.join(problems) +
                              '\n  Resume needs the same network options (resolution, channels, '
                              'mapping layers, architecture) as the run that wrote the pickle: pass the --cfg it '
                              'was trained with, or --resume-arch=1 to build G and D as the pickle\'s networks.')
    copied = sorted(set(targets) & set(source))
    with torch.no_grad():
        for name in copied:
            targets[name].copy_(source[name])
    return dict(copied=copied, missing=missing, unexpected=unexpected)
