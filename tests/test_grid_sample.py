"""ops.grid_sample: torch's bilinear grid_sample, plus the second derivative R1 needs on CUDA."""
import pytest
import torch
import torch.nn.functional as F

from stylegan2_fair.ops.grid_sample import grid_sample

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def _inputs(device, dtype=torch.float64, grid_grad=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([2, 3, 6, 7], generator=gen, dtype=dtype).to(device).requires_grad_(True)
    grid = (torch.rand([2, 5, 4, 2], generator=gen, dtype=dtype) * 2.4 - 1.2).to(device).requires_grad_(grid_grad)
    return x, grid


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('padding_mode', ['zeros', 'border', 'reflection'])
@pytest.mark.parametrize('align_corners', [False, True])
def test_output_and_gradients_equal_torch(device, padding_mode, align_corners):
    x, grid = _inputs(device, grid_grad=True)
    ours = grid_sample(x, grid, padding_mode=padding_mode, align_corners=align_corners)
    theirs = F.grid_sample(x, grid, mode='bilinear', padding_mode=padding_mode, align_corners=align_corners)
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, [x, grid], g), torch.autograd.grad(theirs, [x, grid], g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('padding_mode', ['zeros', 'reflection'])
def test_second_derivative_through_the_input(device, padding_mode):
    # What R1 does: differentiate a function of dL/dx again (here with respect to a weight upstream of the sample).
    x, grid = _inputs(device)
    assert torch.autograd.gradgradcheck(lambda t: grid_sample(t, grid, padding_mode=padding_mode), [x])
    w = torch.randn([3], dtype=x.dtype, device=device, requires_grad=True)
    out = grid_sample(x, grid, padding_mode=padding_mode)
    (dx,) = torch.autograd.grad((out.square() * w[:, None, None]).sum(), [x], create_graph=True)
    (dw,) = torch.autograd.grad(dx.square().sum(), [w])
    # d/dw sum((2 A^T (w * A x))^2) by hand, channel by channel, through the linear map A.
    A = torch.stack([torch.autograd.grad(grid_sample(x, grid, padding_mode=padding_mode).flatten()[i], [x])[0]
                     .flatten() for i in range(out.numel())])
    ax = (A @ x.detach().flatten()).reshape(out.shape)
    expected = torch.stack([
        torch.autograd.functional.jacobian(
            lambda ww: (2 * A.T @ (ax * ww[:, None, None]).flatten()).square().sum(), w.detach())])[0]
    torch.testing.assert_close(dw, expected)


def test_rejects_unknown_padding_mode():
    x, grid = _inputs('cpu')
    with pytest.raises(ValueError, match='padding_mode'):
        grid_sample(x, grid, padding_mode='wrap')
