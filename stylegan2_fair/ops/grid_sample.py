"""Bilinear grid_sample with a second derivative on every device and torch version.

R1 regularisation differentiates D's gradient with respect to the augmented reals, so the
augmentation's resampling must be twice differentiable. torch's own grid_sample has no derivative
for its backward on CUDA (at least up to 2.11: "derivative for aten::grid_sampler_2d_backward is not
implemented"). The output is linear in the input, out = A(grid) @ input, so the input gradient is
A^T @ grad_out and its derivative with respect to grad_out is A again: one more grid_sample. Only
that part is provided; the sampling grid gets a first derivative but no second (augmentation grids
are constants of the draw, never parameters).
"""
import torch

_PADDING_MODES = {'zeros': 0, 'border': 1, 'reflection': 2}
_BILINEAR = 0


def grid_sample(input, grid, padding_mode='zeros', align_corners=False):
    """torch.nn.functional.grid_sample(mode='bilinear') that supports double backward through input."""
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f'padding_mode={padding_mode!r}: expected one of {sorted(_PADDING_MODES)}')
    return _GridSample.apply(input, grid, _PADDING_MODES[padding_mode], bool(align_corners))


def _sample(input, grid, padding, align_corners):
    return torch.grid_sampler_2d(input, grid, _BILINEAR, padding, align_corners)


class _GridSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, grid, padding, align_corners):
        ctx.save_for_backward(input, grid)
        ctx.modes = padding, align_corners
        return _sample(input, grid, padding, align_corners)

    @staticmethod
    def backward(ctx, grad_output):
        input, grid = ctx.saved_tensors
        grad_input, grad_grid = _GridSampleBackward.apply(grad_output, input, grid, *ctx.modes,
                                                          ctx.needs_input_grad[:2])
        return grad_input, grad_grid, None, None


class _GridSampleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_output, input, grid, padding, align_corners, needs):
        ctx.save_for_backward(grid)
        ctx.modes = padding, align_corners
        grad_input, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_output, input, grid, _BILINEAR, padding, align_corners, list(needs))
        return grad_input, grad_grid

    @staticmethod
    def backward(ctx, grad2_grad_input, grad2_grad_grid):
        (grid,) = ctx.saved_tensors
        grad2_grad_output = None
        if ctx.needs_input_grad[0] and grad2_grad_input is not None:
            grad2_grad_output = _GridSample.apply(grad2_grad_input, grid, *ctx.modes)
        return grad2_grad_output, None, None, None, None, None
