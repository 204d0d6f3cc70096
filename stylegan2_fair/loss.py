"""StyleGAN2 loss: non-saturating logistic loss with R1 and path-length regularisation.

`gan_loss='hinge'` swaps the adversarial terms for the hinge loss (Lim & Ye 2017; Miyato et al.
2018): D minimises relu(1 - D(x)) + relu(1 + D(G(z))), G minimises -D(G(z)). The official code
has only the non-saturating loss; the hinge loss is here for Dia-HingeGAN (training_hooks/dia.py).

Phases follow the official loop: 'Gmain' (adversarial), 'Greg' (path length), 'Gboth'
(both, when G is not lazily regularised), and 'Dmain' / 'Dreg' (R1) / 'Dboth'. After the
built-in terms of a phase, `extra_loss_fn(phase, PhaseBatch)` returns the training hooks'
terms, which are added before the backward pass; the loss itself knows nothing of hooks.
"""
import numpy as np
import torch
import torch.nn.functional as F

from training_hooks.base import PhaseBatch
from .stats import report


GAN_LOSSES = ('ns', 'hinge')


# Adversarial terms, per sample (hooks reweighting a term use these, so they follow --gan-loss).
def generator_loss(fake_logits, gan_loss='ns'):
    return -fake_logits if gan_loss == 'hinge' else F.softplus(-fake_logits)  # -log(sigmoid(D(G(z))))


def fake_loss(fake_logits, gan_loss='ns'):
    return F.relu(1 + fake_logits) if gan_loss == 'hinge' else F.softplus(fake_logits)  # -log(1 - sigmoid(D(G(z))))


def real_loss(real_logits, gan_loss='ns'):
    return F.relu(1 - real_logits) if gan_loss == 'hinge' else F.softplus(-real_logits)  # -log(sigmoid(D(x)))


class StyleGAN2Loss:
    def __init__(self, device, G, D, augment_pipe=None, style_mixing_prob=0.9, r1_gamma=10,
                 pl_batch_shrink=2, pl_decay=0.01, pl_weight=2, gan_loss='ns', extra_loss_fn=None):
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f'unknown gan_loss {gan_loss!r}; choose one of {", ".join(GAN_LOSSES)}')
        self.gan_loss = gan_loss
        self.device = device
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.style_mixing_prob = style_mixing_prob
        self.r1_gamma = r1_gamma
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.pl_weight = pl_weight
        self.pl_mean = torch.zeros([], device=device)
        self.extra_loss_fn = extra_loss_fn

    # Forward helpers -------------------------------------------------------------------------
    def run_G(self, z, c):
        ws = self.G.mapping(z, c)
        if self.style_mixing_prob > 0:
            # Style mixing regularisation: past a random cutoff layer, styles come from a second z.
            num_ws = ws.shape[1]
            cutoff = int(torch.randint(1, num_ws, [], device='cpu')) if num_ws > 1 else num_ws
            if float(torch.rand([])) >= self.style_mixing_prob:
                cutoff = num_ws
            if cutoff < num_ws:
                mixed = self.G.mapping(torch.randn_like(z), c, skip_w_avg_update=True)
                ws = torch.cat([ws[:, :cutoff], mixed[:, cutoff:]], dim=1)
        img = self.G.synthesis(ws)
        return img, ws

    def run_D(self, img, c):
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    def _backward(self, phase, loss, gain, batch):
        if self.extra_loss_fn is not None:
            extra = self.extra_loss_fn(phase, batch)
            if extra is not None:
                loss = loss + extra
        loss.mul(gain).backward()

    # Phases ----------------------------------------------------------------------------------
    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, real_idx=None,
                             on_real_logits=None):
        """Run one round of `phase` and accumulate gradients (scaled by `gain`)."""
        if phase not in ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth'):
            raise ValueError(f'unknown phase {phase!r}')
        do_Gmain = phase in ('Gmain', 'Gboth')
        do_Dmain = phase in ('Dmain', 'Dboth')
        do_Gpl = phase in ('Greg', 'Gboth') and self.pl_weight != 0
        do_Dr1 = phase in ('Dreg', 'Dboth') and self.r1_gamma != 0

        if do_Gmain:
            gen_img, gen_ws = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c)
            report('Loss/scores/fake', gen_logits)
            report('Loss/signs/fake', gen_logits.sign())
            loss_Gmain = generator_loss(gen_logits, self.gan_loss)
            report('Loss/G/loss', loss_Gmain)
            batch = PhaseBatch('Gmain', gain, gen_z=gen_z, gen_c=gen_c, gen_img=gen_img, gen_ws=gen_ws,
                               gen_logits=gen_logits)
            self._backward('Gmain', loss_Gmain.mean(), gain, batch)

        if do_Gpl:
            self._path_length_reg(gen_z, gen_c, gain)

        if do_Dmain:
            with torch.no_grad():
                gen_img, gen_ws = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c)
            report('Loss/scores/fake', gen_logits)
            report('Loss/signs/fake', gen_logits.sign())
            loss_Dgen = fake_loss(gen_logits, self.gan_loss)
        if do_Dmain or do_Dr1:
            real = real_img.detach().requires_grad_(do_Dr1)
            real_logits = self.run_D(real, real_c)
            report('Loss/scores/real', real_logits)
            report('Loss/signs/real', real_logits.sign())
            loss = real_logits.sum() * 0  # keeps every D output in the graph for DDP
            if do_Dmain:
                loss_Dreal = real_loss(real_logits, self.gan_loss)
                report('Loss/D/loss', loss_Dgen + loss_Dreal)
                loss = loss + loss_Dgen.mean() + loss_Dreal.mean()
                if on_real_logits is not None and real_idx is not None:
                    on_real_logits(real_logits.detach(), real_idx)
            if do_Dr1:
                # R1: squared gradient norm of D at the (un-augmented) reals, times gamma/2.
                r1_grads, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
                r1_penalty = r1_grads.square().sum([1, 2, 3])
                report('Loss/r1_penalty', r1_penalty)
                loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
                report('Loss/D/reg', loss_Dr1)
                loss = loss + loss_Dr1.mean()
            dphase = 'Dmain' if do_Dmain else 'Dreg'
            batch = PhaseBatch(dphase, gain, gen_z=gen_z, gen_c=gen_c,
                               gen_img=gen_img if do_Dmain else None,
                               gen_logits=gen_logits if do_Dmain else None,
                               real_img=real_img, real_c=real_c, real_idx=real_idx, real_logits=real_logits)
            self._backward(dphase, loss, gain, batch)

    def _path_length_reg(self, gen_z, gen_c, gain):
        # Path length regularisation (StyleGAN2 Sec. 3.2): Jacobian norms of G w.r.t. w, measured
        # with random image-space projections, are pulled toward their running mean.
        n = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
        gen_img, gen_ws = self.run_G(gen_z[:n], gen_c[:n])
        pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
        pl_grads, = torch.autograd.grad((gen_img * pl_noise).sum(), gen_ws, create_graph=True)
        pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
        pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
        self.pl_mean.copy_(pl_mean.detach())
        pl_penalty = (pl_lengths - pl_mean).square()
        report('Loss/pl_penalty', pl_penalty)
        loss_Gpl = pl_penalty * self.pl_weight
        report('Loss/G/reg', loss_Gpl)
        # Adding 0 * an image pixel keeps every synthesis output in the graph for DDP.
        loss = (gen_img[:, 0, 0, 0] * 0 + loss_Gpl).mean()
        batch = PhaseBatch('Greg', gain, gen_z=gen_z[:n], gen_c=gen_c[:n], gen_img=gen_img, gen_ws=gen_ws)
        self._backward('Greg', loss, gain, batch)
