"""The StyleGAN2-ADA training loop, with named hook points for fairness methods.

Reads top to bottom as the official algorithm: each iteration fetches reals, runs the phases
Gmain/Greg/Dmain/Dreg (lazy regularisation), updates the EMA generator and the ADA probability;
each tick reports statistics and writes snapshots. Training hooks (training_hooks/) are called at
named points and see the run through `TrainingRun`; this module never names a method.
"""
import copy
import json
import os
import time

import numpy as np
import psutil
import torch

from . import checkpoint, distributed, imaging, stats
from .augment import AugmentPipe, adjust_p
from .dataset import ImageFolderDataset
from .loss import StyleGAN2Loss
from .networks import Discriminator, Generator
from .samplers import InfiniteSampler


class TrainingRun:
    """The view of the training run that hooks get: what they may read and the few things they may do."""

    def __init__(self, loop):
        self._loop = loop

    # What hooks may read.
    G = property(lambda self: self._loop.G)
    D = property(lambda self: self._loop.D)
    G_ema = property(lambda self: self._loop.G_ema)
    augment_pipe = property(lambda self: self._loop.augment_pipe)
    training_set = property(lambda self: self._loop.training_set)
    device = property(lambda self: self._loop.device)
    rank = property(lambda self: self._loop.rank)
    world_size = property(lambda self: self._loop.world_size)
    cur_nimg = property(lambda self: self._loop.cur_nimg)
    cur_tick = property(lambda self: self._loop.cur_tick)
    batch_size = property(lambda self: self._loop.batch_size)
    batch_gpu = property(lambda self: self._loop.batch_gpu)
    total_kimg = property(lambda self: self._loop.total_kimg)
    run_dir = property(lambda self: self._loop.run_dir)
    random_seed = property(lambda self: self._loop.random_seed)
    G_opt_kwargs = property(lambda self: dict(self._loop.G_opt_kwargs))
    D_opt_kwargs = property(lambda self: dict(self._loop.D_opt_kwargs))
    r1_gamma = property(lambda self: self._loop.loss.r1_gamma)
    D_reg_interval = property(lambda self: self._loop.D_reg_interval)  # None: R1 on every D step
    # 'ns' (non-saturating, the official loss) or 'hinge'; the official loss has only the former.
    gan_loss = property(lambda self: getattr(self._loop.loss, 'gan_loss', 'ns'))

    # What hooks may do.
    def report(self, name, value):
        return stats.report(name, value)

    def real_loss(self, logits):
        """D's per-sample loss on reals with these logits, under the run's GAN loss."""
        from .loss import real_loss
        return real_loss(logits, self.gan_loss)

    def report0(self, name, value):
        """Report `value` from rank 0 only, for figures every rank holds alike. The other ranks report
        nothing under the same name, as the official training_stats needs every name on every rank."""
        return self.report(name, value if self.rank == 0 else [])

    def request_new_sampler(self):
        """Ask the loop to call every hook's make_sampler() before the next iteration."""
        self._loop.sampler_requested = True

    def all_gather(self, tensor):
        """Concatenate `tensor` (same shape on every rank) from all ranks along dim 0."""
        return distributed.all_gather_cat(tensor)

    def crossed_kimg(self, every_kimg):
        """True if the last iteration crossed a multiple of `every_kimg` kimg."""
        return distributed.crossed(self._loop.prev_nimg, self._loop.cur_nimg, every_kimg * 1000)

    def random_labels(self, n):
        return self._loop.random_labels(n)

    def data_stream(self, sampler=None, batch_size=None):
        """An endless iterator of (img float [-1,1], c, idx) batches on the device, for extra networks."""
        if sampler is None:
            sampler = InfiniteSampler(len(self.training_set), self.rank, self.world_size,
                                      seed=self.random_seed + 1)
        return self._loop.make_stream(sampler, batch_size or self.batch_gpu)


class TrainingLoop:
    def __init__(self, run_dir='.', training_set_kwargs={}, data_loader_kwargs={}, G_kwargs={}, D_kwargs={},
                 G_opt_kwargs={}, D_opt_kwargs={}, augment_kwargs=None, loss_kwargs={}, metrics=[], metric_kwargs={},
                 random_seed=0, batch_size=4, batch_gpu=4, ema_kimg=10, ema_rampup=None, G_reg_interval=4,
                 D_reg_interval=16, augment_p=0, ada_target=None, ada_interval=4, ada_kimg=500, total_kimg=25000,
                 kimg_per_tick=4, image_snapshot_ticks=50, network_snapshot_ticks=50, snapshot_minutes=None,
                 resume_pkl=None, resume_state=None, hooks=(), device='cpu', progress=True, abort_fn=None,
                 cudnn_benchmark=True, allow_tf32=False):
        self.__dict__.update({k: v for k, v in locals().items() if k != 'self'})
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.device = torch.device(device)
        self.hooks = list(hooks)
        self.run = TrainingRun(self)
        self.sampler_requested = False
        self.cur_nimg = self.prev_nimg = 0
        self.cur_tick = 0
        self.batch_idx = 0
        self.stats_jsonl = None
        self.tb_writer = None
        self.ada_signs = np.zeros(2)  # [sum of sign(D(real)), count] since the last ADA update
        self.tick_start_nimg = None   # restored on resume, so ticks fall where they would have
        self.last_snapshot_nimg = None
        self.stopped_early = False

    # Setup ----------------------------------------------------------------------------------------
    def setup(self):
        # Networks (and hook networks) are initialised from the plain seed, the same for any process
        # count; each rank then draws latents, labels and augmentations from its own stream.
        distributed.seed_everything(self.random_seed)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.allow_tf32
        self.training_set = ImageFolderDataset(**{k: v for k, v in self.training_set_kwargs.items() if k != 'class_name'})
        self._log(f'Dataset: {len(self.training_set)} images, shape {list(self.training_set.image_shape)}, '
                  f'label shape {list(self.training_set.label_shape)}')
        common = dict(c_dim=self.training_set.label_dim, img_resolution=self.training_set.resolution,
                      img_channels=self.training_set.num_channels)
        self.G = Generator(**self.G_kwargs, **common).train().requires_grad_(False).to(self.device)
        self.D = Discriminator(**self.D_kwargs, **common).train().requires_grad_(False).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval()
        if self.resume_pkl is not None:
            self._log(f'Resuming from "{self.resume_pkl}"')
            resume = checkpoint.load_network_pkl(self.resume_pkl)
            for name in ('G', 'D', 'G_ema'):
                if resume.get(name) is not None:
                    checkpoint.load_state_into(getattr(self, name), resume[name], what=name)
        self.augment_pipe = None
        if self.augment_kwargs is not None and (self.augment_p > 0 or self.ada_target is not None):
            pipe_kwargs = {k: v for k, v in self.augment_kwargs.items() if k != 'class_name'}
            self.augment_pipe = AugmentPipe(**pipe_kwargs).train().requires_grad_(False).to(self.device)
            self.augment_pipe.p.copy_(torch.as_tensor(self.augment_p))
        distributed.broadcast_module(self.G, self.D, self.G_ema, self.augment_pipe)

        self.loss = StyleGAN2Loss(self.device, self.G, self.D, augment_pipe=self.augment_pipe,
                                  extra_loss_fn=self._hook_losses, **self.loss_kwargs)
        self.phases = []
        for name, module, opt_kwargs, reg_interval in [('G', self.G, self.G_opt_kwargs, self.G_reg_interval),
                                                       ('D', self.D, self.D_opt_kwargs, self.D_reg_interval)]:
            opt_kwargs = dict(opt_kwargs)
            opt_class = getattr(torch.optim, opt_kwargs.pop('class_name', 'Adam').split('.')[-1])
            if reg_interval is None:
                opt = opt_class(module.parameters(), **opt_kwargs)
                self.phases.append(dict(name=f'{name}both', module=module, opt=opt, interval=1))
            else:
                # Lazy regularisation (StyleGAN2 App. B): the optimiser hyperparameters are rescaled
                # so that running the regulariser every k steps approximates running it every step.
                ratio = reg_interval / (reg_interval + 1)
                opt_kwargs['lr'] = opt_kwargs['lr'] * ratio
                opt_kwargs['betas'] = tuple(float(b) ** ratio for b in opt_kwargs['betas'])
                opt = opt_class(module.parameters(), **opt_kwargs)
                self.phases.append(dict(name=f'{name}main', module=module, opt=opt, interval=1))
                self.phases.append(dict(name=f'{name}reg', module=module, opt=opt, interval=reg_interval))

        for hook in self.hooks:
            hook.setup(self.run)
        # Per-rank streams start here, so whatever setup drew (hook networks, a lazily built model
        # drawn only once per process) does not shift the draws of training itself.
        distributed.seed_everything(self.random_seed, rank=self.rank)
        self.sampler_position = 0
        if self.resume_state is not None:
            self._load_training_state(self.resume_state)
        self.sampler = InfiniteSampler(len(self.training_set), self.rank, self.world_size, seed=self.random_seed)
        # A request still pending at the snapshot is served now, its new stream starting at 0 as it would have.
        self._refresh_sampler(initial=not self.sampler_requested)
        if self.rank == 0:
            self._setup_outputs()

    def _refresh_sampler(self, initial=False):
        for hook in self.hooks:
            sampler = hook.make_sampler(self.run)
            if sampler is not None:
                self.sampler = sampler
                if not initial:
                    self.sampler_position = 0  # a new stream starts at its beginning
        self.sampler.start = self.sampler_position
        self.data_iter = self.make_stream(self.sampler, self.batch_size // self.world_size)
        self.sampler_requested = False

    def make_stream(self, sampler, batch_size):
        # A private generator: creating a loader iterator must not draw from the global RNG, or a
        # resumed run would drift from an uninterrupted one.
        loader = torch.utils.data.DataLoader(self.training_set, sampler=sampler, batch_size=batch_size,
                                             generator=torch.Generator().manual_seed(self.random_seed),
                                             **self.data_loader_kwargs)
        for img, c, idx in loader:
            yield (img.to(self.device).to(torch.float32) / 127.5 - 1), c.to(self.device), idx.to(self.device)

    def random_labels(self, n):
        labels = [self.training_set.get_label(np.random.randint(len(self.training_set))) for _ in range(n)]
        return torch.from_numpy(np.stack(labels)).to(self.device)

    def _setup_outputs(self):
        os.makedirs(self.run_dir, exist_ok=True)
        self.grid_size, grid_images, grid_labels = imaging.snapshot_grid(self.training_set, self.random_seed)
        imaging.save_image_grid(grid_images, os.path.join(self.run_dir, 'reals.png'), (0, 255), self.grid_size)
        self.grid_z = torch.randn([grid_labels.shape[0], self.G.z_dim], generator=torch.Generator().manual_seed(0))
        self.grid_c = torch.from_numpy(grid_labels)
        if self.resume_state is None or not os.path.exists(os.path.join(self.run_dir, 'fakes_init.png')):
            self._save_fakes('fakes_init.png')  # a continued run keeps the first start's
        self.stats_jsonl = open(os.path.join(self.run_dir, 'stats.jsonl'), 'at')
        try:
            import torch.utils.tensorboard as tensorboard
            self.tb_writer = tensorboard.SummaryWriter(self.run_dir)
        except ImportError:
            self._log('TensorBoard is not installed: skipping its event files (pip install tensorboard)')

    # Hook plumbing --------------------------------------------------------------------------------
    def _hook_losses(self, phase, batch):
        terms = [t for t in (hook.phase_loss(self.run, phase, batch) for hook in self.hooks) if t is not None]
        return sum(terms) if terms else None

    def _on_real_logits(self, logits, indices):
        self.ada_signs += [float(logits.sign().sum()), logits.numel()]
        for hook in self.hooks:
            hook.on_real_logits(self.run, logits, indices)

    # Training -------------------------------------------------------------------------------------
    def train(self):
        """Train to total_kimg and return 'done', or stop early and return 'stopped'.

        abort_fn() (e.g. preemption.StopSignals) is asked after every step on every rank; if it is
        true on any rank, all ranks stop after that same step and a snapshot with the full training
        state is written, from which `resume_state` continues exactly.
        """
        self.setup()
        self._log(f'Training for {self.total_kimg} kimg...')
        if self.tick_start_nimg is None:
            self.tick_start_nimg = self.cur_nimg
        self.tick_start_time = self.start_time = time.time()
        self.last_snapshot_time = self.start_time
        done = self.cur_nimg >= self.total_kimg * 1000  # a resumed run may already be complete
        while not done:
            self._step()
            asked_here = self.abort_fn is not None and bool(self.abort_fn())
            stop = distributed.any_across_ranks(asked_here)
            done = self.cur_nimg >= self.total_kimg * 1000
            # Tick 0 closes after the first step, as in the official loop: its log line, snapshot
            # and fakes show the starting point, and ticks 1, 2, ... then cover kimg_per_tick each.
            if done or self.cur_tick == 0 or self.cur_nimg >= self.tick_start_nimg + self.kimg_per_tick * 1000:
                self._tick(done)
            if stop and not done:
                self._stop_early(asked_here)
                break
        if not self.stopped_early:  # a stopped run is not over: it continues later
            for hook in self.hooks:
                hook.on_train_end(self.run)
        if self.stats_jsonl is not None:
            self.stats_jsonl.close()
        if self.tb_writer is not None:
            self.tb_writer.close()
        distributed.barrier()  # leave together: a rank gone early would look like a crash to the others
        self._log('Exiting...')
        return 'stopped' if self.stopped_early else 'done'

    def _stop_early(self, asked_here):
        why = getattr(self.abort_fn, 'received', None) or 'a stop request'
        why = why if asked_here else "another rank's stop request"
        self._log(f'Stopping after {self.cur_nimg} images (kimg {self.cur_nimg / 1000:.3f}) on {why}: '
                  f'saving the training state to continue from')
        if self.last_snapshot_nimg != self.cur_nimg:
            self.save_snapshot()
        self.stopped_early = True

    def _step(self):
        if self.sampler_requested:
            self._refresh_sampler()
        real_img, real_c, real_idx = next(self.data_iter)
        self.sampler_position += self.batch_size
        rounds = lambda t: t.split(self.batch_gpu)
        for phase in self.phases:
            if self.batch_idx % phase['interval'] != 0:
                continue
            gen_z = torch.randn([len(real_img), self.G.z_dim], device=self.device)
            gen_c = self.random_labels(len(real_img))
            phase['module'].requires_grad_(True)
            phase['opt'].zero_grad(set_to_none=True)
            for r_img, r_c, r_idx, g_z, g_c in zip(*map(rounds, (real_img, real_c, real_idx, gen_z, gen_c))):
                self.loss.accumulate_gradients(phase['name'], r_img, r_c, g_z, g_c, gain=phase['interval'],
                                               real_idx=r_idx, on_real_logits=self._on_real_logits)
            phase['module'].requires_grad_(False)
            params = [p for p in phase['module'].parameters() if p.grad is not None]
            distributed.average_gradients(params)
            for p in params:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            phase['opt'].step()

        self._update_ema()
        self.prev_nimg = self.cur_nimg
        self.cur_nimg += self.batch_size
        self.batch_idx += 1
        if self.augment_pipe is not None and self.ada_target is not None and self.batch_idx % self.ada_interval == 0:
            signs = distributed.sum_across_ranks(self.ada_signs)
            adjust_p(self.augment_pipe, signs[0] / max(signs[1], 1), self.ada_target, self.batch_size,
                     self.ada_interval, self.ada_kimg)
            self.ada_signs = np.zeros(2)
        for hook in self.hooks:
            hook.on_step_end(self.run)

    def _update_ema(self):
        ema_nimg = self.ema_kimg * 1000
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.cur_nimg * self.ema_rampup)
        beta = 0.5 ** (self.batch_size / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)

    # Ticks, snapshots, stats ----------------------------------------------------------------------
    def _tick(self, done):
        now = time.time()
        tick_kimg = (self.cur_nimg - self.tick_start_nimg) / 1000
        tick_sec = now - self.tick_start_time
        stats.report0('Progress/tick', self.cur_tick, self.rank)
        stats.report0('Progress/kimg', self.cur_nimg / 1000, self.rank)
        stats.report0('Timing/total_sec', now - self.start_time, self.rank)
        stats.report0('Timing/sec_per_tick', tick_sec, self.rank)
        stats.report0('Timing/sec_per_kimg', tick_sec / max(tick_kimg, 1e-8), self.rank)
        stats.report0('Resources/cpu_mem_gb', psutil.Process(os.getpid()).memory_info().rss / 2**30, self.rank)
        gpu_mem = ''
        if self.device.type == 'cuda':  # peak of this tick, as the official status line reports it
            peak_gb = stats.report0('Resources/peak_gpu_mem_gb', torch.cuda.max_memory_allocated(self.device) / 2**30,
                                    self.rank)
            torch.cuda.reset_peak_memory_stats(self.device)
            gpu_mem = f' gpumem {peak_gb:<6.2f}'
        augment_p = float(self.augment_pipe.p) if self.augment_pipe is not None else 0.0
        stats.report0('Progress/augment', augment_p, self.rank)
        self._log(f'tick {self.cur_tick:<5d} kimg {self.cur_nimg / 1000:<8.1f} '
                  f'time {stats.format_time(now - self.start_time):<12s} sec/tick {tick_sec:<7.1f} '
                  f'sec/kimg {tick_sec / max(tick_kimg, 1e-8):<7.2f}{gpu_mem} augment {augment_p:.3f}')

        for hook in self.hooks:
            hook.on_tick_end(self.run)
        # Clocks differ between ranks: every rank must make the same snapshot decision.
        minutes_up = self.snapshot_minutes is not None and distributed.any_across_ranks(
            now - self.last_snapshot_time >= self.snapshot_minutes * 60)
        fakes_due = self.image_snapshot_ticks and (done or self.cur_tick % self.image_snapshot_ticks == 0)
        snapshot_due = self.network_snapshot_ticks and (done or minutes_up or
                                                        self.cur_tick % self.network_snapshot_ticks == 0)
        # The tick is complete: a state saved now continues with the next tick, as this run will.
        self.cur_tick += 1
        self.tick_start_nimg = self.cur_nimg
        if self.rank == 0 and fakes_due:
            self._save_fakes(f'fakes{self.cur_nimg // 1000:06d}.png')
        if snapshot_due:
            self.save_snapshot()
            self.last_snapshot_time = now
            self._evaluate_metrics()

        tick_stats = stats.collect(reduce_fn=distributed.reduce_moments)
        if self.rank == 0:
            timestamp = time.time()
            if self.stats_jsonl is not None:
                self.stats_jsonl.write(json.dumps(dict(tick_stats, timestamp=timestamp)) + '\n')
                self.stats_jsonl.flush()
            if self.tb_writer is not None:
                for name, value in tick_stats.items():
                    self.tb_writer.add_scalar(name, value['mean'], global_step=int(self.cur_nimg / 1000),
                                              walltime=timestamp - self.start_time)
                self.tb_writer.flush()
        self.tick_start_time = time.time()

    def _save_fakes(self, filename):
        images = imaging.generate_grid(self.G_ema, self.grid_z, self.grid_c, self.device)
        imaging.save_image_grid(images, os.path.join(self.run_dir, filename), (-1, 1), self.grid_size)

    def save_snapshot(self):
        """Network snapshot (official keys plus hook networks) and the full training state (a collective).

        Each file is written atomically, the state last: a state file therefore always has its own
        snapshot beside it. A stop mid-kimg reuses the kimg's names, so the old state goes first.
        """
        kimg = self.cur_nimg // 1000
        state = self._training_state()
        self.last_snapshot_nimg = self.cur_nimg
        if self.rank != 0:
            return
        state_path = os.path.join(self.run_dir, f'training-state-{kimg:06d}.pt')
        if os.path.exists(state_path):
            os.remove(state_path)
        data = dict(G=self.G, D=self.D, G_ema=self.G_ema, augment_pipe=self.augment_pipe,
                    training_set_kwargs=dict(self.training_set_kwargs))
        for hook in self.hooks:
            for key, module in hook.snapshot_modules().items():
                if key in data:
                    raise ValueError(f'hook {hook.name!r} wants to save a network under {key!r}, which is taken')
                data[key] = module
        checkpoint.save_network_pkl(os.path.join(self.run_dir, f'network-snapshot-{kimg:06d}.pkl'), data)
        checkpoint.save_training_state(state_path, state)

    def _evaluate_metrics(self):
        """The --metrics on the newest snapshot's G_ema, appended to metric-<name>.jsonl (every rank computes)."""
        if not self.metrics:
            return
        from .metrics import metric_main
        snapshot_pkl = os.path.join(self.run_dir, f'network-snapshot-{self.cur_nimg // 1000:06d}.pkl')
        for metric in self.metrics:
            result = metric_main.calc_metric(metric, G=self.G_ema, dataset_kwargs=self.training_set_kwargs,
                                             num_gpus=self.world_size, rank=self.rank, device=self.device,
                                             progress=False, **self.metric_kwargs)
            if self.rank == 0:
                metric_main.report_metric(result, run_dir=self.run_dir, snapshot_pkl=snapshot_pkl)

    def _training_state(self):
        """Everything an exact continuation needs besides the networks (a collective call).

        Networks, optimisers, counters and the data stream are identical on every rank and saved
        once; RNG streams, the path-length mean, the ADA accumulators differ per rank and are saved
        per rank, as are hook states that differ from rank 0's (compared by content hash).
        """
        hooks = {hook.name: hook.state_dict() for hook in self.hooks}
        same_as_rank0 = True
        if self.world_size > 1:
            hooks_digest = distributed.digest(hooks)
            same_as_rank0 = distributed.broadcast_object(hooks_digest) == hooks_digest
        mine = dict(rng=distributed.local_rng_state(), pl_mean=float(self.loss.pl_mean),
                    ada_signs=[float(x) for x in self.ada_signs], hooks=None if same_as_rank0 else hooks)
        rank_states = distributed.gather_to_rank0(mine)
        if self.rank != 0:
            return None
        return dict(
            cur_nimg=self.cur_nimg, cur_tick=self.cur_tick, tick_start_nimg=self.tick_start_nimg,
            batch_idx=self.batch_idx, sampler_position=self.sampler_position,
            sampler_requested=self.sampler_requested,
            augment_p=float(self.augment_pipe.p) if self.augment_pipe is not None else None,
            G_opt=self.phases[0]['opt'].state_dict(), D_opt=self.phases[-1]['opt'].state_dict(),
            hooks=hooks, world_size=self.world_size, rank_states=rank_states,
        )

    def _load_training_state(self, state):
        self.cur_nimg = self.prev_nimg = state['cur_nimg']
        self.cur_tick, self.batch_idx = state['cur_tick'], state['batch_idx']
        self.tick_start_nimg = state.get('tick_start_nimg', self.cur_nimg)
        self.sampler_position = state['sampler_position']
        self.sampler_requested = bool(state.get('sampler_requested', False))
        if self.augment_pipe is not None and state['augment_p'] is not None:
            self.augment_pipe.p.copy_(torch.as_tensor(state['augment_p']))
        self.phases[0]['opt'].load_state_dict(state['G_opt'])
        self.phases[-1]['opt'].load_state_dict(state['D_opt'])
        ranks = state.get('rank_states') or [dict(pl_mean=state['pl_mean'], ada_signs=state['ada_signs'],
                                                  rng=(state.get('rng') or [None])[0], hooks=None)]
        if len(ranks) == self.world_size:
            mine = ranks[self.rank]
            ada_signs = mine['ada_signs']
        else:
            # Another process count cannot replay the same per-rank streams: keep this rank's fresh
            # seeds, take rank 0's path-length mean, and keep the ADA sum (all on rank 0).
            self._log(f'Note: the state was saved by {len(ranks)} processes and this run has '
                      f'{self.world_size}; training continues, but not exactly as it would have')
            mine = dict(ranks[0], rng=None, hooks=None)
            ada_signs = np.sum([r['ada_signs'] for r in ranks], axis=0) if self.rank == 0 else [0.0, 0.0]
        self.loss.pl_mean.fill_(float(mine['pl_mean']))
        self.ada_signs = np.asarray(ada_signs, dtype=np.float64)
        hooks = mine['hooks'] if mine.get('hooks') is not None else state['hooks']
        for hook in self.hooks:
            hook.load_state_dict(hooks.get(hook.name, {}))
        if mine.get('rng') is not None:
            distributed.set_local_rng_state(mine['rng'])

    def _log(self, message):
        if self.rank == 0 and self.progress:
            print(message, flush=True)
