// Transfer risk map on the GPU (SPEC section 3). min/max are exact, so integer
// atomics on an order-preserving encoding of the floats give deterministic extrema.
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "../validate.h"

namespace trmcore {
namespace cuda {
namespace {

// Monotonic map float -> uint32 (larger float, larger key); NaN sorts above +inf.
__device__ __forceinline__ unsigned int order_key(float f) {
  const unsigned int u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_order_key(unsigned int k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__global__ void init_extrema_kernel(unsigned int* lo, unsigned int* hi, int64_t count) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    lo[i] = 0xffffffffu;
    hi[i] = 0u;
  }
}

// grid.y = image; extrema slot = image (per image) or 0 (batch).
__global__ void extrema_kernel(const float* __restrict__ t, const int64_t* __restrict__ labels, int64_t hw,
                               int64_t ignore_index, bool per_image, unsigned int* lo, unsigned int* hi) {
  __shared__ unsigned int block_lo, block_hi;
  if (threadIdx.x == 0) {
    block_lo = 0xffffffffu;
    block_hi = 0u;
  }
  __syncthreads();
  const int64_t image = blockIdx.y;
  unsigned int my_lo = 0xffffffffu, my_hi = 0u;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < hw;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = image * hw + p;
    if (labels[g] != ignore_index) {
      const unsigned int key = order_key(t[g]);
      my_lo = min(my_lo, key);
      my_hi = max(my_hi, key);
    }
  }
  atomicMin(&block_lo, my_lo);
  atomicMax(&block_hi, my_hi);
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t slot = per_image ? image : 0;
    atomicMin(lo + slot, block_lo);
    atomicMax(hi + slot, block_hi);
  }
}

__global__ void risk_kernel(const float* __restrict__ t, const int64_t* __restrict__ labels, int64_t hw,
                            int64_t ignore_index, bool per_image, const unsigned int* lo, const unsigned int* hi,
                            double eps, float log_base, float* __restrict__ risk) {
  const int64_t image = blockIdx.y;
  const int64_t slot = per_image ? image : 0;
  const bool any_valid = lo[slot] <= hi[slot];
  const double top = any_valid ? static_cast<double>(from_order_key(hi[slot])) : 0.0;
  const double bottom = any_valid ? static_cast<double>(from_order_key(lo[slot])) : 0.0;
  const double inv_range = 1.0 / (top - bottom + eps);
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < hw;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = image * hw + p;
    float r = 0.0f;
    if (labels[g] != ignore_index) {
      const float scaled = static_cast<float>((top - static_cast<double>(t[g])) * inv_range);
      r = expf(scaled * log_base);
    }
    risk[g] = r;
  }
}

}  // namespace
}  // namespace cuda

void risk_map_cuda(const RiskMapParams& prm, void* stream_ptr) {
  using namespace cuda;
  detail::validate(prm, "risk_map_cuda");
  if (prm.n > 65535) detail::throw_invalid_argument("risk_map_cuda: at most 65535 images per call");
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t slots = prm.per_image ? prm.n : 1;
  StreamBuffer extrema(sizeof(unsigned int) * 2 * slots, stream);
  unsigned int* lo = extrema.as<unsigned int>();
  unsigned int* hi = lo + slots;
  init_extrema_kernel<<<static_cast<int>(std::min<int64_t>(ceil_div(slots, kThreads), 1024)), kThreads, 0, stream>>>(
      lo, hi, slots);
  check_launch("risk_map_cuda (init_extrema_kernel)");
  const dim3 grid(static_cast<unsigned int>(std::min<int64_t>(ceil_div(prm.hw, kThreads), 4096)),
                  static_cast<unsigned int>(prm.n));
  extrema_kernel<<<grid, kThreads, 0, stream>>>(prm.leep_map, prm.labels, prm.hw, prm.ignore_index, prm.per_image,
                                                 lo, hi);
  check_launch("risk_map_cuda (extrema_kernel)");
  risk_kernel<<<grid, kThreads, 0, stream>>>(prm.leep_map, prm.labels, prm.hw, prm.ignore_index, prm.per_image, lo,
                                              hi, prm.eps, static_cast<float>(std::log(prm.base)), prm.risk);
  check_launch("risk_map_cuda (risk_kernel)");
}

}  // namespace trmcore
