"""`train.py`: the official StyleGAN2-ADA options, plus --fair-method and each method's options.

Options are turned into plain kwargs once (`setup_training_options`), written to
training_options.json, and handed to the training loop: every run can be reproduced from that file.
"""
import glob
import json
import os
import re
import sys

import click
import torch

import training_hooks
from .. import distributed, preemption
from ..preemption import PREEMPTED_EXIT_CODE
from ..fileio import atomic_write_text

# cfg presets (facts file): ref_gpus, kimg, mb, mbstd, fmaps, lrate, gamma, ema, ramp, map.
# 'tiny' is ours: a 2-core CPU trains it at 16x16 in seconds per kimg. Its R1 weight is fixed at 1:
# the auto formula gives 0.0032 at 16x16, batch 16, and with it stacked digits collapsed from ~500
# modes to 48 between 16 and 36 kimg, while gamma 1 held ~650 (benchmarks/results/imle.md, session 4).
CFG_SPECS = {
    'auto':      dict(ref_gpus=-1, kimg=25000, mb=-1, mbstd=-1, fmaps=-1, lrate=-1, gamma=-1, ema=-1, ramp=0.05, map=2),
    'stylegan2': dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=10, ema=10, ramp=None, map=8),
    'paper256':  dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None, map=8),
    'paper512':  dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=1, lrate=0.0025, gamma=0.5, ema=20, ramp=None, map=8),
    'paper1024': dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=2, ema=10, ramp=None, map=8),
    'cifar':     dict(ref_gpus=2, kimg=100000, mb=64, mbstd=32, fmaps=1, lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2),
    'tiny':      dict(ref_gpus=1, kimg=50, mb=16, mbstd=4, fmaps=1/32, lrate=0.0025, gamma=1, ema=1, ramp=0.05, map=2,
                      z_dim=64, channel_max=64, num_fp16_res=0, kimg_per_tick=1),
}

AUGPIPES = ['blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn', 'bgcfnc']

RESUME_PRESETS = {
    'ffhq256': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl',
    'ffhq512': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res512-mirror-stylegan2-noaug.pkl',
    'ffhq1024': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/ffhq-res1024-mirror-stylegan2-noaug.pkl',
    'celebahq256': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl',
    'lsundog256': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/lsundog-res256-paper256-kimg100000-noaug.pkl',
}


class UserError(click.ClickException):
    """A problem with the command line or its inputs, shown without a traceback."""


def setup_training_options(data, gpus=1, snap=50, metrics='none', seed=0, cond=False, subset=None, mirror=False,
                           cfg='auto', gamma=None, kimg=None, batch=None, aug='ada', p=None, target=None,
                           augpipe='bgc', resume=None, freezed=0, fp32=False, nhwc=False, allow_tf32=False,
                           nobench=False, workers=3, device='auto', fair_method='none', kimg_per_tick=None,
                           snap_minutes=None, lr_scale=1.0, resume_arch=False, gan_loss='ns', detector=(),
                           hook_kwargs=None):
    """Validate options and return (run description, kwargs for TrainingLoop)."""
    from ..dataset import ImageFolderDataset
    data = os.path.expanduser(data)  # the shell leaves ~ in --data=~/x.zip alone
    if resume == 'noresume':  # the official spelling of "no pickle"
        resume = None
    if resume is not None and '://' not in resume:
        resume = os.path.expanduser(resume)
    args = dict(G_kwargs={}, D_kwargs={})
    if gpus < 1 or gpus & (gpus - 1):
        raise UserError(f'--gpus={gpus}: must be a power of two (1, 2, 4, 8, ...)')
    args['num_gpus'] = gpus
    if snap < 1:
        raise UserError('--snap must be at least 1')
    args['image_snapshot_ticks'] = args['network_snapshot_ticks'] = snap
    args['snapshot_minutes'] = snap_minutes
    args['metrics'] = [] if metrics in (None, '', 'none') else [m.strip() for m in metrics.split(',')]
    if args['metrics']:
        from ..metrics import metric_main
        for metric in args['metrics']:
            if not metric_main.is_valid_metric(metric):
                raise UserError(f'--metrics: unknown metric {metric!r}; choose from '
                                f'{", ".join(metric_main.list_valid_metrics())}, or none')
        from ..metrics import detectors
        try:  # a missing detector file fails now, not at the first snapshot hours later
            detectors.check_detector_args(detector)
            for name in detectors.required_detectors(args['metrics']):
                detectors.find_detector(name, detector)
        except (ValueError, detectors.MissingDetectorError) as e:
            raise UserError(f'--metrics={metrics}: {e}') from e
    args['metric_kwargs'] = dict(detector_search=tuple(detector)) if detector else {}
    classifier = (hook_kwargs or {}).get('classifier')
    if classifier is not None:
        args['metric_kwargs']['classifier'] = classifier
    args['random_seed'] = seed

    # Dataset: open it once here, so a bad path or format fails before the run dir exists.
    if not os.path.exists(data):
        raise UserError(f'--data={data}: no such file or folder. Build a dataset with dataset_tool.py first.')
    # Labels are read only for --cond=1: unconditional training takes datasets without them.
    training_set_kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=data, use_labels=bool(cond),
                               max_size=None, xflip=False)
    try:
        training_set = ImageFolderDataset(path=data, use_labels=bool(cond))
    except Exception as e:
        raise UserError(f'--data={data}: {e}') from e
    training_set_kwargs['resolution'] = training_set.resolution
    training_set_kwargs['max_size'] = len(training_set)
    desc = training_set.name
    if cond:
        desc += '-cond'
    if subset is not None:
        if not 1 <= subset <= training_set_kwargs['max_size']:
            raise UserError(f'--subset must be between 1 and {training_set_kwargs["max_size"]}')
        desc += f'-subset{subset}'
        if subset < training_set_kwargs['max_size']:
            training_set_kwargs['max_size'] = subset
            training_set_kwargs['random_seed'] = seed
    if mirror:
        desc += '-mirror'
        training_set_kwargs['xflip'] = True
    args['training_set_kwargs'] = training_set_kwargs
    res = training_set.resolution

    # Base config.
    if cfg not in CFG_SPECS:
        raise UserError(f'--cfg={cfg}: choose from {", ".join(CFG_SPECS)}')
    desc += f'-{cfg}'
    spec = dict(CFG_SPECS[cfg])
    if cfg == 'auto':
        desc += f'{gpus:d}'
        spec['ref_gpus'] = gpus
        spec['mb'] = max(min(gpus * min(4096 // res, 32), 64), gpus)
        spec['mbstd'] = min(spec['mb'] // gpus, 4)
        spec['fmaps'] = 1 if res >= 512 else 0.5
        spec['lrate'] = 0.002 if res >= 1024 else 0.0025
        spec['ema'] = spec['mb'] * 10 / 32
    if spec['gamma'] < 0:
        spec['gamma'] = 0.0002 * (res ** 2) / spec['mb']

    z_dim = spec.get('z_dim', 512)
    args['G_kwargs'] = dict(z_dim=z_dim, w_dim=z_dim, mapping_kwargs=dict(num_layers=spec['map']),
                            synthesis_kwargs=dict(channel_base=int(spec['fmaps'] * 32768),
                                                  channel_max=spec.get('channel_max', 512),
                                                  num_fp16_res=spec.get('num_fp16_res', 4), conv_clamp=256))
    args['D_kwargs'] = dict(channel_base=int(spec['fmaps'] * 32768), channel_max=spec.get('channel_max', 512),
                            num_fp16_res=spec.get('num_fp16_res', 4), conv_clamp=256,
                            block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=spec['mbstd']))
    lr = spec['lrate'] * lr_scale
    args['G_opt_kwargs'] = dict(class_name='torch.optim.Adam', lr=lr, betas=[0.0, 0.99], eps=1e-8)
    args['D_opt_kwargs'] = dict(class_name='torch.optim.Adam', lr=lr, betas=[0.0, 0.99], eps=1e-8)
    args['loss_kwargs'] = dict(r1_gamma=spec['gamma'])
    args['total_kimg'] = spec['kimg']
    args['batch_size'] = spec['mb']
    args['batch_gpu'] = spec['mb'] // spec['ref_gpus']
    args['ema_kimg'] = spec['ema']
    args['ema_rampup'] = spec['ramp']
    args['kimg_per_tick'] = spec.get('kimg_per_tick', 4)
    if cfg == 'cifar':
        args['loss_kwargs']['pl_weight'] = 0
        args['loss_kwargs']['style_mixing_prob'] = 0
        args['D_kwargs']['architecture'] = 'orig'

    if gamma is not None:
        if gamma < 0:
            raise UserError('--gamma must be non-negative')
        desc += f'-gamma{gamma:g}'
        args['loss_kwargs']['r1_gamma'] = gamma
    if kimg is not None:
        if kimg < 1:
            raise UserError('--kimg must be at least 1')
        desc += f'-kimg{kimg:d}'
        args['total_kimg'] = kimg
    if batch is not None:
        if batch < 1 or batch % gpus:
            raise UserError('--batch must be at least 1 and divisible by --gpus')
        desc += f'-batch{batch}'
        args['batch_size'] = batch
        args['batch_gpu'] = batch // gpus
    args['batch_gpu'] = max(min(args['batch_gpu'], args['batch_size'] // gpus), 1)
    group = args['D_kwargs']['epilogue_kwargs']['mbstd_group_size']
    if group and args['batch_gpu'] % min(group, args['batch_gpu']):
        # D's minibatch-std layer splits each GPU's batch into groups of this size (it would fail at step 1).
        fit = -(-args['batch_gpu'] // group) * group * gpus
        raise UserError(f'--batch={args["batch_size"]} gives {args["batch_gpu"]} images per GPU, which does not '
                        f'split into minibatch-std groups of {group} (--cfg={cfg}); use --batch={fit}')
    if kimg_per_tick is not None:
        if kimg_per_tick <= 0:
            raise UserError('--kimg-per-tick must be positive')
        args['kimg_per_tick'] = kimg_per_tick

    # Augmentation.
    if aug not in ('ada', 'noaug', 'fixed'):
        raise UserError(f'--aug={aug}: choose ada, noaug or fixed')
    args['augment_p'] = 0
    args['ada_target'] = None
    if aug == 'ada':
        args['ada_target'] = 0.6
    elif aug == 'noaug':
        desc += '-noaug'
    else:
        if p is None:
            raise UserError('--aug=fixed requires specifying --p')
        desc += f'-p{p:g}'
    if p is not None:
        if aug != 'fixed':
            raise UserError('--p can only be specified with --aug=fixed')
        if not 0 <= p <= 1:
            raise UserError('--p must be between 0 and 1')
        args['augment_p'] = p
    if target is not None:
        if aug != 'ada':
            raise UserError('--target can only be specified with --aug=ada')
        if not 0 <= target <= 1:
            raise UserError('--target must be between 0 and 1')
        desc += f'-target{target:g}'
        args['ada_target'] = target
    if augpipe not in AUGPIPES:
        raise UserError(f'--augpipe={augpipe}: choose from {", ".join(AUGPIPES)}')
    if augpipe != 'bgc':
        desc += f'-{augpipe}'
    from ..augment import augpipe_specs
    args['augment_kwargs'] = None if aug == 'noaug' else dict(class_name='training.augment.AugmentPipe',
                                                              **augpipe_specs[augpipe])

    # Resume and transfer learning.
    args['resume_pkl'] = None
    if resume is not None and resume != 'auto':
        if resume in RESUME_PRESETS:
            raise UserError(f'--resume={resume} is a download and this tool never downloads: fetch '
                            f'{RESUME_PRESETS[resume]} yourself and pass --resume=PATH')
        if not os.path.isfile(resume):
            raise UserError(f'--resume={resume}: no such file (give a network pickle, or --resume=auto)')
        desc += '-resume' + re.sub(r'\W+', '', os.path.splitext(os.path.basename(resume))[0])[:20]
        args['resume_pkl'] = os.path.abspath(resume)  # absolute: --auto-resume tells finetunes apart by it
        if resume_arch:  # finetune a pickle whose networks differ from the --cfg preset (e.g. an official one)
            args['G_kwargs'], args['D_kwargs'] = architecture_from_pickle(resume, training_set,
                                                                          training_set_kwargs['use_labels'])
        args['ada_kimg'] = 100  # make ADA react faster at the beginning
        args['ema_rampup'] = None  # disable EMA rampup
    if freezed:
        if freezed < 0:
            raise UserError('--freezed must be non-negative')
        desc += f'-freezed{freezed:d}'
        args['D_kwargs']['block_kwargs']['freeze_layers'] = freezed
    if resume_arch and args['resume_pkl'] is None:
        raise UserError('--resume-arch=1 takes the networks of the --resume pickle: give --resume=PKL')
    if lr_scale != 1.0:
        desc += f'-lr{lr_scale:g}'
    if gan_loss != 'ns':
        desc += f'-{gan_loss}'
        args['loss_kwargs']['gan_loss'] = gan_loss

    # Performance and device.
    if fp32:
        args['G_kwargs']['synthesis_kwargs']['num_fp16_res'] = args['D_kwargs']['num_fp16_res'] = 0
        args['G_kwargs']['synthesis_kwargs']['conv_clamp'] = args['D_kwargs']['conv_clamp'] = None
    if nhwc:  # channels-last memory format for the fp16 layers, as the official option
        args['G_kwargs']['synthesis_kwargs']['fp16_channels_last'] = True
        args['D_kwargs']['block_kwargs']['fp16_channels_last'] = True
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device=cuda but no CUDA GPU is visible; use --device=cpu')
    args['device'] = device
    args['cudnn_benchmark'] = not nobench
    args['allow_tf32'] = allow_tf32
    if workers < 0:
        raise UserError('--workers must be non-negative')
    args['data_loader_kwargs'] = dict(pin_memory=device == 'cuda', num_workers=workers,
                                      prefetch_factor=2 if workers > 0 else None)

    # Fairness methods (training hooks).
    try:
        methods = training_hooks.parse_methods(fair_method)
    except ValueError as e:
        raise UserError(str(e)) from e
    if methods:
        desc += '-' + '+'.join(methods)
    args['fair_method'] = ','.join(methods) or 'none'
    args['hook_kwargs'] = {name: hook_kwargs_for(name, hook_kwargs or {}) for name in methods}
    return desc, args


def architecture_from_pickle(path, training_set, use_labels):
    """(G_kwargs, D_kwargs) of the networks stored in a pickle, less what the dataset decides (c_dim,
    img_resolution, img_channels), which must agree with it. For --resume-arch=1."""
    import copy
    from .. import checkpoint
    try:
        data = checkpoint.load_network_pkl(path)
    except Exception as e:
        raise UserError(f'--resume={path}: {e}') from e
    from_dataset = dict(c_dim=training_set.label_dim if use_labels else 0, img_resolution=training_set.resolution,
                        img_channels=training_set.num_channels)
    out = []
    for name in ('G', 'D'):
        net = data.get(name) if data.get(name) is not None else data.get(f'{name}_ema')
        if net is None or not isinstance(getattr(net, 'init_kwargs', None), dict):
            raise UserError(f'--resume-arch=1: {path} holds no {name} with recorded constructor arguments')
        kwargs = copy.deepcopy(net.init_kwargs)
        for key, want in from_dataset.items():
            have = kwargs.pop(key, want)
            if have != want:
                fix = ('pass --cond=1 with a dataset of as many classes' if key == 'c_dim' and have else
                       'train with --cond=0' if key == 'c_dim' else 'use a dataset of the same size and channels')
                raise UserError(f'--resume={path}: its {name} has {key}={have} but the training data gives {want}; {fix}')
        out.append(kwargs)
    G_kwargs, D_kwargs = out
    G_kwargs.setdefault('synthesis_kwargs', {})
    D_kwargs['block_kwargs'] = dict(D_kwargs.get('block_kwargs') or {})
    D_kwargs['block_kwargs'].pop('freeze_layers', None)  # --freezed decides
    print(f'--resume-arch=1: networks built as in {path}: G {json.dumps(G_kwargs)}, D {json.dumps(D_kwargs)}')
    return G_kwargs, D_kwargs


def hook_kwargs_for(name, cli_kwargs):
    """The CLI values a hook's constructor takes: '--dia-k' -> k for 'dia', or a shared name such as 'classifier'."""
    import inspect
    cls = training_hooks.get_hook_class(name)
    out = {}
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name == 'self' or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        for key in (f'{name}_{param.name}', param.name):
            if cli_kwargs.get(key) is not None:
                out[param.name] = cli_kwargs[key]
                break
    return out


def next_run_dir(outdir, desc):
    names = (os.path.basename(d) for d in glob.glob(os.path.join(glob.escape(outdir), '*')))
    ids = [int(m.group()) for m in (re.match(r'^\d+', name) for name in names) if m is not None]
    return os.path.join(outdir, f'{max(ids, default=-1) + 1:05d}-{desc}')


def started_from(run_dir):
    """The resume_pkl a run dir was started from (None: from scratch), as its training_options.json says."""
    try:
        with open(os.path.join(run_dir, 'training_options.json')) as f:
            pkl = json.load(f).get('resume_pkl')
    except (OSError, ValueError, AttributeError):
        return None
    return None if pkl is None else os.path.realpath(pkl)


def find_resume_state(outdir, desc, resume, start_pkl=None):
    """For --resume=auto (or a run dir): the newest run dir of this desc that started from `start_pkl`
    (the --resume pickle, or None) and holds a complete state; None if there is none."""
    if resume != 'auto':
        candidates = [resume]
    else:  # escaped: a dataset or outdir name may hold glob characters such as [ ]
        pattern = os.path.join(glob.escape(outdir), '[0-9]' * 5 + '-' + glob.escape(desc))
        # The name keeps only 20 characters of the pickle's name: finetunes of other pickles can share it.
        start = None if start_pkl is None else os.path.realpath(start_pkl)
        candidates = [d for d in sorted(glob.glob(pattern), reverse=True) if started_from(d) == start]
    for run_dir in candidates:
        states = sorted(glob.glob(os.path.join(glob.escape(run_dir), 'training-state-*.pt')), reverse=True)
        for state in states:
            kimg = re.fullmatch(r'training-state-(\d+)\.pt', os.path.basename(state))
            pkl = os.path.join(run_dir, f'network-snapshot-{kimg.group(1)}.pkl') if kimg else None
            if pkl is not None and os.path.isfile(pkl):
                return run_dir, pkl, state
    return None


def plan_run_dir(outdir, desc, resume, auto_resume=False, start_pkl=None):
    """(run_dir, resume_files or None, fresh): continue the newest complete state of this run for
    --resume=auto or --auto-resume (or of a run dir given as --resume), else a new numbered run dir.
    With --auto-resume a --resume pickle is only the start of a run that has no state yet."""
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise UserError(f'--outdir={outdir} is a file, not a folder; choose another --outdir')
    run_dir_given = resume is not None and resume != 'auto' and os.path.isdir(resume)
    if run_dir_given or auto_resume or resume == 'auto':
        found = find_resume_state(outdir, desc, resume if run_dir_given else 'auto', start_pkl)
        if found is not None:
            run_dir, pkl, state = found
            return run_dir, (pkl, state), False
        if run_dir_given:
            raise UserError(f'--resume={resume}: no complete training state in that folder')
    return next_run_dir(outdir, desc), None, True


def launch(run_dir, args, resume_files=None, dist_timeout=distributed.DEFAULT_TIMEOUT_SEC, env=None):
    """Train as one rank of torchrun/srun (`env` from distributed.launch_env()), alone, or on
    --gpus spawned processes. Returns 'done', or 'stopped' after a stop signal."""
    if env is not None:
        rank, world, local_rank, addr, port = env
        return subprocess_fn(local_rank, args, run_dir, resume_files, rank, world, addr, port, dist_timeout)
    if args['num_gpus'] == 1:
        return subprocess_fn(0, args, run_dir, resume_files, dist_timeout=dist_timeout)
    nprocs = args['num_gpus']
    codes = distributed.spawn(_spawned_rank, nprocs, (args, run_dir, resume_files, '127.0.0.1', _free_port(),
                                                      dist_timeout), grace_sec=dist_timeout + 30)
    if all(code == 0 for code in codes):
        return 'done'
    if set(codes) <= {0, PREEMPTED_EXIT_CODE}:
        return 'stopped'
    raise click.ClickException('training failed: ' + '; '.join(
        f'rank {r} {distributed.describe_exit_code(code)}' for r, code in enumerate(codes) if code != 0))


def _spawned_rank(local_rank, args, run_dir, resume_files, addr, port, dist_timeout):
    threads = None
    if args['device'] == 'cpu' and 'OMP_NUM_THREADS' not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // args['num_gpus'])  # N CPU workers share the cores
    status = subprocess_fn(local_rank, args, run_dir, resume_files, local_rank, args['num_gpus'], addr, port,
                           dist_timeout, threads=threads)
    return PREEMPTED_EXIT_CODE if status == 'stopped' else 0


def subprocess_fn(local_rank, args, run_dir, resume_files, rank=0, world_size=1, addr=None, port=None,
                  dist_timeout=distributed.DEFAULT_TIMEOUT_SEC, threads=None):
    """One rank: join the process group, train until done or a stop signal; 'done' or 'stopped'."""
    from ..training_loop import TrainingLoop
    from .. import checkpoint
    with preemption.StopSignals() as stop_requested:  # first thing: a signal during setup is kept, not fatal
        if threads:
            torch.set_num_threads(threads)
        device = args['device']
        if device == 'cuda':
            index = local_rank % torch.cuda.device_count()  # srun --gpus-per-task shows each task one GPU
            torch.cuda.set_device(index)
            device = f'cuda:{index}'
        watchdog = None
        if world_size > 1:
            if not distributed.is_distributed():
                distributed.init_process_group(rank, world_size, addr, port, args['device'], dist_timeout)
            watchdog = distributed.PeerWatchdog(rank, world_size, dist_timeout).start()
        logger = _Logger(os.path.join(run_dir, 'log.txt')) if rank == 0 else None
        try:
            hooks = training_hooks.create_hooks(args['fair_method'], args['hook_kwargs'])
            kwargs = {k: v for k, v in args.items() if k not in ('num_gpus', 'fair_method', 'hook_kwargs', 'device')}
            if resume_files is not None:
                kwargs['resume_pkl'], state_path = resume_files
                kwargs['resume_state'] = checkpoint.load_training_state(state_path)
            loop = TrainingLoop(run_dir=run_dir, hooks=hooks, device=device, abort_fn=stop_requested, **kwargs)
            status = loop.train()
        except Exception as e:  # pylint: disable=broad-except
            if watchdog is None:
                raise
            if not _is_communication_error(e):
                watchdog.report_failure(f'{type(e).__name__}: {e}')
                raise
            # A peer died or hung: say which, instead of a traceback from deep inside a collective.
            first_line = (str(e).strip().splitlines() or [''])[0][:300]
            print(f'\nrank {rank}: a collective failed ({type(e).__name__}: {first_line})\n'
                  f'rank {rank}: {watchdog.explain()}; exiting', file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        finally:
            if logger is not None:
                logger.close()
    if watchdog is not None:
        watchdog.stop()
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return status


def _is_communication_error(e):
    if isinstance(e, getattr(torch.distributed, 'DistError', ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(word in text for word in (
        'gloo', 'Gloo', 'NCCL', 'Connection reset', 'Connection closed', 'Broken pipe', 'Timed out', 'timed out'))


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class _Logger:
    """Tee stdout/stderr into log.txt (appending, so a resumed run keeps its history)."""

    def __init__(self, path):
        self.file = open(path, 'a')
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self, self

    def close(self):
        if sys.stdout is self:
            sys.stdout, sys.stderr = self.stdout, self.stderr
        self.file.close()

    def write(self, text):
        if not self.file.closed:
            self.file.write(text)
        self.stdout.write(text)

    def flush(self):
        if not self.file.closed:
            self.file.flush()
        self.stdout.flush()


def _apply(options):
    def decorator(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorator


def _hook_cli_options():
    # Hooks that share an option (e.g. --classifier) list the same decorator object: apply it once.
    unique = []
    for option in training_hooks.cli_options():
        if all(option is not seen for seen in unique):
            unique.append(option)
    return unique


@click.command(context_settings=dict(show_default=True))
@click.option('--outdir', help='Where to save the results', required=True, metavar='DIR')
@click.option('--gpus', help='Number of processes (GPUs, or CPU workers with --device=cpu)  [default: 1, or as many '
              'as torchrun/srun started]', type=int, metavar='INT')
@click.option('--dist-timeout', help='Seconds before a dead or hung rank makes the others exit with an error',
              type=float, default=distributed.DEFAULT_TIMEOUT_SEC, metavar='SEC')
@click.option('--snap', help='Snapshot interval in ticks', type=int, default=50, metavar='INT')
@click.option('--snap-minutes', help='Also snapshot every N minutes of wall clock (for jobs with time limits)', type=float, metavar='MIN')
@click.option('--kimg-per-tick', help='Length of a tick in kimg [default: 4, tiny: 1]', type=float, metavar='KIMG')
@click.option('--metrics', help='Comma-separated list of metrics, or "none"', default='none')
@click.option('--detector', help='Detector file or folder for --metrics (inception-2015-12-05.pt, vgg16.pt), or '
              'NAME=PATH; repeatable  [default: ~/.cache/dnnlib/downloads]', multiple=True, metavar='PATH')
@click.option('--seed', help='Random seed', type=int, default=0, metavar='INT')
@click.option('-n', '--dry-run', help='Print training options and exit', is_flag=True)
@click.option('--data', help='Training data (directory or zip)', metavar='PATH', required=True)
@click.option('--cond', help='Train conditional model based on dataset labels', type=bool, default=False, metavar='BOOL')
@click.option('--subset', help='Train with only N images', type=int, metavar='INT')
@click.option('--mirror', help='Enable dataset x-flips', type=bool, default=False, metavar='BOOL')
@click.option('--cfg', help='Base config', type=click.Choice(list(CFG_SPECS)), default='auto')
@click.option('--gamma', help='Override R1 gamma', type=float)
@click.option('--kimg', help='Override training duration', type=int, metavar='INT')
@click.option('--batch', help='Override batch size', type=int, metavar='INT')
@click.option('--aug', help='Augmentation mode', type=click.Choice(['noaug', 'ada', 'fixed']), default='ada')
@click.option('--p', help='Augmentation probability for --aug=fixed', type=float)
@click.option('--target', help='ADA target value for --aug=ada', type=float)
@click.option('--augpipe', help='Augmentation pipeline', type=click.Choice(AUGPIPES), default='bgc')
@click.option('--resume', help='Resume from a network pickle, or "auto" to continue the newest state of this run', metavar='PKL')
@click.option('--auto-resume', help='Continue the newest complete state of this run if there is one, else start '
              '(from the --resume pickle if given): for requeued jobs, finetunes included', is_flag=True)
@click.option('--freezed', help='Freeze-D: number of frozen discriminator layers', type=int, default=0, metavar='INT')
@click.option('--resume-arch', help='Build G and D as the --resume pickle\'s networks instead of from --cfg '
              '(to finetune a pickle trained with other settings, e.g. an official one)', type=bool, default=False,
              metavar='BOOL')
@click.option('--lr-scale', help='Multiply the learning rates (0.1 for finetuning, as in model rebalancing)', type=float, default=1.0)
@click.option('--gan-loss', help='Adversarial loss: the official non-saturating one, or hinge (Dia-HingeGAN)',
              type=click.Choice(['ns', 'hinge']), default='ns', show_default=True)
@click.option('--fp32', help='Disable mixed-precision training', type=bool, default=False, metavar='BOOL')
@click.option('--nhwc', help='Use NHWC memory format with FP16', type=bool, default=False, metavar='BOOL')
@click.option('--nobench', help='Disable cuDNN benchmarking', type=bool, default=False, metavar='BOOL')
@click.option('--allow-tf32', help='Allow PyTorch to use TF32 internally', type=bool, default=False, metavar='BOOL')
@click.option('--workers', help='Override number of DataLoader workers', type=int, default=3, metavar='INT')
@click.option('--device', help='Where to train', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto')
@click.option('--fair-method', help='Comma-separated training hooks: ' + ', '.join(['none'] + training_hooks.list_hooks()),
              default='none')
@_apply(_hook_cli_options())
def train(outdir, dry_run, dist_timeout, auto_resume, **kwargs):
    """Train a StyleGAN2-ADA model, optionally with fairness methods (--fair-method).

    Under torchrun or srun each process is one rank (no --gpus needed). SIGTERM or SIGUSR1 stops
    all ranks after the same step, writes a snapshot with the full training state and exits with
    status 75; the same command with --resume=auto continues exactly from there (with --auto-resume
    also when --resume names the pickle a finetune starts from).

    \b
    Examples:
      python dataset_tool.py --source=toy:colored-digits --dest=colored.zip --resolution=16
      python train.py --outdir=runs --data=colored.zip --cfg=tiny --kimg=2 --fair-method=dia
      torchrun --nproc-per-node=4 train.py --outdir=runs --data=ffhq.zip --cfg=paper256 --resume=auto
    """
    env = distributed.launch_env()
    if env is not None:
        launcher = 'torchrun' if 'RANK' in os.environ else 'srun'
        if kwargs['gpus'] not in (None, env[1]):
            raise UserError(f'--gpus={kwargs["gpus"]} but {launcher} started {env[1]} processes; drop --gpus '
                            f'or make them agree')
        if env[1] & (env[1] - 1):
            raise UserError(f'{launcher} started {env[1]} processes: the number of processes must be a power '
                            f'of two (1, 2, 4, 8, ...); change the task or GPU counts')
        kwargs['gpus'] = env[1]
    kwargs['gpus'] = kwargs['gpus'] or 1
    if dist_timeout <= 0:
        raise UserError(f'--dist-timeout={dist_timeout:g}: must be a positive number of seconds')
    is_rank0 = env is None or env[0] == 0
    own = set(setup_training_options.__code__.co_varnames[:setup_training_options.__code__.co_argcount])
    own_kwargs = {k: v for k, v in kwargs.items() if k in own}
    outdir = os.path.expanduser(outdir)
    resume = own_kwargs.get('resume')
    resume = os.path.expanduser(resume) if resume is not None and '://' not in resume else resume
    if resume is not None and os.path.isdir(resume):
        own_kwargs['resume'] = 'auto'  # continue that run dir: no pickle to load as a start
    desc, args = setup_training_options(**own_kwargs, hook_kwargs=kwargs)
    if env is None and args['device'] == 'cuda' and args['num_gpus'] > torch.cuda.device_count():
        raise UserError(f'--gpus={args["num_gpus"]} but this machine shows {torch.cuda.device_count()} GPU(s); '
                        f'lower --gpus (processes would share a GPU), or check CUDA_VISIBLE_DEVICES')
    if dry_run and not is_rank0:
        return
    try:  # build the hooks once here, so a bad method option or dataset fails before any run dir exists
        hooks = training_hooks.create_hooks(args['fair_method'], args['hook_kwargs'])
        if hooks:
            from ..dataset import open_dataset
            training_set = open_dataset(**args['training_set_kwargs'])
            for hook in hooks:
                hook.check_dataset(training_set)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        raise UserError(f'--fair-method={args["fair_method"]}: {e}') from e
    if env is not None and env[1] == 1:
        env = None  # torchrun with a single process: nothing to coordinate
    if env is not None and not dry_run:
        rank, world, local_rank, addr, port = env
        if args['device'] == 'cuda':  # this rank's GPU before NCCL sees any
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        distributed.init_process_group(rank, world, addr, port, args['device'], dist_timeout)

    # Rank 0 picks the run dir (new, or the one to continue) and tells the others.
    plan = None
    if is_rank0:
        try:
            plan = plan_run_dir(outdir, desc, resume, auto_resume, args['resume_pkl'])
        except UserError as e:
            plan = e.message
    if not dry_run:
        plan = distributed.broadcast_object(plan)
    if isinstance(plan, str):
        raise UserError(plan)
    run_dir, resume_files, fresh = plan

    if is_rank0:
        if resume_files is not None:
            print(f'Continuing {run_dir} from {os.path.basename(resume_files[1])}')
        print()
        print('Training options:')
        print(json.dumps(args, indent=2))
        print()
        print(f'Output directory:   {run_dir}')
        print(f'Training data:      {args["training_set_kwargs"]["path"]}')
        print(f'Training duration:  {args["total_kimg"]} kimg')
        print(f'Number of GPUs:     {args["num_gpus"]}')
        print(f'Fairness methods:   {args["fair_method"]}')
        print()
    if dry_run:
        if is_rank0:
            print('Dry run; exiting.')
        return
    if is_rank0 and fresh:
        print('Creating output directory...')
        os.makedirs(run_dir)
        atomic_write_text(os.path.join(run_dir, 'training_options.json'), json.dumps(args, indent=2))
    distributed.barrier()  # the run dir exists before any rank writes to it
    status = launch(run_dir, args, resume_files, dist_timeout=dist_timeout, env=env)
    if status == 'stopped':
        if is_rank0:
            continues = auto_resume or resume == 'auto' or (resume is not None and os.path.isdir(resume))
            how = 'the same command' if continues else 'the same command with --auto-resume added'
            print(f'Stopped early; {how} continues from the saved state (exit status {PREEMPTED_EXIT_CODE})')
        sys.exit(PREEMPTED_EXIT_CODE)


def main():
    train()  # pylint: disable=no-value-for-parameter
