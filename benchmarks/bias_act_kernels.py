"""bias_act's CUDA kernels alone, without Python or autograd around them (GPU only).

Separates kernel time from host time in `gpu_speed.py`'s bias_act rows, and compares the two
backward modes on the same tensors: the gradient from x and b (mode 1) and from the output y
(mode 3, what training uses for linear/relu/lrelu). Prints ms per call and the DRAM bandwidth
each kernel reaches (bytes it must move / time), so a kernel at the roofline is plain to see.

    python benchmarks/bias_act_kernels.py [--shape 32,256,64,64]
"""
import click
import torch

from gpu_speed import median_ms  # also puts the repository on sys.path


@click.command()
@click.option('--shape', default='32,256,64,64', show_default=True, help='NCHW of x; the bias is [C]')
def main(shape):
    from stylegan2_fair.ops.cuda import functions
    FORWARD, GRAD, GRAD_FROM_Y = functions._FORWARD, functions._GRAD, functions._GRAD_FROM_Y  # kernel modes
    shape = [int(v) for v in shape.split(',')]
    kernels = functions._kernels()
    lrelu = functions._activation_code(kernels, 'lrelu')
    act = (1, lrelu, 0.2, 2 ** 0.5, -1.0)  # dim, act, alpha, gain, clamp (none)
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, x {shape}, lrelu')
    print('| kernel | dtype | ms | GB/s |\n|---|---|---|---|')
    for dtype in (torch.float16, torch.float32):
        x = torch.randn(shape, device='cuda', dtype=dtype)
        b = torch.randn(shape[1], device='cuda', dtype=dtype)
        dy = torch.randn_like(x)
        y = kernels.bias_act(x, b, None, FORWARD, *act, False)[0]
        tensor_bytes = x.numel() * x.element_size()
        rows = [('forward (read x, write y)', 2, lambda: kernels.bias_act(x, b, None, FORWARD, *act, False)),
                ('grad from x, b + bias grad (mode 1)', 3, lambda: kernels.bias_act(x, b, dy, GRAD, *act, True)),
                ('grad from y + bias grad (mode 3)', 3, lambda: kernels.bias_act(y, None, dy, GRAD_FROM_Y, *act, True)),
                # What the G step's backward through D runs (no bias gradient wanted): the row kernel still.
                ('grad from y, no bias grad (mode 3)', 3, lambda: kernels.bias_act(y, None, dy, GRAD_FROM_Y, *act, False))]
        for name, passes, fn in rows:
            ms = median_ms(fn)
            print(f'| {name} | {str(dtype).split(".")[-1]} | {ms:.3f} | {passes * tensor_bytes / ms / 1e6:.0f} |', flush=True)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
