// Loads and stores that compute in float for float16/float32 and in double for float64.
#pragma once
#include <cuda_fp16.h>

#include "ops.h"

namespace sg2f {

template <typename T> struct AccumulatorOf { using type = float; };
template <> struct AccumulatorOf<double> { using type = double; };
template <typename T> using acc_t = typename AccumulatorOf<T>::type;

__device__ __forceinline__ float load(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ float load(const float* p) { return __ldg(p); }
__device__ __forceinline__ double load(const double* p) { return __ldg(p); }

__device__ __forceinline__ float load_value(__half v) { return __half2float(v); }
__device__ __forceinline__ float load_value(float v) { return v; }
__device__ __forceinline__ double load_value(double v) { return v; }

template <typename T> __device__ __forceinline__ T to_storage(acc_t<T> v) { return v; }
template <> __device__ __forceinline__ __half to_storage<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }

// Grid size for grid-stride loops: enough blocks to fill any current GPU, capped so that huge
// tensors loop instead of asking for more blocks than the launch allows.
inline unsigned int grid_blocks(long long work_items, int block_size) {
    long long blocks = (work_items + block_size - 1) / block_size;
    const long long max_blocks = 1 << 16;
    return static_cast<unsigned int>(blocks < max_blocks ? (blocks > 0 ? blocks : 1) : max_blocks);
}

// Calls launch(T()) with T the element type `dtype` names: the one place that maps Dtype to kernels.
template <typename Launch>
cudaError_t dispatch_dtype(Dtype dtype, Launch&& launch) {
    switch (dtype) {
        case Dtype::kFloat16: return launch(__half());
        case Dtype::kFloat32: return launch(float());
        case Dtype::kFloat64: return launch(double());
    }
    return cudaErrorInvalidValue;
}

}  // namespace sg2f
