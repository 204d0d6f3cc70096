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

template <typename T, typename A>
__device__ __forceinline__ A bias_act_element(const BiasActParams& p, long long i) {
    A z = load(static_cast<const T*>(p.x) + i);
    if (p.bias != nullptr)
        z += load(static_cast<const T*>(p.bias) + (i / p.bias_stride) % p.bias_size);
    const A alpha = static_cast<A>(p.alpha), gain = static_cast<A>(p.gain), clamp = static_cast<A>(p.clamp);
    if (p.mode == BiasActMode::kForward) {
        const A v = activation<A>(p.act, 0, z, alpha) * gain;
        // Written with comparisons (not fmin/fmax) so that NaN passes through, as torch.clamp does.
        if (clamp >= A(0))
            return v < -clamp ? -clamp : (v > clamp ? clamp : v);
        return v;
    }
    if (clamp >= A(0)) {
        // torch.clamp passes the gradient where -clamp <= v <= clamp, and blocks it elsewhere (and for NaN).
        const A v = activation<A>(p.act, 0, z, alpha) * gain;
        if (!(v >= -clamp && v <= clamp))
            return A(0);
    }
    const int order = p.mode == BiasActMode::kGrad ? 1 : 2;
    return load(static_cast<const T*>(p.grad) + i) * activation<A>(p.act, order, z, alpha) * gain;
}

template <typename T>
__global__ void bias_act_kernel(BiasActParams p) {
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.numel; i += stride)
        store(static_cast<T*>(p.y) + i, bias_act_element<T, acc_t<T>>(p, i));
}

template <typename T>
cudaError_t launch(const BiasActParams& p, cudaStream_t stream) {
    if (p.numel == 0)
        return cudaSuccess;
    bias_act_kernel<T><<<grid_blocks(p.numel, kBlockSize), kBlockSize, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_bias_act(const BiasActParams& p, Dtype dtype, cudaStream_t stream) {
    switch (dtype) {
        case Dtype::kFloat16: return launch<__half>(p, stream);
        case Dtype::kFloat32: return launch<float>(p, stream);
        case Dtype::kFloat64: return launch<double>(p, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace sg2f
