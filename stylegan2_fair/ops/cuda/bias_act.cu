// bias_act: bias add, activation, gain and clamp fused into one elementwise pass, plus the first and
// second derivatives of the same chain (the second one is what R1 and path-length regularisation
// differentiate through).
//
// Derivatives follow torch's own autograd formulas for the reference ops, including the side a
// kink falls on (relu/lrelu use z > 0, elu/selu use z <= 0, softplus is linear above 20), so the
// CUDA and reference paths agree everywhere, not just almost everywhere.
#include "ops.h"
#include "scalar.cuh"

namespace sg2f {
namespace {

constexpr int kBlockSize = 256;

__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float tanh_(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }
__device__ __forceinline__ float expm1_(float v) { return expm1f(v); }
__device__ __forceinline__ double expm1_(double v) { return expm1(v); }
__device__ __forceinline__ float log1p_(float v) { return log1pf(v); }
__device__ __forceinline__ double log1p_(double v) { return log1p(v); }

template <typename A>
__device__ __forceinline__ A sigmoid_(A z) { return A(1) / (A(1) + exp_(-z)); }

// act(z) for order 0, act'(z) for order 1, act''(z) for order 2.
template <typename A>
__device__ __forceinline__ A activation(Activation act, int order, A z, A alpha) {
    const A selu_scale = A(1.0507009873554804934193349852946);
    const A selu_alpha = A(1.6732632423543772848170429916717);
    const A softplus_threshold = A(20);  // torch's default: linear above it
    switch (act) {
        case Activation::kLinear:
            return order == 0 ? z : (order == 1 ? A(1) : A(0));
        case Activation::kRelu:
            return order == 0 ? (z > A(0) ? z : A(0)) : (order == 1 ? (z > A(0) ? A(1) : A(0)) : A(0));
        case Activation::kLrelu:
            return order == 0 ? (z > A(0) ? z : z * alpha) : (order == 1 ? (z > A(0) ? A(1) : alpha) : A(0));
        case Activation::kTanh: {
            const A t = tanh_(z);
            return order == 0 ? t : (order == 1 ? A(1) - t * t : A(-2) * t * (A(1) - t * t));
        }
        case Activation::kSigmoid: {
            const A s = sigmoid_(z);
            return order == 0 ? s : (order == 1 ? s * (A(1) - s) : s * (A(1) - s) * (A(1) - A(2) * s));
        }
        case Activation::kElu:
            if (z > A(0))
                return order == 0 ? z : (order == 1 ? A(1) : A(0));
            return order == 0 ? expm1_(z) : exp_(z);
        case Activation::kSelu:
            if (z > A(0))
                return order == 0 ? selu_scale * z : (order == 1 ? selu_scale : A(0));
            return order == 0 ? selu_scale * selu_alpha * expm1_(z) : selu_scale * selu_alpha * exp_(z);
        case Activation::kSoftplus: {
            if (z > softplus_threshold)
                return order == 0 ? z : (order == 1 ? A(1) : A(0));
            const A s = sigmoid_(z);
            return order == 0 ? log1p_(exp_(z)) : (order == 1 ? s : s * (A(1) - s));
        }
        case Activation::kSwish: {
            // swish(z) = z * sigmoid(z)
            const A s = sigmoid_(z);
            if (order == 0)
                return z * s;
            if (order == 1)
                return s * (A(1) + z * (A(1) - s));
            return s * (A(1) - s) * (A(2) + z * (A(1) - A(2) * s));
        }
        default:
            return A(0);
    }
}

// One element: z = x + bias, then what p.mode asks for. ACT >= 0 fixes the activation at compile
// time (the ones training runs all the time), -1 reads it from p.act.
template <int ACT, typename T, typename A>
__device__ __forceinline__ A bias_act_element(const BiasActParams& p, A z, long long i) {
    const Activation act = ACT >= 0 ? static_cast<Activation>(ACT) : p.act;
    const A alpha = static_cast<A>(p.alpha), gain = static_cast<A>(p.gain), clamp = static_cast<A>(p.clamp);
    if (p.mode == BiasActMode::kForward) {
        const A v = activation<A>(act, 0, z, alpha) * gain;
        // Written with comparisons (not fmin/fmax) so that NaN passes through, as torch.clamp does.
        if (clamp >= A(0))
            return v < -clamp ? -clamp : (v > clamp ? clamp : v);
        return v;
    }
    if (clamp >= A(0)) {
        // torch.clamp passes the gradient where -clamp <= v <= clamp, and blocks it elsewhere (and for NaN).
        const A v = activation<A>(act, 0, z, alpha) * gain;
        if (!(v >= -clamp && v <= clamp))
            return A(0);
    }
    const int order = p.mode == BiasActMode::kGrad ? 1 : 2;
    return load(static_cast<const T*>(p.grad) + i) * activation<A>(act, order, z, alpha) * gain;
}

// Each thread handles kUnroll elements a block-width apart per step: independent loads in flight
// (memory-bound op) while every warp access stays coalesced.
constexpr int kUnroll = 4;

// Any dense layout: the bias index of memory position i is (i / bias_stride) % bias_size.
template <int ACT, typename T, typename Index>
__global__ void __launch_bounds__(kBlockSize) bias_act_flat_kernel(BiasActParams p) {
    using A = acc_t<T>;
    const Index numel = static_cast<Index>(p.numel), stride = static_cast<Index>(p.bias_stride);
    const Index step = static_cast<Index>(gridDim.x) * kBlockSize * kUnroll;
    for (Index base = static_cast<Index>(blockIdx.x) * kBlockSize * kUnroll + threadIdx.x; base < numel; base += step) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const Index i = base + u * kBlockSize;
            if (i < numel) {
                A z = load(static_cast<const T*>(p.x) + i);
                if (p.bias != nullptr)
                    z += load(static_cast<const T*>(p.bias) + (i / stride) % static_cast<Index>(p.bias_size));
                store(static_cast<T*>(p.y) + i, bias_act_element<ACT, T, A>(p, z, i));
            }
        }
    }
}

// Layouts whose bias dimension has stride >= kRowKernelMinStride (planar NCHW feature maps): memory
// is rows of bias_stride elements sharing one bias value. blockIdx.y walks rows, so the bias index
// costs one division per row instead of two per element.
constexpr long long kRowKernelMinStride = 256;

template <int ACT, typename T>
__global__ void __launch_bounds__(kBlockSize) bias_act_rows_kernel(BiasActParams p, long long num_rows) {
    using A = acc_t<T>;
    const int row_len = static_cast<int>(p.bias_stride);
    for (long long row = blockIdx.y; row < num_rows; row += gridDim.y) {
        const A bias = p.bias != nullptr ? A(load(static_cast<const T*>(p.bias) + row % p.bias_size)) : A(0);
        const long long offset = row * row_len;
        for (int base = blockIdx.x * kBlockSize * kUnroll + threadIdx.x; base < row_len;
             base += gridDim.x * kBlockSize * kUnroll) {
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const int j = base + u * kBlockSize;
                if (j < row_len) {
                    const long long i = offset + j;
                    const A z = A(load(static_cast<const T*>(p.x) + i)) + bias;
                    store(static_cast<T*>(p.y) + i, bias_act_element<ACT, T, A>(p, z, i));
                }
            }
        }
    }
}

template <int ACT, typename T>
cudaError_t launch_for(const BiasActParams& p, cudaStream_t stream) {
    if (p.bias != nullptr && p.bias_stride >= kRowKernelMinStride && p.bias_stride < (1LL << 30)) {
        const long long num_rows = p.numel / p.bias_stride;
        const long long per_block = kBlockSize * kUnroll;
        const dim3 blocks(static_cast<unsigned int>((p.bias_stride + per_block - 1) / per_block),
                          static_cast<unsigned int>(num_rows < 65535 ? num_rows : 65535));
        bias_act_rows_kernel<ACT, T><<<blocks, kBlockSize, 0, stream>>>(p, num_rows);
    } else if (p.numel < 0x7fffffffLL) {  // 32-bit index arithmetic is several times cheaper
        bias_act_flat_kernel<ACT, T, unsigned int><<<grid_blocks(p.numel, kBlockSize * kUnroll), kBlockSize, 0, stream>>>(p);
    } else {
        bias_act_flat_kernel<ACT, T, long long><<<grid_blocks(p.numel, kBlockSize * kUnroll), kBlockSize, 0, stream>>>(p);
    }
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch(const BiasActParams& p, cudaStream_t stream) {
    if (p.numel == 0)
        return cudaSuccess;
    switch (p.act) {
        case Activation::kLinear: return launch_for<static_cast<int>(Activation::kLinear), T>(p, stream);
        case Activation::kLrelu: return launch_for<static_cast<int>(Activation::kLrelu), T>(p, stream);
        default: return launch_for<-1, T>(p, stream);
    }
}

}  // namespace

cudaError_t launch_bias_act(const BiasActParams& p, Dtype dtype, cudaStream_t stream) {
    return dispatch_dtype(dtype, [&](auto element) { return launch<decltype(element)>(p, stream); });
}

}  // namespace sg2f
