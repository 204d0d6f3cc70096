"""torch.distributed plumbing: launch detection (spawn, torchrun, SLURM), collectives, RNG state.

Every helper here is a no-op on a single process, so the training loop calls them unconditionally.
"""
import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def launch_env():
    """(rank, world_size, local_rank, master_addr, master_port) from torchrun or SLURM variables, or None."""
    env = os.environ
    if 'RANK' in env and 'WORLD_SIZE' in env:  # torchrun / torch.distributed.launch
        return (int(env['RANK']), int(env['WORLD_SIZE']), int(env.get('LOCAL_RANK', 0)),
                env.get('MASTER_ADDR', '127.0.0.1'), env.get('MASTER_PORT', '29500'))
    if 'SLURM_PROCID' in env and int(env.get('SLURM_NTASKS', '1')) > 1:  # srun
        nodes = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST') or '127.0.0.1'
        return (int(env['SLURM_PROCID']), int(env['SLURM_NTASKS']), int(env.get('SLURM_LOCALID', 0)),
                env.get('MASTER_ADDR') or first_slurm_host(nodes),
                env.get('MASTER_PORT') or str(20000 + int(env.get('SLURM_JOB_ID', '0')) % 20000))
    return None


def first_slurm_host(nodelist):
    """First host of a SLURM node list such as 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    head = nodelist.split(',')[0] if '[' not in nodelist.split(',')[0] else nodelist[:nodelist.index(']') + 1]
    if '[' not in head:
        return head
    prefix, ranges = head.split('[', 1)
    first = ranges.rstrip(']').split(',')[0].split('-')[0]
    return prefix + first


def init_process_group(rank, world_size, master_addr, master_port, device_type, timeout_sec=600):
    """NCCL on GPUs, gloo on CPU; a dead peer makes collectives fail after `timeout_sec`."""
    os.environ['MASTER_ADDR'] = master_addr
    os.environ['MASTER_PORT'] = str(master_port)
    backend = 'nccl' if device_type == 'cuda' else 'gloo'
    dist.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_sec))


def seed_everything(seed, rank=0, world_size=1):
    # Per-rank seeds, so the processes draw different latents.
    s = seed * world_size + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def broadcast_module(*modules):
    if not is_distributed():
        return
    for module in modules:
        if module is None:
            continue
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(params):
    if not is_distributed() or not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def sum_across_ranks(array):
    """Sum a small numpy array over ranks."""
    if not is_distributed():
        return np.asarray(array, dtype=np.float64)
    t = torch.as_tensor(np.asarray(array, dtype=np.float64))
    dist.all_reduce(t)
    return t.numpy()


def all_gather_object(obj):
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_moments(moments):
    """Merge {name: [num, sum, sumsq]} dicts from every rank (names may differ between ranks)."""
    if not is_distributed():
        return moments
    merged = {}
    for part in all_gather_object(moments):
        for name, m in part.items():
            merged[name] = merged.get(name, 0) + np.asarray(m)
    return merged


def all_gather_cat(tensor):
    if not is_distributed():
        return tensor
    device = tensor.device
    if dist.get_backend() == 'gloo':
        tensor = tensor.cpu()
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts).to(device)


def crossed(prev_nimg, cur_nimg, every_nimg):
    """Whether (prev, cur] contains a multiple of every_nimg."""
    every_nimg = max(int(every_nimg), 1)
    return prev_nimg // every_nimg != cur_nimg // every_nimg


def rng_states():
    """Every rank's RNG states (a collective call), so a resumed run draws what an uninterrupted one would."""
    mine = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    return all_gather_object(mine)


def set_rng_states(states):
    if len(states) != world_size():
        return  # a different process count cannot replay the same streams; keep the fresh seeds
    mine = states[rank()]
    random.setstate(mine['python'])
    np.random.set_state(mine['numpy'])
    torch.set_rng_state(mine['torch'])
    if mine['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine['cuda'])
