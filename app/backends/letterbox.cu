// Letterbox + bilinear resize + BGR->RGB + /255 + HWC->NCHW in one pass, for the TensorRT backend.
//
// The output must equal the CPU path (app/letterbox.py: cv2.resize INTER_LINEAR into the ROI,
// pad 114, cv2.dnn.blobFromImage) bit for bit, so the resize below reproduces OpenCV's uint8 INTER_LINEAR
// arithmetic rather than textbook float bilinear:
//   * source coordinates in double, `(float)((d + 0.5) * scale - 0.5)` with scale = 1 / (dst / src), as
//     resize.cpp does; float coordinates move a weight by one step in 2048 now and then;
//   * weights quantised to 11 bits (cvRound(w * 2048)), horizontal pass in exact int arithmetic;
//   * the vertical pass the way OpenCV's SIMD loop (VResizeLinearVec_32s8u) rounds, which is what runs on
//     practically every pixel: ((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16), then (+2) >> 2;
//   * edges: x clamps index and weight (sx < 0 -> pixel 0 alone, sx >= w-1 -> pixel w-1 alone), y clamps
//     only the row index and keeps the unclamped weights (OpenCV treats the two axes differently).
// A 2x downscale, which OpenCV swaps for INTER_AREA, gives the same (a+b+c+d+2)>>2 through this path.
//
// The same file compiles as host C++ (g++ -x c++) so the test can run the real kernel body on the CPU and
// compare it to cv2; everything under `#ifndef __CUDACC__` exists only for that test.

#ifdef __CUDACC__
#include <cuda_fp16.h>
#else
// ---- host shim, CPU test only: enough of CUDA for the kernels below to run as plain functions ----
#include <cmath>
#include <cstddef>
#define __global__
#define __device__
#define __forceinline__ inline
struct HostDim3 {
    unsigned x, y, z;
};
// Set by the host launcher at the end of this file before each "thread" runs the kernel body.
static thread_local HostDim3 blockIdx, threadIdx, blockDim;
typedef _Float16 __half;  // g++ >= 12 on x86_64; converts float with round-to-nearest-even like __float2half_rn
static inline __half __float2half_rn(float v) { return static_cast<__half>(v); }
// CUDA's _rn intrinsics forbid FMA contraction; the test build passes -ffp-contract=off for the same effect.
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
#endif

namespace {

constexpr int kCoefBits = 11;  // OpenCV's INTER_RESIZE_COEF_BITS
constexpr float kCoefScale = static_cast<float>(1 << kCoefBits);
// float32(1/255): blobFromImage multiplies by it (not divides by 255), so pixels and pad match bit for bit.
constexpr float kInv255 = 1.0f / 255.0f;

struct Tap {
    int i0, i1;  // source indices (already clamped into range)
    int w0, w1;  // 11-bit fixed-point weights
};

// Source coordinate of destination index d, exactly as resize.cpp computes it: double math, one cast to float.
__device__ __forceinline__ float source_coord(int d, double scale) {
    return static_cast<float>(__dadd_rn(__dmul_rn(static_cast<double>(d) + 0.5, scale), -0.5));
}

__device__ __forceinline__ int clamp_index(int i, int n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

__device__ __forceinline__ Tap make_tap(float f, int s, int n) {
    // OpenCV's saturate_cast<short>(cbuf * INTER_RESIZE_COEF_SCALE) is cvRound: round half to even = rintf.
    float frac = f - static_cast<float>(s);
    Tap t;
    t.i0 = clamp_index(s, n);
    t.i1 = clamp_index(s + 1, n);
    t.w0 = static_cast<int>(rintf((1.0f - frac) * kCoefScale));
    t.w1 = static_cast<int>(rintf(frac * kCoefScale));
    return t;
}

// Horizontal tap: OpenCV drops to a single source pixel with weight 1 at both borders.
__device__ __forceinline__ Tap x_tap(int d, double scale, int n) {
    float f = source_coord(d, scale);
    int s = static_cast<int>(floorf(f));
    if (s < 0) {
        f = 0.0f;
        s = 0;
    }
    if (s >= n - 1) {
        f = static_cast<float>(n - 1);
        s = n - 1;
    }
    return make_tap(f, s, n);
}

// Vertical tap: OpenCV clamps only the row indices, the weights keep the raw fraction.
__device__ __forceinline__ Tap y_tap(int d, double scale, int n) {
    float f = source_coord(d, scale);
    return make_tap(f, static_cast<int>(floorf(f)), n);
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ void letterbox_body(const unsigned char* src, int src_h, int src_w, int src_pitch, T* dst,
                                               int dst_h, int dst_w, int top, int left, int new_h, int new_w,
                                               double scale_x, double scale_y, float pad) {
    const int x = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    const int y = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
    if (x >= dst_w || y >= dst_h) return;
    const size_t plane = static_cast<size_t>(dst_h) * dst_w;
    T* out = dst + static_cast<size_t>(y) * dst_w + x;

    const int rx = x - left, ry = y - top;
    if (rx < 0 || ry < 0 || rx >= new_w || ry >= new_h) {
        store(out, pad);
        store(out + plane, pad);
        store(out + 2 * plane, pad);
        return;
    }

    int bgr[3];
    if (new_w == src_w && new_h == src_h) {
        const unsigned char* p = src + static_cast<size_t>(ry) * src_pitch + 3 * rx;
        bgr[0] = p[0];
        bgr[1] = p[1];
        bgr[2] = p[2];
    } else {
        const Tap tx = x_tap(rx, scale_x, src_w);
        const Tap ty = y_tap(ry, scale_y, src_h);
        const unsigned char* r0 = src + static_cast<size_t>(ty.i0) * src_pitch;
        const unsigned char* r1 = src + static_cast<size_t>(ty.i1) * src_pitch;
        for (int c = 0; c < 3; ++c) {
            const int h0 = r0[3 * tx.i0 + c] * tx.w0 + r0[3 * tx.i1 + c] * tx.w1;
            const int h1 = r1[3 * tx.i0 + c] * tx.w0 + r1[3 * tx.i1 + c] * tx.w1;
            // v_mul_hi on (h >> 4) as int16, then v_rshr_pack_u<2>; all terms are non-negative.
            const int v = ((((h0 >> 4) * ty.w0) >> 16) + (((h1 >> 4) * ty.w1) >> 16) + 2) >> 2;
            bgr[c] = v > 255 ? 255 : v;
        }
    }
    store(out, static_cast<float>(bgr[2]) * kInv255);  // plane 0 is R
    store(out + plane, static_cast<float>(bgr[1]) * kInv255);
    store(out + 2 * plane, static_cast<float>(bgr[0]) * kInv255);
}

}  // namespace

// scale_x / scale_y are doubles on purpose: OpenCV maps coordinates in double, and float coordinates round some
// 11-bit weights the other way (e.g. 333x517 -> 412x640: one grey level off the CPU path on some pixels).
#define VIGIL_LETTERBOX_KERNEL(NAME, T)                                                                       \
    extern "C" __global__ void NAME(const unsigned char* src, int src_h, int src_w, int src_pitch, T* dst,    \
                                    int dst_h, int dst_w, int top, int left, int new_h, int new_w,             \
                                    double scale_x, double scale_y, float pad) {                               \
        letterbox_body<T>(src, src_h, src_w, src_pitch, dst, dst_h, dst_w, top, left, new_h, new_w, scale_x, \
                          scale_y, pad);                                                                      \
    }

VIGIL_LETTERBOX_KERNEL(letterbox_f32, float)
VIGIL_LETTERBOX_KERNEL(letterbox_f16, __half)

#ifndef __CUDACC__
// ---- host launcher, CPU test only: runs every (block, thread) of the grid the GPU wrapper would launch ----
#define VIGIL_LETTERBOX_HOST(NAME, KERNEL, T)                                                                   \
    extern "C" void NAME(const unsigned char* src, int src_h, int src_w, int src_pitch, T* dst, int dst_h,      \
                         int dst_w, int top, int left, int new_h, int new_w, double scale_x, double scale_y,    \
                         float pad, int grid_x, int grid_y, int block_x, int block_y) {                         \
        blockDim = {static_cast<unsigned>(block_x), static_cast<unsigned>(block_y), 1u};                        \
        for (int by = 0; by < grid_y; ++by)                                                                     \
            for (int bx = 0; bx < grid_x; ++bx)                                                                 \
                for (int ty = 0; ty < block_y; ++ty)                                                            \
                    for (int tx = 0; tx < block_x; ++tx) {                                                      \
                        blockIdx = {static_cast<unsigned>(bx), static_cast<unsigned>(by), 0u};                  \
                        threadIdx = {static_cast<unsigned>(tx), static_cast<unsigned>(ty), 0u};                 \
                        KERNEL(src, src_h, src_w, src_pitch, dst, dst_h, dst_w, top, left, new_h, new_w,        \
                               scale_x, scale_y, pad);                                                          \
                    }                                                                                           \
    }

VIGIL_LETTERBOX_HOST(launch_letterbox_f32_host, letterbox_f32, float)
VIGIL_LETTERBOX_HOST(launch_letterbox_f16_host, letterbox_f16, __half)
#endif
