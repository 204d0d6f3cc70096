"""Reconstruction error, RE (Self-Diagnosing GAN, Lee et al. 2021, Sec. 5 and App. E): train a
convolutional auto-encoder (CAE) on generated images only, then measure how badly it reconstructs
each real image. Real images that G never makes are out of the CAE's distribution and reconstruct
poorly, so a high RE on a subgroup means G does not cover it.

RE(x) = ||CAE(x) - x||_2 / 32 in the paper, on 32x32 images in [0, 1]; we divide by the image side
(32 there), i.e. the root of the pixel count, so the figure does not grow with resolution. Images
larger than `max_resolution` are average-pooled down first (the CAE is small).
"""
import torch
import torch.nn.functional as F

from .. import distributed
from . import features


class ConvAutoEncoder(torch.nn.Module):
    """Stride-2 convs down to 4x4, transposed convs back up; sigmoid output in [0, 1]."""

    def __init__(self, resolution, channels, width=32):
        super().__init__()
        down, up = [], []
        c_in, size = channels, resolution
        widths = []
        while size > 4:
            c_out = min(width * 2 ** len(widths), 256)
            down += [torch.nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), torch.nn.LeakyReLU(0.2)]
            widths.append(c_in)
            c_in, size = c_out, size // 2
        for c_out in reversed(widths):
            up += [torch.nn.ConvTranspose2d(c_in, max(c_out, width), 4, stride=2, padding=1), torch.nn.LeakyReLU(0.2)]
            c_in = max(c_out, width)
        up += [torch.nn.Conv2d(c_in, channels, 3, padding=1), torch.nn.Sigmoid()]
        self.encoder = torch.nn.Sequential(*down)
        self.decoder = torch.nn.Sequential(*up)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def prepare(images_uint8, max_resolution):
    x = images_uint8.float() / 255
    factor = x.shape[2] // max_resolution
    return F.avg_pool2d(x, factor) if factor > 1 else x


def train_autoencoder(images, epochs=50, batch_size=128, lr=1e-3, seed=0, device='cpu', progress=None):
    """Fit a ConvAutoEncoder to images (float [0, 1] NCHW, CPU) with MSE and Adam."""
    torch.manual_seed(seed)
    cae = ConvAutoEncoder(images.shape[2], images.shape[1]).to(device)
    opt = torch.optim.Adam(cae.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            x = images[idx].to(device)
            loss = F.mse_loss(cae(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if progress is not None:
            progress.update(1)
    return cae.eval().requires_grad_(False)


def reconstruction_error(cae, images):
    """RE per image: ||CAE(x) - x||_2 / side, images float [0, 1] NCHW."""
    with torch.no_grad():
        return (cae(images) - images).flatten(1).norm(dim=1) / images.shape[2]


def compute_recon_error(opts, num_gen, max_real=None, epochs=50, batch_size=128, lr=1e-3, max_resolution=64,
                        prefix='re'):
    """Mean RE of the first `max_real` reals (`<prefix>`), its std, and the mean per subgroup."""
    fakes = features.run_in_chunks(opts, num_gen, lambda items: features.generated_images(
        opts, items), desc='generating for the CAE')
    fakes = prepare(fakes, max_resolution)
    cae = None
    if opts.rank == 0:
        with features.progress_bar(opts, epochs, 'CAE epochs') as bar:
            cae = train_autoencoder(fakes, epochs, batch_size, lr, seed=opts.seed, device=opts.device, progress=bar)
    if opts.num_gpus > 1:   # one CAE for all: rank 0's weights
        if cae is None:
            cae = ConvAutoEncoder(fakes.shape[2], fakes.shape[1]).to(opts.device).eval().requires_grad_(False)
        distributed.broadcast_module(cae)
    n = features.num_real_items(opts, max_real)
    errors = features.run_in_chunks(opts, n, lambda items: reconstruction_error(
        cae, prepare(features.real_images(opts, items), max_resolution)), desc='RE of reals').numpy()
    results = {prefix: float(errors.mean()), f'{prefix}_std': float(errors.std())}
    results.update(features.breakdown(prefix, errors, features.subgroups(opts, n)))
    return results
