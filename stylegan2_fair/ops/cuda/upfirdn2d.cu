// upfirdn2d: zero-insertion upsampling, padding/cropping, FIR filtering and downsampling in one pass.
//
// One thread per output pixel gathers the few input pixels its filter window covers; zero-inserted
// samples and padding are skipped arithmetically instead of being materialised (the reference path
// builds the up*up larger zero-inserted image and filters all of it).
#include "ops.h"
#include "scalar.cuh"

namespace sg2f {
namespace {

constexpr int kBlockSize = 256;

// First tap of a filter window starting at upsampled coordinate `start` that lands on a real
// (non-inserted, non-padding) sample, and that sample's input coordinate.
__device__ __forceinline__ void first_real_tap(int start, int up, int& tap, int& in_coord) {
    // Coordinate 0 is a real sample, so a window starting left of it first hits 0; otherwise the
    // next multiple of `up`.
    tap = start < 0 ? -start : (up - start % up) % up;
    in_coord = (start + tap) / up;
}

template <typename T, typename Index>
__device__ __forceinline__ void upfirdn2d_pixel(const Upfirdn2dParams& p, const float* taps, Index i) {
    using A = acc_t<T>;
    Index c, ox, oy, n;
    if (p.channel_fastest) {
        c = i % p.channels; i /= p.channels;
        ox = i % p.out_w; i /= p.out_w;
        oy = i % p.out_h; n = i / p.out_h;
    } else {
        ox = i % p.out_w; i /= p.out_w;
        oy = i % p.out_h; i /= p.out_h;
        c = i % p.channels; n = i / p.channels;
    }
    int ty0, iy0, tx0, ix0;
    first_real_tap(static_cast<int>(oy) * p.down_y - p.pad_y0, p.up_y, ty0, iy0);
    first_real_tap(static_cast<int>(ox) * p.down_x - p.pad_x0, p.up_x, tx0, ix0);

    const T* x = static_cast<const T*>(p.x) + n * p.x_stride[0] + c * p.x_stride[1];
    A acc = 0;
    for (int ty = ty0, iy = iy0; ty < p.filter_h && iy < p.in_h; ty += p.up_y, ++iy) {
        const T* row = x + iy * p.x_stride[2];
        for (int tx = tx0, ix = ix0; tx < p.filter_w && ix < p.in_w; tx += p.up_x, ++ix) {
            // Convolution reads the filter rotated by 180 degrees; flip_filter correlates instead.
            const int tap = p.flip_filter ? ty * p.filter_w + tx
                                          : (p.filter_h - 1 - ty) * p.filter_w + (p.filter_w - 1 - tx);
            acc += static_cast<A>(taps[tap]) * load(row + ix * p.x_stride[3]);
        }
    }
    T* y = static_cast<T*>(p.y) + n * p.y_stride[0] + c * p.y_stride[1] + oy * p.y_stride[2] + ox * p.y_stride[3];
    store(y, acc * static_cast<A>(p.gain));
}

template <typename T>
__global__ void upfirdn2d_kernel(Upfirdn2dParams p, long long total) {
    extern __shared__ float taps[];
    const int num_taps = p.filter_h * p.filter_w;
    for (int k = threadIdx.x; k < num_taps; k += blockDim.x)
        taps[k] = p.filter[k];
    __syncthreads();

    // 32-bit index arithmetic is several times cheaper on the GPU; use 64 bits only when needed.
    if (total <= 0x7fffffffLL) {
        const unsigned int stride = gridDim.x * blockDim.x;
        for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
            upfirdn2d_pixel<T, unsigned int>(p, taps, i);
    } else {
        const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
        for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
            upfirdn2d_pixel<T, long long>(p, taps, i);
    }
}

template <typename T>
cudaError_t launch(const Upfirdn2dParams& p, cudaStream_t stream) {
    const long long total = static_cast<long long>(p.batch) * p.channels * p.out_h * p.out_w;
    if (total == 0)
        return cudaSuccess;
    const size_t shared_bytes = sizeof(float) * p.filter_h * p.filter_w;
    upfirdn2d_kernel<T><<<grid_blocks(total, kBlockSize), kBlockSize, shared_bytes, stream>>>(p, total);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, Dtype dtype, cudaStream_t stream) {
    switch (dtype) {
        case Dtype::kFloat16: return launch<__half>(p, stream);
        case Dtype::kFloat32: return launch<float>(p, stream);
        case Dtype::kFloat64: return launch<double>(p, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace sg2f
