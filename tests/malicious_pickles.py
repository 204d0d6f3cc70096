"""Hand-made pickles for the checkpoint tests: hostile payloads and variants of official snapshots.

Never load these bytes with plain `pickle` outside a test: several of them run shell commands.
`Global` lets a test name any module.name in a pickle without importing it (so pickles can refer
to `torch_utils.persistence` or `os.system` without those objects being pickleable here).
"""
import collections
import io
import os
import pickle
import pickletools
import subprocess
import warnings

import torch

from stylegan2_fair.checkpoint import PersistentRecord, _EasyDictStandIn

PERSISTENT_OBJ = ('torch_utils.persistence', '_reconstruct_persistent_obj')


class Global:
    """A reference to `module.name`, written as a pickle global and never resolved here."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args, **kwargs):   # pickle only accepts callables as REDUCE targets
        raise RuntimeError(f'{self.module}.{self.name} is only a name in a test pickle')


class Call:
    """Pickles as `func(*args)` (a REDUCE); `func` is a Global or a real function."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args, **kwargs):   # a Call may itself be the callable of another Call
        raise RuntimeError('a Call is only evaluated when the test pickle is loaded')


class _TestPickler(pickle._Pickler):
    # The pure-Python pickler, taught to write a Global as STACK_GLOBAL without looking it up.
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global_reference(self, ref):
        self.save(ref.module)
        self.save(ref.name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(ref)

    dispatch[Global] = _save_global_reference


def dumps(obj):
    buffer = io.BytesIO()
    _TestPickler(buffer, protocol=4).dump(obj)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Payloads: each, if ever run, creates the file `marker`

def payload_pickles(marker):
    """{name: pickle bytes} of hostile pickles whose payload would create `marker`."""
    marker = os.fspath(marker)
    shell = f'touch {marker}'
    python = f'open({marker!r}, "w").close()'
    system = Call(Global('os', 'system'), shell)
    return {
        'os.system': dumps({'G': system}),
        'posix.system': dumps({'G': Call(Global('posix', 'system'), shell)}),
        'builtins.eval': dumps({'G': Call(Global('builtins', 'eval'), python)}),
        'builtins.exec': dumps({'G': Call(Global('builtins', 'exec'), python)}),
        'subprocess.Popen': dumps({'G': Call(Global('subprocess', 'Popen'), ['touch', marker])}),
        'builtins.getattr+__import__': dumps({'G': Call(
            Call(Global('builtins', 'getattr'), Call(Global('builtins', '__import__'), 'os'), 'system'), shell)}),
        'tensor-rebuild-args': dumps({'G': Call(
            Global('torch._utils', '_rebuild_tensor_v2'), system, 0, (1,), (1,), False, collections.OrderedDict())}),
        'storage-bytes': dumps({'G': Call(
            Global('torch._utils', '_rebuild_tensor_v2'),
            Call(Global('torch.storage', '_load_from_bytes'), torch_save_bytes(Call(os.system, shell))),
            0, (1,), (1,), False, collections.OrderedDict())}),
        'persistent-meta': dumps({'G': Call(Global(*PERSISTENT_OBJ), dict(
            type='class', version=6, module_src='', class_name='Generator',
            state={'_init_args': (), '_init_kwargs': system, '_parameters': {}, '_buffers': {}, '_modules': {}}))}),
    }


# Payloads that plain pickle would run (the rest stop earlier at an import of torch_utils).
RUN_BY_PLAIN_PICKLE = frozenset(['os.system', 'posix.system', 'builtins.eval', 'builtins.exec', 'subprocess.Popen',
                                 'builtins.getattr+__import__', 'tensor-rebuild-args', 'storage-bytes'])


def torch_save_bytes(obj):
    """What torch.storage._load_from_bytes receives: torch.save output (legacy format, as storages use)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def storage_bytes(tensor):
    """The bytes torch itself pickles for a tensor's storage (legacy torch.save of a TypedStorage)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # TypedStorage is deprecated, but it is what pickles hold
        return torch_save_bytes(tensor.storage())


def run_then_reap(make_marker):
    """Plain-pickle control: reap any child process a payload started (Popen), so tests stay clean."""
    result = make_marker()
    if isinstance(result, dict):
        for value in result.values():
            if isinstance(value, subprocess.Popen):
                value.wait(timeout=10)
    return result


# ----------------------------------------------------------------------------------------------
# Variants of official snapshots, written back with the official globals

def records_to_pickle(obj, module_src='# source omitted\n'):
    """Pickle a structure read by read_pickle_safely back into the official format."""
    def convert(value):
        if isinstance(value, PersistentRecord):
            meta = dict(type='class', version=value.version or 6, module_src=module_src,
                        class_name=value.class_name, state=convert(value.state))
            return Call(Global(*PERSISTENT_OBJ), meta)
        if isinstance(value, _EasyDictStandIn):
            return Call(Global('dnnlib.util', 'EasyDict'), {key: convert(item) for key, item in value.items()})
        if isinstance(value, dict):
            return type(value)((key, convert(item)) for key, item in value.items())
        if isinstance(value, (list, tuple)):
            return type(value)(convert(item) for item in value)
        return value
    return dumps(convert(obj))


def rename_global_module(data, old, new):
    """Rewrite every pickled string `old` to `new` (e.g. numpy 2 -> numpy 1 module names).

    Frames are dropped because the lengths change; protocol-4 readers accept unframed data.
    """
    ops = list(pickletools.genops(data))
    out = bytearray()
    for index, (opcode, arg, start) in enumerate(ops):
        end = ops[index + 1][2] if index + 1 < len(ops) else len(data)
        if opcode.name == 'FRAME':
            continue
        if opcode.name in ('SHORT_BINUNICODE', 'BINUNICODE') and arg == old:
            encoded = new.encode('utf-8')
            out += b'\x8c' + bytes([len(encoded)]) + encoded if len(encoded) < 256 else \
                b'X' + len(encoded).to_bytes(4, 'little') + encoded
            continue
        out += data[start:end]
    return bytes(out)
