"""torch.distributed plumbing: launch detection (spawn, torchrun, SLURM), collectives, RNG state,
and a watchdog that turns a dead or hung peer into a clear error instead of a hang.

Every collective helper here is a no-op on a single process, so the training loop calls them
unconditionally. Small control values (stop flags, ADA sums, stats, RNG states) travel over gloo
on the CPU even when gradients use NCCL ('cpu:gloo,cuda:nccl'), so they never wait for the GPU.
"""
import datetime
import hashlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import random
import re
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_SEC = 600
_BATCH_STEP_IDS = range(0xFFFFFFF0, 0x100000000)  # SLURM's ids for the batch script and extern steps


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


# Launch -------------------------------------------------------------------------------------------

def launch_env(env=None):
    """(rank, world_size, local_rank, master_addr, master_port) when torchrun or srun started this
    process as one rank of several, else None."""
    env = os.environ if env is None else env
    if 'RANK' in env and 'WORLD_SIZE' in env:  # torchrun / torch.distributed.launch
        return (int(env['RANK']), int(env['WORLD_SIZE']), int(env.get('LOCAL_RANK', 0)),
                env.get('MASTER_ADDR', '127.0.0.1'), env.get('MASTER_PORT', '29500'))
    # srun: one task per rank. The batch script itself also sees SLURM_PROCID and SLURM_NTASKS, so
    # only a real job step counts (a batch script running `train.py --gpus=4` spawns its ranks).
    step = env.get('SLURM_STEP_ID', env.get('SLURM_STEPID'))
    if 'SLURM_PROCID' not in env or step is None or int(step) in _BATCH_STEP_IDS:
        return None
    world = int(env.get('SLURM_STEP_NUM_TASKS') or env.get('SLURM_NTASKS') or 1)
    if world <= 1:
        return None
    nodes = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST') or '127.0.0.1'
    # A port derived from the job id, so every task agrees without talking to the others first.
    port = env.get('MASTER_PORT') or str(20000 + int(env.get('SLURM_JOB_ID', '0')) % 20000)
    return (int(env['SLURM_PROCID']), world, int(env.get('SLURM_LOCALID', 0)),
            env.get('MASTER_ADDR') or first_slurm_host(nodes), port)


def first_slurm_host(nodelist):
    """First host of a SLURM node list: 'gpu[03-05,07],cpu1' -> 'gpu03', 'r1-[2-3]-n[4-5]' -> 'r1-2-n4'."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first entry ends at the first comma outside brackets
        depth += (ch == '[') - (ch == ']')
        if ch == ',' and depth == 0:
            end = i
            break
    return re.sub(r'\[([^\]]*)\]', lambda m: m.group(1).split(',')[0].split('-')[0], nodelist[:end])


def init_process_group(rank, world_size, master_addr, master_port, device_type, timeout_sec=DEFAULT_TIMEOUT_SEC):
    """Join the process group (env://). A dead peer makes collectives fail after `timeout_sec`."""
    os.environ['MASTER_ADDR'] = str(master_addr)
    os.environ['MASTER_PORT'] = str(master_port)
    backend = 'cpu:gloo,cuda:nccl' if device_type == 'cuda' else 'gloo'
    dist.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_sec))


def spawn(fn, nprocs, args=(), grace_sec=DEFAULT_TIMEOUT_SEC + 30, forward=(signal.SIGTERM, signal.SIGUSR1)):
    """Run fn(local_rank, *args) in `nprocs` fresh processes and return their exit codes.

    Signals in `forward` that reach this process are passed on to every child (a scheduler or a
    user signals only the parent). When a child dies, the others are given `grace_sec` to notice
    (their collectives fail) and exit on their own before they are killed.
    """
    ctx = multiprocessing.get_context('spawn')
    procs = [ctx.Process(target=_spawn_entry, args=(fn, i, args), name=f'rank{i}') for i in range(nprocs)]
    for p in procs:
        p.start()

    def relay(signum, _frame):
        for p in procs:
            if p.exitcode is None:
                os.kill(p.pid, signum)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, relay) for sig in forward}
    try:
        deadline = None
        while any(p.exitcode is None for p in procs):
            waiting = [p.sentinel for p in procs if p.exitcode is None]
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
            multiprocessing.connection.wait(waiting, timeout=timeout if timeout is not None else 1.0)
            for p in procs:
                p.join(timeout=0)
            failed = any(p.exitcode not in (None, 0) for p in procs)
            if failed and deadline is None:
                deadline = time.monotonic() + grace_sec
            if deadline is not None and time.monotonic() >= deadline:
                for p in procs:
                    if p.exitcode is None:
                        p.kill()
                for p in procs:
                    p.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join()
    return [p.exitcode for p in procs]


def _spawn_entry(fn, local_rank, args):
    code = fn(local_rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code if isinstance(code, int) else 0)


def describe_exit_code(code):
    if code is not None and code < 0:
        try:
            return f'was killed by {signal.Signals(-code).name}'
        except ValueError:
            return f'was killed by signal {-code}'
    return f'exited with status {code}'


# Collectives --------------------------------------------------------------------------------------

def barrier():
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src=0):
    """Rank `src`'s `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


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
    """Sum a small numpy array over ranks (on the CPU, through gloo)."""
    if not is_distributed():
        return np.asarray(array, dtype=np.float64)
    t = torch.as_tensor(np.asarray(array, dtype=np.float64)).clone()
    dist.all_reduce(t)
    return t.numpy()


def any_across_ranks(flag):
    """True on every rank if `flag` is true on any: lets all ranks agree on one step to stop at."""
    return bool(sum_across_ranks([float(bool(flag))])[0] > 0)


def all_gather_object(obj):
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_rank0(obj):
    """Every rank's `obj` as a list on rank 0; None on the other ranks."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
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


# Seeds and RNG state ------------------------------------------------------------------------------

def seed_everything(seed, rank=None):
    """Seed python, numpy and torch. rank=None: the plain seed (network init, the same on every rank
    and for every process count); a rank: an independent stream per rank (latents, labels, ADA)."""
    if rank is not None:
        seed = int(np.random.SeedSequence([seed, 0x5EED, rank]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def local_rng_state():
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_local_rng_state(state):
    random.setstate(_as_python_state(state['python']))
    np.random.set_state(tuple(state['numpy']))
    torch.set_rng_state(torch.as_tensor(state['torch'], dtype=torch.uint8))
    if state.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _as_python_state(state):
    version, internal, gauss = state
    return version, tuple(internal), gauss


def digest(obj):
    """A content hash of nested dicts/lists/tensors/arrays, the same for equal content on any rank and device."""
    h = hashlib.sha256()

    def visit(x):
        if isinstance(x, torch.Tensor):
            h.update(f'T{x.dtype}{tuple(x.shape)}'.encode())
            h.update(x.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b'')
        elif isinstance(x, np.ndarray):
            h.update(f'A{x.dtype}{x.shape}'.encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            h.update(f'D{len(x)}'.encode())
            for key in sorted(x, key=repr):
                visit(key)
                visit(x[key])
        elif isinstance(x, (list, tuple)):
            h.update(f'L{type(x).__name__}{len(x)}'.encode())
            for item in x:
                visit(item)
        elif x is None or isinstance(x, (bool, int, float, str, bytes, np.generic)):
            h.update(f'S{type(x).__name__}{x!r}'.encode())
        else:
            h.update(pickle.dumps(x, protocol=4))
    visit(obj)
    return h.hexdigest()


# Watchdog -----------------------------------------------------------------------------------------

class PeerWatchdog:
    """Heartbeats through the rendezvous TCPStore, so a rank can tell which peer died or hung.

    Every rank bumps its own counter every `interval` seconds from a daemon thread and watches its
    ring successor. A successor silent for `timeout_sec` is declared lost (written to the store);
    every rank that sees a loss, or cannot reach the store for `timeout_sec`, prints who is gone and
    exits with status 1. This also covers hangs that no collective timeout catches. When a
    collective fails first (gloo notices a SIGKILLed peer within a second), `explain()` names the
    ranks whose heartbeat stopped.
    """

    def __init__(self, rank, world_size, timeout_sec=DEFAULT_TIMEOUT_SEC, host=None, port=None, exit_fn=None):
        self.rank, self.world_size, self.timeout = rank, world_size, float(timeout_sec)
        self.interval = min(max(self.timeout / 10, 0.2), 15.0)
        self.host = host or os.environ.get('MASTER_ADDR', '127.0.0.1')
        self.port = int(port or os.environ.get('MASTER_PORT', 29500))
        self.exit_fn = exit_fn or (lambda: os._exit(1))
        # torchrun restarts reuse its store: keep each attempt's keys apart.
        self.prefix = f'sg2f/{os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")}/'
        self.store = dist.TCPStore(self.host, self.port, is_master=False, wait_for_workers=False,
                                   timeout=datetime.timedelta(seconds=max(self.timeout, 5)))
        self._lock = threading.Lock()  # one store connection, used by the thread and by explain()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='PeerWatchdog', daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self.interval + 1)

    def report_failure(self, message):
        """Tell the peers why this rank is about to exit (best effort)."""
        try:
            with self._lock:
                self.store.set(f'{self.prefix}failed/{self.rank}', message[:2000])
        except Exception:  # pylint: disable=broad-except
            pass

    def _run(self):
        successor = (self.rank + 1) % self.world_size
        last_value, last_change, store_ok = None, time.monotonic(), time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                with self._lock:
                    self.store.add(f'{self.prefix}beat/{self.rank}', 1)
                    value = self.store.add(f'{self.prefix}beat/{successor}', 0)
                    if value != last_value:
                        last_value, last_change = value, now
                    elif now - last_change > self.timeout and successor != self.rank:
                        why = f'rank {successor} stopped responding (no heartbeat for {now - last_change:.0f} s; ' \
                              f'killed or hung)'
                        self.store.set(self.prefix + 'lost', why)
                    lost = self.store.check([self.prefix + 'lost']) and self.store.get(self.prefix + 'lost').decode()
                store_ok = now
            except Exception:  # pylint: disable=broad-except
                lost = None
                if now - store_ok > self.timeout:
                    lost = (f'the rendezvous store at {self.host}:{self.port} has been unreachable for '
                            f'{now - store_ok:.0f} s: rank 0 (or the launcher hosting it) has died')
            if lost and not self._stop.is_set():
                self._fail(lost)

    def _fail(self, why):
        print(f'\nrank {self.rank}: stopping: {why}', file=sys.stderr, flush=True)
        self.exit_fn()

    def explain(self, wait_sec=None):
        """After a failed collective: a sentence naming the ranks that died or failed."""
        wait_sec = 2.5 * self.interval if wait_sec is None else wait_sec
        peers = [r for r in range(self.world_size) if r != self.rank]
        def beats():
            with self._lock:
                return {r: self.store.add(f'{self.prefix}beat/{r}', 0) for r in peers}
        try:
            with self._lock:
                failed = [f'rank {r} failed: {self.store.get(f"{self.prefix}failed/{r}").decode()}' for r in peers
                          if self.store.check([f'{self.prefix}failed/{r}'])]
            if failed:
                return '; '.join(failed)
            before = beats()
            time.sleep(wait_sec)
            after = beats()
        except Exception:  # pylint: disable=broad-except
            return (f'the rendezvous store at {self.host}:{self.port} is unreachable: rank 0 (or the launcher '
                    f'hosting it) has died')
        silent = [r for r in peers if after[r] == before[r]]
        if silent:
            return ', '.join(f'rank {r}' for r in silent) + ' stopped responding (killed, crashed or hung)'
        return 'no peer looks dead; see the other ranks\' logs'
