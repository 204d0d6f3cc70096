"""`projector.py`: find the w whose image best matches a target image (GAN inversion into W).

The algorithm is the StyleGAN2 projector, with its published hyperparameters: start at the mean w,
optimise one w (shared by all layers) together with the network's per-layer noise maps by Adam,
with a warm-up and cosine cool-down of the learning rate, Gaussian jitter on w that fades out over
the first 3/4 of the run (a cheap way to escape poor local optima early), and a penalty on the
spatial autocorrelation of the noise maps (else they learn to paint the target themselves and w
explains less of it). The distance is the LPIPS-feature distance of the official vgg16.pt detector,
which is found on disk like the metrics' detectors, never downloaded.

Unlike `metrics/ivom.py`, which scores many queries at once with a plain LPIPS + MSE objective, this
follows the official projector step for step so that results are comparable with published
projections.

Outputs (as the official tool): target.png (the target as cropped and resized), proj.png (the
network's image of the final w, with its own noise constants, which `generate.py --projected-w`
reproduces exactly), projected_w.npz (`w`, [1, num_ws, w_dim]) and, with --save-video, proj.mp4
(target | projection at every step).
"""
import copy
import importlib
import math
import os
import time

import click
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..fileio import atomic_write
from .dataset_tool import fit
from .generate import class_label, load_generator, save_png, synthesize_ws


def w_statistics(G, c, num_samples=10000, seed=123):
    """(w_avg [1, w_dim], w_std): the start point, and the scale of the jitter. w_std is the root mean
    squared distance of a mapped sample from the mean, over all dimensions together."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(num_samples, G.z_dim)).float().to(c.device)
    with torch.no_grad():
        w = G.mapping(z, c.expand(num_samples, -1))[:, 0]
    w_avg = w.mean(dim=0, keepdim=True)
    return w_avg, float((w - w_avg).square().sum(dim=1).mean().sqrt())


def vgg_lpips_features(vgg, images):
    """LPIPS features of vgg16.pt for float [0, 255] NCHW images. VGG is meant for ~224 px: bigger
    images go in area-downsampled to 256; smaller than 16 px would vanish in the four pools before
    relu5_3, so they are enlarged; grey images go in as RGB."""
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    if images.shape[2] > 256:
        images = F.interpolate(images, size=(256, 256), mode='area')
    elif images.shape[2] < 16:
        images = F.interpolate(images, size=(16, 16), mode='nearest')
    return vgg(images, resize_images=False, return_lpips=True)


def noise_autocorrelation(noise_maps):
    """Sum over maps and scales (halving down to 8x8) of the squared mean product of each map with
    itself shifted by one pixel along x and along y: zero for white noise."""
    total = 0.0
    for noise in noise_maps:
        x = noise[None, None]
        while True:
            total = total + (x * x.roll(1, dims=3)).mean().square() + (x * x.roll(1, dims=2)).mean().square()
            if x.shape[2] <= 8:
                break
            x = F.avg_pool2d(x, kernel_size=2)
    return total


def learning_rate_ramp(t, rampup=0.05, rampdown=0.25):
    """Factor on the initial learning rate at progress t in [0, 1): linear in over the first `rampup`,
    cosine out over the last `rampdown`."""
    down = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (1.0 - t) / rampdown))
    return down * min(1.0, t / rampup)


def project(G, target, vgg, *, num_steps=1000, c=None, w_avg_samples=10000, initial_learning_rate=0.1,
            initial_noise_factor=0.05, lr_rampup_length=0.05, lr_rampdown_length=0.25, noise_ramp_length=0.75,
            regularize_noise_weight=1e5, seed=303, log_every=0):
    """Project `target` (uint8 [C, H, W] at G's resolution, on G's device) into W.

    Returns (ws [num_steps, num_ws, w_dim]: the w after each step, broadcast to every layer;
    dists [num_steps]: the feature distance measured at each step, before its update).
    """
    if tuple(target.shape) != (G.img_channels, G.img_resolution, G.img_resolution):
        raise ValueError(f'target has shape {list(target.shape)}; G makes '
                         f'{[G.img_channels, G.img_resolution, G.img_resolution]}')
    device = target.device
    c = torch.zeros([1, G.c_dim], device=device) if c is None else c
    G = copy.deepcopy(G).eval().requires_grad_(False)   # the noise maps get optimised: not in the caller's G
    w_avg, w_std = w_statistics(G, c, w_avg_samples)
    generator = torch.Generator(device=device).manual_seed(seed)
    noise_maps = [buf for name, buf in G.synthesis.named_buffers() if name.endswith('noise_const')]
    with torch.no_grad():
        for buf in noise_maps:   # fresh white noise: the stored maps were fitted to other images
            buf.copy_(torch.randn(buf.shape, generator=generator, device=device))
    for buf in noise_maps:
        buf.requires_grad_(True)
    w_opt = w_avg.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w_opt, *noise_maps], lr=initial_learning_rate, betas=(0.9, 0.999))
    with torch.no_grad():
        target_features = vgg_lpips_features(vgg, target[None].to(torch.float32))
    ws_out = torch.zeros([num_steps, G.w_dim], device=device)
    dists = torch.zeros([num_steps])
    for step in range(num_steps):
        t = step / num_steps
        for group in optimizer.param_groups:
            group['lr'] = initial_learning_rate * learning_rate_ramp(t, lr_rampup_length, lr_rampdown_length)
        jitter = w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2
        w = w_opt + jitter * torch.randn(w_opt.shape, generator=generator, device=device)
        images = (G.synthesis(w[:, None].repeat(1, G.num_ws, 1), noise_mode='const') + 1) * 127.5
        dist = (vgg_lpips_features(vgg, images) - target_features).square().sum()
        loss = dist + regularize_noise_weight * noise_autocorrelation(noise_maps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            ws_out[step] = w_opt[0]
            dists[step] = dist
            for buf in noise_maps:   # keep the maps unit white noise in scale, so only their pattern can change
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()
        if log_every and ((step + 1) % log_every == 0 or step + 1 == num_steps):
            print(f'step {step + 1:>5d}/{num_steps}: dist {float(dists[step]):<8.4f} loss {float(loss.detach()):<8.4f}')
    return ws_out[:, None].repeat(1, G.num_ws, 1), dists


def load_target(path, resolution, channels):
    """The target as the official projector prepares it: centre square crop, Lanczos resize to G's
    resolution. uint8 HWC."""
    if not os.path.isfile(path):
        raise click.UsageError(f'--target={path}: no such file')
    if channels not in (1, 3):
        raise click.UsageError(f'the network makes {channels}-channel images; projection needs 1 (grey) or 3 (RGB)')
    try:
        with PIL.Image.open(path) as image:
            image = image.convert('L' if channels == 1 else 'RGB')
    except (OSError, PIL.UnidentifiedImageError) as e:
        raise click.UsageError(f'--target={path} is not an image that PIL can read ({e})') from e
    image = fit(image, resolution, 'center-crop')   # dataset_tool's crop: the official projector's geometry
    return np.array(image, dtype=np.uint8).reshape(resolution, resolution, channels)


def video_module():
    """imageio, checked before any work: it is an optional dependency, and ffmpeg comes with imageio-ffmpeg."""
    try:
        import imageio
        importlib.import_module('imageio_ffmpeg')   # imageio's mp4 writer needs it; imported here only to check
    except ImportError as e:
        raise click.ClickException('--save-video needs imageio and its ffmpeg plugin: pip install imageio '
                                   'imageio-ffmpeg (or pass --save-video=false)') from e
    return imageio


def write_video(imageio, path, target_hwc, G, ws):
    """proj.mp4: target | projection at every step, 10 fps. Written beside `path`, renamed when complete."""
    tmp = os.path.join(os.path.dirname(path), '.partial-' + os.path.basename(path))
    try:
        writer = imageio.get_writer(tmp, mode='I', fps=10, codec='libx264', bitrate='16M')
        with writer:
            for w in ws:
                frame = np.concatenate([target_hwc, synthesize_ws(G, w[None])[0]], axis=1)
                writer.append_data(frame.repeat(3, axis=2) if frame.shape[2] == 1 else frame)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@click.command(context_settings=dict(show_default=True))
@click.option('--network', 'network_pkl', help='Network pickle (official or ours)', required=True)
@click.option('--target', 'target_fname', help='Image to project (centre-cropped, resized to the network)',
              required=True, metavar='FILE')
@click.option('--num-steps', type=click.IntRange(min=1), default=1000, help='Optimisation steps')
@click.option('--seed', type=int, default=303, help='Seed of the initial noise maps and the w jitter')
@click.option('--save-video', type=bool, default=True, is_flag=False, flag_value=True, metavar='BOOL',
              help='Also write proj.mp4 of the optimisation (needs: pip install imageio imageio-ffmpeg)')
@click.option('--outdir', help='Where to save the results', required=True, metavar='DIR')
@click.option('--class', 'class_idx', type=int, help='Class label (conditional networks)')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto')
@click.option('--detector', 'detector_search', multiple=True, metavar='PATH',
              help='vgg16.pt, or a folder holding it; repeatable [default: ~/.cache/dnnlib/downloads]')
def projector(network_pkl, target_fname, num_steps, seed, save_video, outdir, class_idx, device, detector_search):
    """Project an image into the latent space W of a network.

    \b
    python projector.py --network=network-snapshot-000100.pkl --target=face.png --outdir=out
    python generate.py --network=network-snapshot-000100.pkl --projected-w=out/projected_w.npz --outdir=out

    The VGG16 feature detector (vgg16.pt) is never downloaded: see the error message for where to put it.
    """
    from ..metrics import detectors
    network_pkl, target_fname, outdir = (os.path.expanduser(p) for p in (network_pkl, target_fname, outdir))
    if not os.path.isfile(network_pkl):
        raise click.UsageError(f'--network={network_pkl}: no such file')
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise click.UsageError(f'--outdir={outdir} is a file; choose a folder')
    try:
        detectors.check_detector_args(detector_search)
        detectors.find_detector('vgg16', detector_search)   # fail before the long part
    except detectors.MissingDetectorError as e:
        raise click.ClickException(str(e)) from e
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint='--detector') from e
    imageio = video_module() if save_video else None
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    _, G = load_generator(network_pkl, device)
    target = load_target(target_fname, G.img_resolution, G.img_channels)
    label = class_label(G, class_idx, device)
    vgg = detectors.load_detector('vgg16', device, detector_search)

    start = time.perf_counter()
    ws, dists = project(G, torch.from_numpy(target.transpose(2, 0, 1).copy()).to(device), vgg, num_steps=num_steps,
                        c=label, seed=seed, log_every=max(1, num_steps // 20))
    print(f'Projected in {time.perf_counter() - start:.1f} s; feature distance {float(dists[0]):.4f} at the '
          f'first step, {float(dists[-1]):.4f} at the last')

    os.makedirs(outdir, exist_ok=True)
    final_w = ws[-1:].cpu().numpy().astype(np.float32)   # the result first: a failing video must not lose it
    atomic_write(os.path.join(outdir, 'projected_w.npz'), lambda f: np.savez(f, w=final_w), suffix='.npz')
    save_png(target, os.path.join(outdir, 'target.png'))
    save_png(synthesize_ws(G, ws[-1:])[0], os.path.join(outdir, 'proj.png'))
    if save_video:
        write_video(imageio, os.path.join(outdir, 'proj.mp4'), target, G, ws)
    print(f'Wrote target.png, proj.png, projected_w.npz{" and proj.mp4" if save_video else ""} to {outdir}')
    return ws, dists


def main():
    projector()  # pylint: disable=no-value-for-parameter
