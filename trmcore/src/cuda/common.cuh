// Shared device code of the CUDA kernels: dtype loads/stores, label
// classification, per-pixel softmax (registers for K <= kSmallClasses, re-reading
// passes otherwise), deterministic warp/block reductions and error checks.
//
// Determinism: no floating-point atomics anywhere. Integer counters use atomics
// (exact); floating sums go through per-thread accumulators in a fixed grid and
// fixed-shape shuffle/shared-memory trees, then ordered reductions over blocks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "trmcore/ops.h"
#include "../validate.h"

namespace trmcore {
namespace cuda {

constexpr int kThreads = 256;        // threads per block of the pixel kernels
constexpr int kSmallClasses = 8;     // class counts kept in registers

// Errors are thrown through validate.h's out-of-line helpers: see there why.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) detail::throw_cuda_error(what, cudaGetErrorString(err));
}

// Checks the launch that was just issued (configuration errors, earlier async faults).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
__device__ __forceinline__ float load_logit(const T* p);
template <>
__device__ __forceinline__ float load_logit<float>(const float* p) { return __ldg(p); }
template <>
__device__ __forceinline__ float load_logit<__half>(const __half* p) { return __half2float(*p); }
template <>
__device__ __forceinline__ float load_logit<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <typename T>
__device__ __forceinline__ T store_value(float v);
template <>
__device__ __forceinline__ float store_value<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half store_value<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 store_value<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Class index of a label, or -1 for ignored / out-of-range labels (never read).
__device__ __forceinline__ int classify_label(int64_t y, int64_t classes, int64_t ignore_index, int& valid,
                                              int& bad) {
  if (y == ignore_index) return -1;
  if (y < 0 || y >= classes) {
    ++bad;
    return -1;
  }
  ++valid;
  return static_cast<int>(y);
}

__device__ __forceinline__ int nonfinite(float v) { return isfinite(v) ? 0 : 1; }

// Softmax over the classes of one pixel (class stride hw).
// Small: e[k] = exp(x_k - max), inv_sum = 1 / sum_k e[k], all in registers.
template <typename T>
__device__ __forceinline__ void softmax_small(const T* src, int64_t hw, int K, float (&e)[kSmallClasses],
                                              float& row_max, float& inv_sum, int& bad_values) {
  float m = -INFINITY;
#pragma unroll
  for (int k = 0; k < kSmallClasses; ++k) {
    if (k < K) {
      e[k] = load_logit(src + k * hw);
      bad_values += nonfinite(e[k]);
      m = fmaxf(m, e[k]);
    }
  }
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < kSmallClasses; ++k) {
    if (k < K) {
      e[k] = expf(e[k] - m);
      s += e[k];
    }
  }
  row_max = m;
  inv_sum = 1.0f / s;
}

// Generic K: max and sum in two passes over the logits (cached re-reads); the
// caller recomputes exp(x_k - max) * inv_sum per class.
template <typename T>
__device__ __forceinline__ void softmax_stats(const T* src, int64_t hw, int K, float& row_max, float& inv_sum,
                                              int& bad_values) {
  float m = -INFINITY;
  for (int k = 0; k < K; ++k) {
    const float v = load_logit(src + k * hw);
    bad_values += nonfinite(v);
    m = fmaxf(m, v);
  }
  double s = 0.0;
  for (int k = 0; k < K; ++k) s += static_cast<double>(expf(load_logit(src + k * hw) - m));
  row_max = m;
  inv_sum = static_cast<float>(1.0 / s);
}

template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Adds per-thread integer counts into the status counters of ops.h (one atomic per warp).
__device__ __forceinline__ void add_status(int64_t* status, int valid, int bad, int bad_values,
                                           int nonfinite_weights = 0, int negative_weights = 0) {
  const unsigned long long v = warp_sum(static_cast<unsigned long long>(valid));
  const unsigned long long b = warp_sum(static_cast<unsigned long long>(bad));
  const unsigned long long f = warp_sum(static_cast<unsigned long long>(bad_values));
  const unsigned long long wf = warp_sum(static_cast<unsigned long long>(nonfinite_weights));
  const unsigned long long wn = warp_sum(static_cast<unsigned long long>(negative_weights));
  if ((threadIdx.x & 31) == 0) {
    auto* s = reinterpret_cast<unsigned long long*>(status);
    if (v) atomicAdd(s + kStatusValid, v);
    if (b) atomicAdd(s + kStatusBadLabels, b);
    if (f) atomicAdd(s + kStatusNonFinite, f);
    if (wf) atomicAdd(s + kStatusNonFiniteWeights, wf);
    if (wn) atomicAdd(s + kStatusNegativeWeights, wn);
  }
}

// Block-wide sum in a fixed order (shuffle tree per warp, then warp 0 over the
// warps). Every thread gets the result. `scratch` holds blockDim.x / 32 values.
template <typename V>
__device__ __forceinline__ V block_sum(V v, V* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  V total = V(0);
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < warps; ++w) m = fmaxf(m, scratch[w]);
  return m;
}

// Device scratch allocated on the stream and freed on it (stream-ordered).
class StreamBuffer {
 public:
  StreamBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
    check(cudaMallocAsync(&ptr_, bytes > 0 ? bytes : 1, stream), "cudaMallocAsync");
  }
  ~StreamBuffer() { cudaFreeAsync(ptr_, stream_); }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

// Runs fn(T{}) with T the device storage type of `dtype`.
template <typename Fn>
void with_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(float{}); return;
    case DType::kFloat16: fn(__half{}); return;
    case DType::kBFloat16: fn(__nv_bfloat16{}); return;
  }
  detail::throw_invalid_argument("trmcore: unknown dtype code");
}

}  // namespace cuda
}  // namespace trmcore
