// upfirdn2d: zero-insertion upsampling, padding/cropping, FIR filtering and downsampling in one pass.
//
// Zero-inserted samples and padding are skipped arithmetically instead of being materialised (the
// reference path builds the up*up larger zero-inserted image and filters all of it). Two kernels:
// - tiled, for the filter sizes and factors StyleGAN2 uses on planar (NCHW) tensors, with a tile shape
//   per plane size (launch_tiled_for_plane): a block stages the input patch its outputs' windows cover
//   in shared memory, so each input sample is read from global memory about once, and all loop
//   bounds are compile-time constants;
// - generic, for everything else: one thread per output pixel gathers its window from global memory.
#include <type_traits>

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

// Floor division for any sign of `a` (b > 0).
__device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

template <typename T, int UP, int DOWN, int FH, int FW, int TILE_H, int TILE_W>
__global__ void __launch_bounds__(kBlockSize) upfirdn2d_tiled_kernel(Upfirdn2dParams p, int tiles_x, int tiles_y,
                                                                      long long num_tiles) {
    // Input rows (columns) the windows of TILE_H output rows can touch: the multiples of UP among
    // (TILE_H - 1) * DOWN + FH consecutive upsampled coordinates.
    constexpr int IN_H = ((TILE_H - 1) * DOWN + FH + UP - 1) / UP;
    constexpr int IN_W = ((TILE_W - 1) * DOWN + FW + UP - 1) / UP;
    __shared__ float patch[IN_H][IN_W];
    __shared__ float taps[FH][FW];  // taps[ty][tx] weighs upsampled sample (oy * DOWN - pad_y0 + ty, ...)
    for (int k = threadIdx.x; k < FH * FW; k += blockDim.x) {
        const int ty = k / FW, tx = k % FW;
        taps[ty][tx] = p.flip_filter ? p.filter[k] : p.filter[(FH - 1 - ty) * FW + (FW - 1 - tx)];
    }

    for (long long tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
        const int tile_x = static_cast<int>(tile % tiles_x);
        const long long rest = tile / tiles_x;
        const int tile_y = static_cast<int>(rest % tiles_y);
        const long long plane = rest / tiles_y;
        const int n = static_cast<int>(plane / p.channels), c = static_cast<int>(plane % p.channels);
        const int oy0 = tile_y * TILE_H, ox0 = tile_x * TILE_W;
        const int uy0 = oy0 * DOWN - p.pad_y0, ux0 = ox0 * DOWN - p.pad_x0;  // first window starts
        const int iy0 = floor_div(uy0 + UP - 1, UP), ix0 = floor_div(ux0 + UP - 1, UP);

        const T* x = static_cast<const T*>(p.x) + n * p.x_stride[0] + c * p.x_stride[1];
        __syncthreads();  // the previous tile's reads of `patch` (and the taps' writes) are done
        for (int k = threadIdx.x; k < IN_H * IN_W; k += blockDim.x) {
            const int iy = iy0 + k / IN_W, ix = ix0 + k % IN_W;
            float v = 0.f;
            if (iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w)
                v = load(x + iy * p.x_stride[2] + ix * p.x_stride[3]);
            patch[k / IN_W][k % IN_W] = v;
        }
        __syncthreads();

        T* y = static_cast<T*>(p.y) + n * p.y_stride[0] + c * p.y_stride[1];
        for (int k = threadIdx.x; k < TILE_H * TILE_W; k += blockDim.x) {
            const int oy = oy0 + k / TILE_W, ox = ox0 + k % TILE_W;
            if (oy >= p.out_h || ox >= p.out_w)
                continue;
            // The window's first tap on a real (not zero-inserted) sample, and that sample's patch row.
            const int uy = uy0 + (k / TILE_W) * DOWN, ux = ux0 + (k % TILE_W) * DOWN;
            const int ty0 = (UP - (uy % UP + UP) % UP) % UP, tx0 = (UP - (ux % UP + UP) % UP) % UP;
            const int ry0 = (uy + ty0) / UP - iy0, rx0 = (ux + tx0) / UP - ix0;
            float acc = 0.f;
#pragma unroll
            for (int a = 0; a < (FH + UP - 1) / UP; ++a) {
                const int ty = ty0 + a * UP;
                if (UP == 1 || ty < FH) {
#pragma unroll
                    for (int b = 0; b < (FW + UP - 1) / UP; ++b) {
                        const int tx = tx0 + b * UP;
                        if (UP == 1 || tx < FW)
                            acc += taps[ty][tx] * patch[ry0 + a][rx0 + b];
                    }
                }
            }
            store(y + oy * p.y_stride[2] + ox * p.y_stride[3], acc * p.gain);
        }
    }
}

template <typename T, int UP, int DOWN, int FH, int FW, int TILE_H, int TILE_W>
cudaError_t launch_tiled(const Upfirdn2dParams& p, cudaStream_t stream) {
    const int tiles_x = (p.out_w + TILE_W - 1) / TILE_W, tiles_y = (p.out_h + TILE_H - 1) / TILE_H;
    const long long num_tiles = static_cast<long long>(p.batch) * p.channels * tiles_x * tiles_y;
    const unsigned int blocks = static_cast<unsigned int>(num_tiles < (1 << 20) ? num_tiles : (1 << 20));
    upfirdn2d_tiled_kernel<T, UP, DOWN, FH, FW, TILE_H, TILE_W><<<blocks, kBlockSize, 0, stream>>>(
        p, tiles_x, tiles_y, num_tiles);
    return cudaGetLastError();
}

// The tile that fits the output plane: a 32x64 (16x64 when downsampling) tile on planes of 32x32 and
// more, one 16x16 or 8x8 tile per plane below. The generic kernel on the small planes of the low
// resolutions ran 4x slower per output than a tile (its per-pixel index divisions dominate there).
template <typename T, int UP, int DOWN>
cudaError_t launch_tiled_for_plane(const Upfirdn2dParams& p, cudaStream_t stream) {
    if (static_cast<long long>(p.out_h) * p.out_w >= 1024)
        return launch_tiled<T, UP, DOWN, 4, 4, (DOWN == 1 ? 32 : 16), 64>(p, stream);
    if (p.out_w > 8 || p.out_h > 8)
        return launch_tiled<T, UP, DOWN, 4, 4, 16, 16>(p, stream);
    return launch_tiled<T, UP, DOWN, 4, 4, 8, 8>(p, stream);
}

template <typename T>
cudaError_t launch(const Upfirdn2dParams& p, cudaStream_t stream) {
    const long long total = static_cast<long long>(p.batch) * p.channels * p.out_h * p.out_w;
    if (total == 0)
        return cudaSuccess;
    // The tiled kernels cover StyleGAN2's 4x4 filters; channels-last tensors would make their
    // row-wise patch loads and stores strided, so they stay on the generic kernel, as does float64
    // (gradient checks, not speed: it accumulates in double).
    const bool tiled = !std::is_same<T, double>::value && !p.channel_fastest && p.filter_h == 4 && p.filter_w == 4 &&
                       p.up_x == p.up_y && p.down_x == p.down_y;
    if (tiled && p.up_x == 1 && p.down_x == 1)
        return launch_tiled_for_plane<T, 1, 1>(p, stream);
    if (tiled && p.up_x == 2 && p.down_x == 1)
        return launch_tiled_for_plane<T, 2, 1>(p, stream);
    if (tiled && p.up_x == 1 && p.down_x == 2)
        return launch_tiled_for_plane<T, 1, 2>(p, stream);
    const size_t shared_bytes = sizeof(float) * p.filter_h * p.filter_w;
    upfirdn2d_kernel<T><<<grid_blocks(total, kBlockSize), kBlockSize, shared_bytes, stream>>>(p, total);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, Dtype dtype, cudaStream_t stream) {
    return dispatch_dtype(dtype, [&](auto element) { return launch<decltype(element)>(p, stream); });
}

}  // namespace sg2f
