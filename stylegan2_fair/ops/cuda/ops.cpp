// Torch bindings of the upfirdn2d and bias_act kernels: argument checks, output allocation in the
// input's memory layout, and the launch on the current stream. Autograd lives in functions.py.
#include <optional>
#include <tuple>
#include <vector>
// Only the headers this file uses: torch/extension.h parses all of ATen and the C++ frontend,
// and would make this file take minutes to compile instead of seconds.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "ops.h"

namespace {

// The filter is staged in 48 KiB of shared memory per block; longer ones should be separable.
constexpr int64_t kMaxFilterTaps = 48 * 1024 / sizeof(float);

sg2f::Dtype kernel_dtype(const at::Tensor& t, const char* op) {
    switch (t.scalar_type()) {
        case at::kHalf: return sg2f::Dtype::kFloat16;
        case at::kFloat: return sg2f::Dtype::kFloat32;
        case at::kDouble: return sg2f::Dtype::kFloat64;
        default:
            TORCH_CHECK(false, op, ": the CUDA kernel supports float16, float32 and float64 tensors, got ",
                        t.scalar_type(), "; cast the input or use impl='ref'");
    }
}

void check_launch(cudaError_t err, const char* op) {
    TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
    TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device(),
                "; move it with .cuda() or use impl='ref'");
}

// The kernel dereferences every pointer on x's device: a tensor on another GPU would be read through a
// foreign address (garbage or an illegal access) instead of failing.
void check_same_device(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
    TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device(),
                "; move ", name, " to x's device with .to(x.device)");
}

at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& f, int64_t up_x, int64_t up_y, int64_t down_x,
                     int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1,
                     bool flip_filter, double gain) {
    const char* op = "upfirdn2d";
    check_cuda(x, op, "x");
    check_cuda(f, op, "f");
    TORCH_CHECK(x.dim() == 4, op, ": x must be [N, C, H, W], got ", x.sizes());
    TORCH_CHECK(f.dim() == 2, op, ": the kernel takes a 2-D filter [fh, fw], got ", f.sizes(),
                "; apply a 1-D filter as two passes");
    check_same_device(f, x, op, "f");
    TORCH_CHECK(f.numel() > 0 && f.numel() <= kMaxFilterTaps, op, ": the filter must have 1 to ",
                kMaxFilterTaps, " taps, got ", f.numel(), "; use a separable 1-D filter");
    TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, op, ": up and down must be >= 1");
    const sg2f::Dtype dtype = kernel_dtype(x, op);
    const c10::cuda::OptionalCUDAGuard guard(x.device());

    const at::Tensor filter = f.to(at::kFloat).contiguous();
    const int64_t fh = filter.size(0), fw = filter.size(1);
    const int64_t span_x = x.size(3) * up_x + pad_x0 + pad_x1 - fw;
    const int64_t span_y = x.size(2) * up_y + pad_y0 + pad_y1 - fh;
    TORCH_CHECK(span_x >= 0 && span_y >= 0, op, ": the padded input is smaller than the ", fh, "x", fw,
                " filter; use less cropping (negative padding) or a larger input");
    const int64_t out_w = span_x / down_x + 1, out_h = span_y / down_y + 1;
    TORCH_CHECK(x.size(0) * x.size(1) * out_h * out_w < (int64_t(1) << 62) && x.size(2) < INT32_MAX &&
                x.size(3) < INT32_MAX && out_h < INT32_MAX && out_w < INT32_MAX, op, ": tensor too large");

    // Keep channels-last inputs channels-last (no layout round trip); anything else gives NCHW.
    const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
    at::Tensor y = at::empty({x.size(0), x.size(1), out_h, out_w},
                             x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
    if (y.numel() == 0)
        return y;

    sg2f::Upfirdn2dParams p{};
    p.x = x.data_ptr();
    p.filter = filter.data_ptr<float>();
    p.y = y.data_ptr();
    for (int d = 0; d < 4; ++d) {
        p.x_stride[d] = x.stride(d);
        p.y_stride[d] = y.stride(d);
    }
    p.batch = static_cast<int>(x.size(0));
    p.channels = static_cast<int>(x.size(1));
    p.in_h = static_cast<int>(x.size(2));
    p.in_w = static_cast<int>(x.size(3));
    p.out_h = static_cast<int>(out_h);
    p.out_w = static_cast<int>(out_w);
    p.up_x = static_cast<int>(up_x);
    p.up_y = static_cast<int>(up_y);
    p.down_x = static_cast<int>(down_x);
    p.down_y = static_cast<int>(down_y);
    p.pad_x0 = static_cast<int>(pad_x0);
    p.pad_y0 = static_cast<int>(pad_y0);
    p.filter_h = static_cast<int>(fh);
    p.filter_w = static_cast<int>(fw);
    p.flip_filter = flip_filter;
    p.channel_fastest = channels_last;
    p.gain = static_cast<float>(gain);
    check_launch(sg2f::launch_upfirdn2d(p, dtype, c10::cuda::getCurrentCUDAStream().stream()), op);
    return y;
}

// `other` in the dtype and memory layout of `like` (a copy only when they differ).
at::Tensor like_layout(const at::Tensor& other, const at::Tensor& like) {
    at::Tensor t = other.to(like.scalar_type());
    if (t.strides() == like.strides())
        return t;
    return at::empty_like(like).copy_(t);
}

// Returns (y, db): db (the sum of y over every dim but `dim`, i.e. the bias gradient when y is dx) only
// when want_bias_grad, in the grad modes (1, 3). Row layouts get it from the kernel's per-block
// partial sums (a deterministic second reduction over a small buffer), others from a sum over y.
std::tuple<at::Tensor, std::optional<at::Tensor>> bias_act(
        const at::Tensor& x, const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& grad, int64_t mode,
        int64_t dim, int64_t act, double alpha, double gain, double clamp, bool want_bias_grad) {
    const char* op = "bias_act";
    check_cuda(x, op, "x");
    TORCH_CHECK(mode >= 0 && mode <= 3, op, ": mode must be 0 (forward), 1 (grad), 2 (second grad) or 3 (grad from y)");
    TORCH_CHECK(act >= 0 && act < static_cast<int64_t>(sg2f::Activation::kCount), op, ": unknown activation code ", act);
    const sg2f::Dtype dtype = kernel_dtype(x, op);
    const c10::cuda::OptionalCUDAGuard guard(x.device());

    // The kernel walks memory linearly, so x must be dense; any permutation (channels-last) is fine.
    const at::Tensor xd = x.is_non_overlapping_and_dense() ? x : x.contiguous();
    sg2f::BiasActParams p{};
    at::Tensor bias, g;
    const bool has_bias = b.has_value() && b->defined();
    // Mode 3 has no bias (y already holds it) but keeps the bias dim's row layout, the fast path:
    // without it, a backward that wants no bias gradient (through D's frozen layers in the G step)
    // fell back to the one-element kernel (0.100 vs 0.077 ms on [32,256,64,64] fp16, H100).
    if (has_bias || want_bias_grad || mode == 3) {
        TORCH_CHECK(dim >= 0 && dim < xd.dim(), op, ": dim=", dim, " is out of range for x with ", xd.dim(), " dims");
        p.bias_size = static_cast<int>(xd.size(dim));
        // A dim of size 1 may carry any stride; its index is 0 anyway.
        p.bias_stride = xd.size(dim) > 1 ? xd.stride(dim) : 1;
    }
    if (has_bias) {
        check_cuda(*b, op, "b");
        check_same_device(*b, x, op, "b");
        TORCH_CHECK(b->dim() == 1 && b->size(0) == xd.size(dim), op, ": b must be 1-D with x.shape[dim]=",
                    xd.size(dim), " entries, got ", b->sizes());
        bias = b->to(xd.scalar_type()).contiguous();
        p.bias = bias.data_ptr();
    }
    if (mode != 0) {
        TORCH_CHECK(grad.has_value() && grad->defined(), op, ": the grad modes need the incoming gradient");
        check_cuda(*grad, op, "grad");
        check_same_device(*grad, x, op, "grad");
        TORCH_CHECK(grad->sizes() == xd.sizes(), op, ": grad has shape ", grad->sizes(), ", x has ", xd.sizes());
        g = like_layout(*grad, xd);
        p.grad = g.data_ptr();
    }
    TORCH_CHECK(!want_bias_grad || mode == 1 || mode == 3, op,
                ": the bias gradient comes with the grad modes 1 and 3");
    TORCH_CHECK(mode != 3 || !has_bias, op, ": mode 3 takes the forward's output y and no bias");
    at::Tensor y = at::empty_like(xd);
    p.x = xd.data_ptr();
    p.y = y.data_ptr();
    p.numel = xd.numel();
    p.act = static_cast<sg2f::Activation>(act);
    p.mode = static_cast<sg2f::BiasActMode>(mode);
    p.alpha = static_cast<float>(alpha);
    p.gain = static_cast<float>(gain);
    p.clamp = static_cast<float>(clamp);
    at::Tensor partials;
    if (want_bias_grad && y.numel() > 0 && sg2f::bias_act_uses_rows(p)) {
        const int64_t num_rows = p.numel / p.bias_stride;
        partials = at::empty({num_rows / p.bias_size, p.bias_size, sg2f::bias_act_row_blocks(p.bias_stride)},
                             x.options().dtype(dtype == sg2f::Dtype::kFloat64 ? at::kDouble : at::kFloat));
        p.bias_grad_partials = partials.data_ptr();
    }
    if (y.numel() > 0)
        check_launch(sg2f::launch_bias_act(p, dtype, c10::cuda::getCurrentCUDAStream().stream()), op);
    if (!want_bias_grad)
        return {y, std::nullopt};
    if (partials.defined())
        return {y, partials.sum(at::IntArrayRef{0, 2}).to(xd.scalar_type())};
    std::vector<int64_t> other_dims;
    for (int64_t d = 0; d < y.dim(); ++d)
        if (d != dim)
            other_dims.push_back(d);
    return {y, other_dims.empty() ? y.clone() : y.sum(other_dims)};
}

std::vector<std::string> activation_names() {
    // Must list sg2f::Activation in order: Python maps names to codes through this list.
    return {"linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "FIR up/down-sampling of NCHW images (2-D filter)");
    m.def("bias_act", &bias_act, "Fused bias + activation + gain + clamp, or its first/second derivative");
    m.def("activation_names", &activation_names, "Activation names in the order of their codes");
}
