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

constexpr int kBlockSize = kBiasActBlockSize;

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

// One element: z = x + bias, then what p.mode asks for (g: the incoming gradient of the grad modes).
// ACT >= 0 fixes the activation at compile time (the ones training runs all the time), -1 reads it
// from p.act.
template <int ACT, typename A>
__device__ __forceinline__ A bias_act_value(const BiasActParams& p, A z, A g) {
    const Activation act = ACT >= 0 ? static_cast<Activation>(ACT) : p.act;
    const A alpha = static_cast<A>(p.alpha), gain = static_cast<A>(p.gain), clamp = static_cast<A>(p.clamp);
    if (p.mode == BiasActMode::kGradFromY) {
        // z is y here. Strictly inside the clamp range: y == +-clamp means clamped (the exact tie
        // v == clamp, where torch.clamp passes the gradient, is indistinguishable and blocked).
        if (clamp >= A(0) && !(z > -clamp && z < clamp))
            return A(0);
        const A slope = act == Activation::kLinear ? A(1) : (z > A(0) ? A(1) : (act == Activation::kLrelu ? alpha : A(0)));
        return g * slope * gain;
    }
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
    const int order = p.mode == BiasActMode::kSecondGrad ? 2 : 1;
    return g * activation<A>(act, order, z, alpha) * gain;
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
                const A g = p.mode == BiasActMode::kForward ? A(0) : A(load(static_cast<const T*>(p.grad) + i));
                store(static_cast<T*>(p.y) + i, bias_act_value<ACT, A>(p, z, g));
            }
        }
    }
}

// VEC elements of T moved as one 16-byte access (8 halves, 4 floats, 2 doubles): a memory-bound op
// reaches full bandwidth only with wide accesses.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Packet {
    T v[VEC];
};

// Stores VEC results as one 16-byte access. Through the __stwb intrinsics (inline PTX): nvcc splits a
// plain vector store into narrow ones once loop strength reduction has lost the pointer's alignment.
__device__ __forceinline__ void store_packet(float* dst, const float (&v)[4]) {
    __stwb(reinterpret_cast<float4*>(dst), make_float4(v[0], v[1], v[2], v[3]));
}
__device__ __forceinline__ void store_packet(double* dst, const double (&v)[2]) {
    __stwb(reinterpret_cast<double2*>(dst), make_double2(v[0], v[1]));
}
__device__ __forceinline__ unsigned int pack_halves(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const unsigned int*>(&h);
}
__device__ __forceinline__ void store_packet(__half* dst, const float (&v)[8]) {
    __stwb(reinterpret_cast<uint4*>(dst), make_uint4(pack_halves(v[0], v[1]), pack_halves(v[2], v[3]),
                                                     pack_halves(v[4], v[5]), pack_halves(v[6], v[7])));
}
template <typename T, typename A>
__device__ __forceinline__ void store_packet(T* dst, const A (&v)[1]) { store(dst, v[0]); }

// Sum of v over the block, valid in thread 0. Every thread of the block must call it.
template <typename A>
__device__ __forceinline__ A block_sum(A v) {
    __shared__ A warp_sums[kBlockSize / 32];
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, offset);
    if ((threadIdx.x & 31) == 0)
        warp_sums[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < kBlockSize / 32 ? warp_sums[threadIdx.x] : A(0);
        for (int offset = 16; offset > 0; offset >>= 1)
            v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    __syncthreads();  // warp_sums is reused by the caller's next row
    return v;
}

// Layouts whose bias dimension has stride >= kBiasActRowMinStride (planar NCHW feature maps): memory
// is rows of bias_stride elements sharing one bias value, so the bias index costs one division per
// row instead of two per element. Block (bx, row) covers kBiasActRowChunk elements of its row.
// With PARTIALS (the grad mode), each block also writes the sum of the gradients it wrote to
// partials[row * gridDim.x + bx]: the bias gradient without a second pass over the tensor.
template <int ACT, typename T, int VEC, bool PARTIALS>
__global__ void __launch_bounds__(kBlockSize) bias_act_rows_kernel(BiasActParams p, long long num_rows) {
    using A = acc_t<T>;
    using P = Packet<T, VEC>;
    const int row_len = static_cast<int>(p.bias_stride);
    const int chunk_end = min(row_len, static_cast<int>(blockIdx.x + 1) * kBiasActRowChunk);
    for (long long row = blockIdx.y; row < num_rows; row += gridDim.y) {
        const A bias = p.bias != nullptr ? A(load(static_cast<const T*>(p.bias) + row % p.bias_size)) : A(0);
        const long long offset = row * row_len;
        A sum = A(0);
        for (int j = static_cast<int>(blockIdx.x) * kBiasActRowChunk + threadIdx.x * VEC; j < chunk_end;
             j += kBlockSize * VEC) {
            // Row starts are VEC-aligned: the host picks VEC > 1 only when row_len and the pointers allow it.
            const P xs = *reinterpret_cast<const P*>(static_cast<const T*>(p.x) + offset + j);
            P gs;
            if (p.mode != BiasActMode::kForward)
                gs = *reinterpret_cast<const P*>(static_cast<const T*>(p.grad) + offset + j);
            A ys[VEC];
#pragma unroll
            for (int u = 0; u < VEC; ++u) {
                const A g = p.mode == BiasActMode::kForward ? A(0) : A(load_value(gs.v[u]));
                ys[u] = bias_act_value<ACT, A>(p, A(load_value(xs.v[u])) + bias, g);
                if (PARTIALS)
                    sum += A(load_value(to_storage<T>(ys[u])));  // the stored (rounded) values, as a sum over dx sees
            }
            store_packet(static_cast<T*>(p.y) + offset + j, ys);
        }
        if (PARTIALS) {
            sum = block_sum(sum);
            if (threadIdx.x == 0)
                static_cast<A*>(p.bias_grad_partials)[row * gridDim.x + blockIdx.x] = sum;
        }
    }
}

template <int ACT, typename T, int VEC>
void launch_rows(const BiasActParams& p, cudaStream_t stream) {
    const long long num_rows = p.numel / p.bias_stride;
    const dim3 blocks(static_cast<unsigned int>(bias_act_row_blocks(p.bias_stride)),
                      static_cast<unsigned int>(num_rows < 65535 ? num_rows : 65535));
    if (p.bias_grad_partials != nullptr)
        bias_act_rows_kernel<ACT, T, VEC, true><<<blocks, kBlockSize, 0, stream>>>(p, num_rows);
    else
        bias_act_rows_kernel<ACT, T, VEC, false><<<blocks, kBlockSize, 0, stream>>>(p, num_rows);
}

bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

template <int ACT, typename T>
cudaError_t launch_for(const BiasActParams& p, cudaStream_t stream) {
    if (bias_act_uses_rows(p)) {
        constexpr int kVec = 16 / sizeof(T);
        const bool wide = p.bias_stride % kVec == 0 && aligned(p.x, 16) && aligned(p.y, 16) &&
                          (p.grad == nullptr || aligned(p.grad, 16));
        if (wide)
            launch_rows<ACT, T, kVec>(p, stream);
        else
            launch_rows<ACT, T, 1>(p, stream);
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
