"""`calc_metrics.py`: metrics of an official or stylegan2-fair network pickle, written as the official
metric-<name>.jsonl lines next to the pickle (or into --run-dir)."""
import json
import os
import socket

import click
import torch

from .. import distributed


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _dataset_kwargs(data, mirror, pickle_data, G):
    if data is None:
        kwargs = dict(pickle_data.get('training_set_kwargs') or {})
        if not kwargs.get('path') or not os.path.exists(kwargs['path']):
            where = f' ({kwargs["path"]} is not here)' if kwargs.get('path') else ''
            raise click.UsageError(f'these metrics need the real images: pass --data=DATASET.zip{where}')
        kwargs.update(max_size=None)
    else:
        if not os.path.exists(data):
            raise click.UsageError(f'--data={data}: no such file or folder')
        kwargs = dict(path=data, max_size=None)
    kwargs.update(use_labels=bool(G.c_dim), resolution=G.img_resolution)
    if mirror is not None:
        kwargs['xflip'] = bool(mirror)
    kwargs.pop('class_name', None)
    return kwargs


def _subprocess(rank, args):
    """One process of the metric run: set up torch.distributed when there are several, then compute."""
    from .. import checkpoint
    from ..metrics import metric_main
    num_gpus = args['num_gpus']
    device = torch.device(args['device_type'], rank) if args['device_type'] == 'cuda' else torch.device('cpu')
    if num_gpus > 1:
        distributed.init_process_group(rank, num_gpus, '127.0.0.1', args['port'], args['device_type'])
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    data = checkpoint.load_network_pkl(args['network_pkl'])
    G = data.get('G_ema') or data.get('G')
    settings = dict(args['settings'])
    for metric in args['metrics']:
        result = metric_main.calc_metric(metric, G=G, G_kwargs=args['G_kwargs'], dataset_kwargs=args['dataset_kwargs'],
                                         num_gpus=num_gpus, rank=rank, device=device, progress=args['verbose'],
                                         **settings)
        if rank == 0:
            metric_main.report_metric(result, run_dir=args['run_dir'], snapshot_pkl=args['network_pkl'])
    if num_gpus > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _user_errors():
    from ..dataset import DatasetError
    from ..lpips_features import LPIPSBackboneMissing
    from ..metrics.detectors import MissingDetectorError
    from ..metrics.nriqa import MissingWeightsError
    return (MissingDetectorError, MissingWeightsError, LPIPSBackboneMissing, DatasetError, ImportError)


def parse_metric_args(ctx, param, values):
    """('ivom_steps=500', 'ivom_lr=0.1', 'ivom_distance=mse') -> {'ivom_steps': 500, ...} (JSON values, else strings)."""
    out = {}
    for item in values:
        name, sep, text = item.partition('=')
        if not sep or not name.isidentifier():
            raise click.BadParameter(f'{item!r}: write NAME=VALUE, e.g. ivom_steps=500')
        try:
            out[name] = json.loads(text)
        except ValueError:
            out[name] = text
    return out


def parse_metric_list(ctx, param, value):
    from ..metrics import metric_main
    names = [m.strip() for m in str(value).split(',') if m.strip()]
    for name in names:
        if not metric_main.is_valid_metric(name):
            raise click.BadParameter(f'{name!r} is not a metric. Known: {", ".join(metric_main.list_valid_metrics())} '
                                     f'(counts may change: fid10k, pr1k3, ivom100, ...)')
    return names


@click.command(context_settings=dict(show_default=True))
@click.option('--network', 'network_pkl', help='Network pickle (official or ours)', required=True, metavar='PKL')
@click.option('--metrics', callback=parse_metric_list, default='fid50k_full',
              help='Comma-separated metrics, e.g. fid50k_full,kid50k_full,pr50k3_full,is50k,ppl2_wend,ivom3k')
@click.option('--data', help='Dataset zip or folder (default: the one in the pickle)', metavar='PATH')
@click.option('--mirror', type=bool, default=None, help='Add x-flipped reals [default: as in the pickle]')
@click.option('--gpus', 'num_gpus', type=click.IntRange(min=1), default=1, help='Number of processes (GPUs)')
@click.option('--device', type=click.Choice(['auto', 'cuda', 'cpu']), default='auto')
@click.option('--detector', 'detector_search', multiple=True, metavar='PATH',
              help='Detector file or folder (inception-2015-12-05.pt, vgg16.pt), or NAME=PATH; repeatable '
                   '[default: ~/.cache/dnnlib/downloads]')
@click.option('--run-dir', type=click.Path(file_okay=False), help='Where metric-*.jsonl go [default: the pickle\'s folder]')
@click.option('--classifier', default=None, metavar='SPEC',
              help='Classifier for metrics that take one (fairness, modes), e.g. labels:clf.pt, deepface:race')
@click.option('--lpips-backbone', default=None, metavar='PATH',
              help='VGG16 ImageNet weights for LPIPS (IvOM); "random" = untrained (tests only)')
@click.option('--niqe-model', default=None, metavar='PATH', help='NIQE pristine model (.npz mu/cov or .mat) [default: fit on the reals]')
@click.option('--trunc', 'truncation_psi', type=float, default=1, help='Truncation psi')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=64, help='Images per batch and process')
@click.option('--cache/--no-cache', default=True, help='Cache real-image features under ~/.cache/dnnlib/gan-metrics')
@click.option('--seed', type=int, default=0, help='Seed of the latents drawn')
@click.option('--set', 'metric_args', multiple=True, callback=parse_metric_args, metavar='NAME=VALUE',
              help='A setting of the metrics that take it, e.g. ivom_steps=500, re_epochs=20, fairness_set_size=1000, '
                   'fairness_num_sets=5, ivom_restarts=3; repeatable')
@click.option('--verbose', type=bool, default=True, help='Progress bars')
@click.option('--balance', is_flag=True, help='fairness: score class-balanced rejection sampling under --classifier')
@click.option('--target', 'balance_target', metavar='SHARES', help='--balance: class shares [default: uniform]')
@click.option('--calib', 'balance_calib', type=click.IntRange(min=1), default=1000,
              help='--balance: calibration candidates')
@click.option('--min-acceptance', 'balance_min_acceptance', type=click.FloatRange(0, 1), default=0.0,
              help='--balance: relax the target of classes G hardly draws to keep this acceptance rate')
@click.option('--trunc-mode', type=click.Choice(['global', 'class']), default='global',
              help='fairness: truncate toward w_avg (global) or toward each sample\'s class centroid (class)')
@click.option('--centroid-samples', type=click.IntRange(min=1), default=10000,
              help='--trunc-mode=class: mapping samples')
def calc_metrics(network_pkl, metrics, data, mirror, num_gpus, device, detector_search, run_dir, classifier,
                 lpips_backbone, niqe_model, truncation_psi, batch_size, cache, seed, metric_args, verbose, balance,
                 balance_target, balance_calib, balance_min_acceptance, trunc_mode, centroid_samples):
    """Compute quality, coverage and fairness metrics of a network pickle.

    \b
    python calc_metrics.py --network=network-snapshot-000100.pkl --data=ffhq.zip --metrics=fid50k_full,pr50k3_full
    python calc_metrics.py --network=snap.pkl --metrics=fid1k,ivom100 --detector=~/detectors --device=cpu

    Feature detectors are never downloaded: see the error message for where to put them.
    """
    from .. import checkpoint
    from ..metrics import detectors
    if not os.path.isfile(network_pkl):
        raise click.UsageError(f'--network={network_pkl}: no such file')
    try:
        detectors.check_detector_args(detector_search)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--detector')
    try:   # fail before loading anything when a detector file is missing
        for name in detectors.required_detectors(metrics):
            detectors.find_detector(name, detector_search)
    except detectors.MissingDetectorError as err:
        raise click.ClickException(str(err)) from err
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and num_gpus > torch.cuda.device_count():
        raise click.UsageError(f'--gpus={num_gpus} but this machine has {torch.cuda.device_count()} GPU(s)')
    pickle_data = checkpoint.load_network_pkl(network_pkl)
    G = pickle_data.get('G_ema') or pickle_data.get('G')
    if G is None:
        raise click.UsageError(f'{network_pkl} holds no generator (G_ema or G)')
    needs_data = any(not m.startswith(('ppl', 'is', 'modes', 'brisque', 'clipiqa', 'fairness')) for m in metrics)
    dataset_kwargs = _dataset_kwargs(data, mirror, pickle_data, G) if (needs_data or data or G.c_dim) else {}
    if run_dir is None:
        run_dir = os.path.dirname(os.path.abspath(network_pkl))
    os.makedirs(run_dir, exist_ok=True)
    settings = dict(detector_search=tuple(detector_search), classifier=classifier, lpips_backbone=lpips_backbone,
                    niqe_model=niqe_model, batch_size=batch_size, cache=cache, seed=seed, **metric_args)
    if balance or trunc_mode == 'class':   # fair sampling (fair_generation.py): the fairness metric scores it
        if any(m != 'fairness' for m in metrics):
            print('warning: --balance and --trunc-mode=class apply to the fairness metric only')
        settings.update(balance=balance, balance_target=balance_target, balance_calib=balance_calib,
                        balance_min_acceptance=balance_min_acceptance, trunc_mode=trunc_mode,
                        centroid_samples=centroid_samples, network_pkl=network_pkl)
    args = dict(network_pkl=network_pkl, metrics=metrics, num_gpus=num_gpus, device_type=device, run_dir=run_dir,
                dataset_kwargs=dataset_kwargs, G_kwargs=dict(truncation_psi=truncation_psi), settings=settings,
                verbose=verbose, port=_free_port())
    if num_gpus == 1:
        try:
            _subprocess(0, args)
        except _user_errors() as err:   # missing files and bad data: the message, not a traceback
            raise click.ClickException(str(err)) from err
    else:
        torch.multiprocessing.spawn(_subprocess, args=(args,), nprocs=num_gpus)


def main():
    calc_metrics()  # pylint: disable=no-value-for-parameter
