// Pixel-level LEEP on the GPU (SPEC section 2), deterministic:
//  - small C*Z: a fixed grid; each thread sums softmax values of its pixels
//    (grid-stride, fixed order) into its own shared-memory column, the block folds
//    the columns with a fixed tree, blocks write partials, an ordered reduction
//    (one warp per joint entry, fixed shuffle tree) produces the joint;
//  - any C*Z: each block walks a fixed pixel range in order; the threads split
//    the source classes, so every joint entry of the block has one owner thread.
#include <algorithm>

#include "common.cuh"
#include "../validate.h"

namespace trmcore {
namespace cuda {
namespace {

constexpr int64_t kSharedJointEntries = 24;  // C*Z held per thread in shared memory (48 KiB)
constexpr int64_t kMaxJointBlocks = 512;
constexpr int64_t kPartialBudgetBytes = int64_t{64} << 20;

template <typename T, bool kSmall>
__global__ void joint_shared_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels, int64_t hw,
                                    int64_t total, int K, int64_t C, int64_t ignore_index,
                                    double* __restrict__ partials, int64_t* __restrict__ status) {
  extern __shared__ double acc[];  // [C*K][blockDim.x]
  const int CK = static_cast<int>(C) * K;
  const int t = threadIdx.x, B = blockDim.x;
  for (int j = 0; j < CK; ++j) acc[j * B + t] = 0.0;
  int valid = 0, bad = 0, bad_values = 0;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * B + t; g < total; g += static_cast<int64_t>(gridDim.x) * B) {
    const int64_t n = g / hw, p = g - n * hw;
    const T* src = logits + n * K * hw + p;
    const int y = classify_label(labels[g], C, ignore_index, valid, bad);
    if (kSmall) {
      float e[kSmallClasses], m, inv;
      softmax_small(src, hw, K, e, m, inv, bad_values);
      if (y >= 0) {
#pragma unroll
        for (int k = 0; k < kSmallClasses; ++k) {
          if (k < K) acc[(y * K + k) * B + t] += static_cast<double>(e[k] * inv);
        }
      }
    } else {
      float m, inv;
      softmax_stats(src, hw, K, m, inv, bad_values);
      if (y >= 0) {
        for (int k = 0; k < K; ++k) {
          acc[(y * K + k) * B + t] += static_cast<double>(expf(load_logit(src + k * hw) - m) * inv);
        }
      }
    }
  }
  add_status(status, valid, bad, bad_values);
  __syncthreads();
  for (int stride = B / 2; stride > 0; stride >>= 1) {  // B is a power of two
    if (t < stride) {
      for (int j = 0; j < CK; ++j) acc[j * B + t] += acc[j * B + t + stride];
    }
    __syncthreads();
  }
  if (t == 0) {
    for (int j = 0; j < CK; ++j) partials[static_cast<int64_t>(blockIdx.x) * CK + j] = acc[j * B];
  }
}

// One block per fixed range of pixels, visited in order; thread t owns the
// source classes k = t, t + B, ... and so the joint entries (y, k) for every y.
template <typename T>
__global__ void joint_generic_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels, int64_t hw,
                                     int64_t total, int K, int64_t C, int64_t ignore_index, int64_t pixels_per_block,
                                     double* __restrict__ partials, int64_t* __restrict__ status) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  const int t = threadIdx.x, B = blockDim.x;
  double* part = partials + static_cast<int64_t>(blockIdx.x) * C * K;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * pixels_per_block;
  const int64_t end = min(total, begin + pixels_per_block);
  int valid = 0, bad = 0, bad_values = 0;
  for (int64_t g = begin; g < end; ++g) {
    const int64_t n = g / hw, p = g - n * hw;
    const T* src = logits + n * K * hw + p;
    int v_dummy = 0, b_dummy = 0;
    const int y = t == 0 ? classify_label(labels[g], C, ignore_index, valid, bad)
                         : classify_label(labels[g], C, ignore_index, v_dummy, b_dummy);
    float m = -INFINITY;
    for (int k = t; k < K; k += B) {
      const float v = load_logit(src + k * hw);
      bad_values += nonfinite(v);
      m = fmaxf(m, v);
    }
    if (y < 0) continue;  // uniform across the block
    m = block_max(m, fscratch);
    double s = 0.0;
    for (int k = t; k < K; k += B) s += static_cast<double>(expf(load_logit(src + k * hw) - m));
    s = block_sum(s, dscratch);
    const float inv = static_cast<float>(1.0 / s);
    for (int k = t; k < K; k += B) {
      part[static_cast<int64_t>(y) * K + k] += static_cast<double>(expf(load_logit(src + k * hw) - m) * inv);
    }
  }
  add_status(status, valid, bad, bad_values);
}

// joint[j] = sum over blocks b (fixed order per lane, fixed shuffle tree) of partials[b][j].
__global__ void reduce_partials_kernel(const double* __restrict__ partials, int64_t blocks, int64_t entries,
                                       double* __restrict__ joint) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (j >= entries) return;
  double s = 0.0;
  for (int64_t b = lane; b < blocks; b += 32) s += partials[b * entries + j];
  s = warp_sum(s);
  if (lane == 0) joint[j] = s;
}

template <typename T, bool kSmall>
__global__ void pixel_leep_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                                  const double* __restrict__ cond, int64_t hw, int64_t total, int K, int64_t C,
                                  int64_t ignore_index, float* __restrict__ out, int64_t* __restrict__ status) {
  int valid = 0, bad = 0, bad_values = 0;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = g / hw, p = g - n * hw;
    const T* src = logits + n * K * hw + p;
    const int y = classify_label(labels[g], C, ignore_index, valid, bad);
    const double* row = cond + static_cast<int64_t>(y < 0 ? 0 : y) * K;
    float eep = 0.0f;
    if (kSmall) {
      float e[kSmallClasses], m, inv;
      softmax_small(src, hw, K, e, m, inv, bad_values);
#pragma unroll
      for (int k = 0; k < kSmallClasses; ++k) {
        if (k < K) eep += static_cast<float>(row[k]) * e[k];
      }
      eep *= inv;
    } else {
      float m, inv;
      softmax_stats(src, hw, K, m, inv, bad_values);
      for (int k = 0; k < K; ++k) eep += static_cast<float>(row[k]) * expf(load_logit(src + k * hw) - m);
      eep *= inv;
    }
    out[g] = y >= 0 ? logf(fmaxf(eep, 1.17549435e-38f)) : 0.0f;
  }
  add_status(status, valid, bad, bad_values);
}

int elementwise_blocks(int64_t total) {
  return static_cast<int>(std::min<int64_t>(ceil_div(total, kThreads), int64_t{1} << 20));
}

}  // namespace
}  // namespace cuda

void leep_joint_cuda(const LeepJointParams& prm, void* stream_ptr) {
  using namespace cuda;
  detail::validate(prm, "leep_joint_cuda");
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int K = static_cast<int>(prm.z);
  const int64_t CK = prm.c * prm.z;
  const int64_t total = prm.n * prm.hw;
  check(cudaMemsetAsync(prm.status, 0, sizeof(int64_t) * kStatusSize, stream), "leep_joint_cuda status reset");
  with_dtype(prm.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* logits = static_cast<const T*>(prm.logits);
    int64_t blocks;
    if (CK <= kSharedJointEntries) {
      // The grid depends only on the problem size, so the summation order does too.
      blocks = std::max<int64_t>(1, std::min(kMaxJointBlocks, ceil_div(total, kThreads * 8)));
      StreamBuffer partials(sizeof(double) * blocks * CK, stream);
      const size_t shared = sizeof(double) * CK * kThreads;
      if (K <= kSmallClasses) {
        joint_shared_kernel<T, true><<<static_cast<int>(blocks), kThreads, shared, stream>>>(
            logits, prm.labels, prm.hw, total, K, prm.c, prm.ignore_index, partials.as<double>(), prm.status);
      } else {
        joint_shared_kernel<T, false><<<static_cast<int>(blocks), kThreads, shared, stream>>>(
            logits, prm.labels, prm.hw, total, K, prm.c, prm.ignore_index, partials.as<double>(), prm.status);
      }
      check_launch("leep_joint_cuda (joint_shared_kernel)");
      reduce_partials_kernel<<<static_cast<int>(ceil_div(CK, kThreads / 32)), kThreads, 0, stream>>>(
          partials.as<double>(), blocks, CK, prm.joint);
      check_launch("leep_joint_cuda (reduce_partials_kernel)");
    } else {
      const int64_t max_blocks =
          std::max<int64_t>(1, std::min(kMaxJointBlocks * 2, kPartialBudgetBytes / (CK * int64_t{8})));
      const int64_t pixels_per_block = std::max<int64_t>(1, ceil_div(total, max_blocks));
      blocks = ceil_div(total, pixels_per_block);
      StreamBuffer partials(sizeof(double) * blocks * CK, stream);
      check(cudaMemsetAsync(partials.as<double>(), 0, sizeof(double) * blocks * CK, stream),
            "leep_joint_cuda partials reset");
      const int threads = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(K, 32) * 32));
      joint_generic_kernel<T><<<static_cast<int>(blocks), threads, 0, stream>>>(
          logits, prm.labels, prm.hw, total, K, prm.c, prm.ignore_index, pixels_per_block, partials.as<double>(),
          prm.status);
      check_launch("leep_joint_cuda (joint_generic_kernel)");
      reduce_partials_kernel<<<static_cast<int>(ceil_div(CK, kThreads / 32)), kThreads, 0, stream>>>(
          partials.as<double>(), blocks, CK, prm.joint);
      check_launch("leep_joint_cuda (reduce_partials_kernel)");
    }
  });
}

void pixel_leep_cuda(const PixelLeepParams& prm, void* stream_ptr) {
  using namespace cuda;
  detail::validate(prm, "pixel_leep_cuda");
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int K = static_cast<int>(prm.z);
  const int64_t total = prm.n * prm.hw;
  check(cudaMemsetAsync(prm.status, 0, sizeof(int64_t) * kStatusSize, stream), "pixel_leep_cuda status reset");
  with_dtype(prm.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* logits = static_cast<const T*>(prm.logits);
    const int blocks = elementwise_blocks(total);
    if (K <= kSmallClasses) {
      pixel_leep_kernel<T, true><<<blocks, kThreads, 0, stream>>>(logits, prm.labels, prm.conditional, prm.hw, total,
                                                                   K, prm.c, prm.ignore_index, prm.out, prm.status);
    } else {
      pixel_leep_kernel<T, false><<<blocks, kThreads, 0, stream>>>(
          logits, prm.labels, prm.conditional, prm.hw, total, K, prm.c, prm.ignore_index, prm.out, prm.status);
    }
    check_launch("pixel_leep_cuda");
  });
}

}  // namespace trmcore
