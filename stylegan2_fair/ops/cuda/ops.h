// Plain-C++ interface between the torch bindings (ops.cpp) and the kernels (*.cu).
//
// The .cu files include no torch headers: they see raw pointers, sizes and strides only. That keeps
// nvcc's work small (a torch header pass under nvcc costs about a minute per file) and lets the
// kernels build against any torch 2.x.
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

namespace sg2f {

enum class Dtype : int { kFloat16 = 0, kFloat32 = 1, kFloat64 = 2 };

// upfirdn2d: y[n, c, oy, ox] = gain * sum_{ty, tx} w[ty, tx] * u[oy * down_y + ty - pad_y0, ox * down_x + tx - pad_x0]
// where u is x zero-inserted by `up` (u[i * up] = x[i], zeros between) and w the correlation taps:
// the filter itself when flip_filter, else the filter rotated by 180 degrees (true convolution).
struct Upfirdn2dParams {
    const void* x;
    const float* filter;          // [filter_h, filter_w], contiguous float32 on the same device
    void* y;
    int64_t x_stride[4];          // strides of x in elements, NCHW order (any layout)
    int64_t y_stride[4];
    int batch, channels, in_h, in_w, out_h, out_w;
    int up_x, up_y, down_x, down_y, pad_x0, pad_y0;
    int filter_h, filter_w;
    bool flip_filter;
    bool channel_fastest;         // thread order: channels innermost (channels-last output) or width innermost
    float gain;
};

// Activations, in the order ops.cpp reports them to Python (activation_names()).
enum class Activation : int { kLinear = 0, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish, kCount };

// bias_act modes: what the kernel writes for each element, with z = x + b and
// mask = 1 where |act(z) * gain| <= clamp (or clamp < 0), else 0:
//   kForward:    clamp(act(z) * gain, -clamp, clamp)
//   kGrad:       g * act'(z) * gain * mask           (first derivative, g = incoming gradient)
//   kSecondGrad: g * act''(z) * gain * mask          (second derivative, g = product of two gradients)
//   kGradFromY:  kGrad computed from x = y, the forward's output, with no bias: for linear, relu and
//                lrelu with gain > 0 and alpha >= 0, act'(z) follows the sign of y and mask is
//                |y| < clamp. The backward then keeps y, which the next layer keeps anyway, instead
//                of the pre-activation x.
enum class BiasActMode : int { kForward = 0, kGrad = 1, kSecondGrad = 2, kGradFromY = 3 };

struct BiasActParams {
    const void* x;                // dense (any permutation of dims); the other tensors share its strides
    const void* bias;             // [bias_size] or nullptr
    const void* grad;             // incoming gradient for the grad modes, else nullptr
    void* y;
    void* bias_grad_partials;     // grad mode on row layouts: [num_rows, row blocks] sums of y, in the
                                  // accumulator type (float, double for float64); nullptr = not wanted
    int64_t numel;
    int64_t bias_stride;          // memory stride of the bias dimension of x
    int bias_size;
    Activation act;
    BiasActMode mode;
    float alpha, gain, clamp;     // clamp < 0: off
};

// Layouts whose bias dimension has a stride of at least kBiasActRowMinStride (planar feature maps)
// run as rows of bias_stride elements sharing one bias value, each row split into blocks of
// kBiasActRowChunk elements; only these give the bias gradient's partial sums.
constexpr int kBiasActBlockSize = 256;
constexpr int kBiasActRowChunk = 2048;
constexpr int64_t kBiasActRowMinStride = 256;

// bias_size > 0: the call has a bias dimension (a bias, or a bias gradient to sum).
inline bool bias_act_uses_rows(const BiasActParams& p) {
    return p.bias_size > 0 && p.bias_stride >= kBiasActRowMinStride && p.bias_stride < (int64_t(1) << 30);
}

inline int64_t bias_act_row_blocks(int64_t bias_stride) {
    return (bias_stride + kBiasActRowChunk - 1) / kBiasActRowChunk;
}

cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, Dtype dtype, cudaStream_t stream);
cudaError_t launch_bias_act(const BiasActParams& p, Dtype dtype, cudaStream_t stream);

}  // namespace sg2f
