// Risk-weighted cross-entropy on the GPU (SPEC section 4), deterministic: a fixed
// grid per image, fixed-tree block sums, ordered per-image reduction of the block
// partials. The backward reads the logits once and writes the gradient once
// (K <= kSmallClasses; larger K re-reads them from cache).
#include <algorithm>

#include "common.cuh"
#include "../validate.h"

namespace trmcore {
namespace cuda {
namespace {

constexpr int64_t kMaxBlocksPerImage = 64;

template <typename T, bool kSmall>
__global__ void rwce_forward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                                    const float* __restrict__ weights, int64_t hw, int K, int64_t ignore_index,
                                    double* __restrict__ part_loss, long long* __restrict__ part_fg,
                                    long long* __restrict__ part_valid, int64_t* __restrict__ status) {
  __shared__ double dscratch[32];
  __shared__ long long iscratch[32];
  const int64_t image = blockIdx.y;
  double loss = 0.0;
  int valid = 0, bad = 0, bad_values = 0, fg = 0, nonfinite_weights = 0, negative_weights = 0;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < hw;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = image * hw + p;
    // Weights are checked at every pixel, ignored ones included (as on the CPU).
    const float weight = weights[g];
    nonfinite_weights += !isfinite(weight);
    negative_weights += weight < 0.0f;
    const T* src = logits + image * K * hw + p;
    const int y = classify_label(labels[g], K, ignore_index, valid, bad);
    float m, inv;
    if (kSmall) {
      float e[kSmallClasses];
      softmax_small(src, hw, K, e, m, inv, bad_values);
      if (y >= 0) {
        // The true-class logit is re-read from L1 (the line was just loaded).
        // CE = -log softmax_y, computed as logsumexp - l_y = log(sum) + max - l_y.
        const float ce = -logf(inv) + m - load_logit(src + static_cast<int64_t>(y) * hw);
        loss += static_cast<double>(weight) * static_cast<double>(ce);
        fg += y != 0;
      }
    } else {
      softmax_stats(src, hw, K, m, inv, bad_values);
      if (y >= 0) {
        const float ce = -logf(inv) + m - load_logit(src + static_cast<int64_t>(y) * hw);
        loss += static_cast<double>(weight) * static_cast<double>(ce);
        fg += y != 0;
      }
    }
  }
  // valid pixels are counted from the partials
  add_status(status, 0, bad, bad_values, nonfinite_weights, negative_weights);
  const double block_loss = block_sum(loss, dscratch);
  const long long block_fg = block_sum(static_cast<long long>(fg), iscratch);
  const long long block_valid = block_sum(static_cast<long long>(valid), iscratch);
  if (threadIdx.x == 0) {
    const int64_t slot = image * gridDim.x + blockIdx.x;
    part_loss[slot] = block_loss;
    part_fg[slot] = block_fg;
    part_valid[slot] = block_valid;
  }
}

__global__ void rwce_finish_kernel(const double* __restrict__ part_loss, const long long* __restrict__ part_fg,
                                   const long long* __restrict__ part_valid, int64_t n, int64_t blocks,
                                   double* __restrict__ per_image, int64_t* __restrict__ status) {
  const int64_t image = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  long long valid = 0;
  if (image < n) {
    double loss = 0.0;
    long long fg = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      loss += part_loss[image * blocks + b];
      fg += part_fg[image * blocks + b];
      valid += part_valid[image * blocks + b];
    }
    per_image[image * 3 + 0] = loss;
    per_image[image * 3 + 1] = static_cast<double>(fg);
    per_image[image * 3 + 2] = static_cast<double>(valid);
  }
  const unsigned long long v = warp_sum(static_cast<unsigned long long>(valid));
  if ((threadIdx.x & 31) == 0 && v) atomicAdd(reinterpret_cast<unsigned long long*>(status) + kStatusValid, v);
}

template <typename T, bool kSmall>
__global__ void rwce_backward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                                     const float* __restrict__ weights, const float* __restrict__ scale,
                                     int64_t hw, int64_t total, int K, int64_t ignore_index, T* __restrict__ grad) {
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = g / hw, p = g - n * hw;
    const T* src = logits + n * K * hw + p;
    T* dst = grad + n * K * hw + p;
    int unused_valid = 0, unused_bad = 0, unused_values = 0;
    const int y = classify_label(labels[g], K, ignore_index, unused_valid, unused_bad);
    const float factor = y >= 0 ? scale[n] * weights[g] : 0.0f;
    float m, inv;
    if (kSmall) {
      float e[kSmallClasses];
      softmax_small(src, hw, K, e, m, inv, unused_values);
#pragma unroll
      for (int k = 0; k < kSmallClasses; ++k) {
        if (k < K) {
          const float gk = factor * (e[k] * inv - (k == y ? 1.0f : 0.0f));
          dst[k * hw] = store_value<T>(y >= 0 ? gk : 0.0f);
        }
      }
    } else {
      softmax_stats(src, hw, K, m, inv, unused_values);
      for (int k = 0; k < K; ++k) {
        const float theta = expf(load_logit(src + k * hw) - m) * inv;
        const float gk = factor * (theta - (k == y ? 1.0f : 0.0f));
        dst[k * hw] = store_value<T>(y >= 0 ? gk : 0.0f);
      }
    }
  }
}

}  // namespace
}  // namespace cuda

void rwce_forward_cuda(const RwceForwardParams& prm, void* stream_ptr) {
  using namespace cuda;
  detail::validate(prm, "rwce_forward_cuda");
  if (prm.n > 65535) detail::throw_invalid_argument("rwce_forward_cuda: at most 65535 images per call");
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int K = static_cast<int>(prm.c);
  // Blocks per image depend only on the image size: a fixed summation order.
  const int64_t blocks = std::max<int64_t>(1, std::min(kMaxBlocksPerImage, ceil_div(prm.hw, kThreads * 4)));
  const int64_t slots = prm.n * blocks;
  StreamBuffer scratch((sizeof(double) + 2 * sizeof(long long)) * slots, stream);
  double* part_loss = scratch.as<double>();
  auto* part_fg = reinterpret_cast<long long*>(part_loss + slots);
  long long* part_valid = part_fg + slots;
  check(cudaMemsetAsync(prm.status, 0, sizeof(int64_t) * kStatusSize, stream), "rwce_forward_cuda status reset");
  const dim3 grid(static_cast<unsigned int>(blocks), static_cast<unsigned int>(prm.n));
  with_dtype(prm.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* logits = static_cast<const T*>(prm.logits);
    if (K <= kSmallClasses) {
      rwce_forward_kernel<T, true><<<grid, kThreads, 0, stream>>>(logits, prm.labels, prm.weights, prm.hw, K,
                                                                   prm.ignore_index, part_loss, part_fg, part_valid,
                                                                   prm.status);
    } else {
      rwce_forward_kernel<T, false><<<grid, kThreads, 0, stream>>>(logits, prm.labels, prm.weights, prm.hw, K,
                                                                    prm.ignore_index, part_loss, part_fg, part_valid,
                                                                    prm.status);
    }
    check_launch("rwce_forward_cuda (rwce_forward_kernel)");
  });
  rwce_finish_kernel<<<static_cast<int>(ceil_div(prm.n, kThreads)), kThreads, 0, stream>>>(
      part_loss, part_fg, part_valid, prm.n, blocks, prm.per_image, prm.status);
  check_launch("rwce_forward_cuda (rwce_finish_kernel)");
}

void rwce_backward_cuda(const RwceBackwardParams& prm, void* stream_ptr) {
  using namespace cuda;
  detail::validate(prm, "rwce_backward_cuda");
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int K = static_cast<int>(prm.c);
  const int64_t total = prm.n * prm.hw;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(total, kThreads), int64_t{1} << 20));
  with_dtype(prm.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* logits = static_cast<const T*>(prm.logits);
    T* grad = static_cast<T*>(prm.grad);
    if (K <= kSmallClasses) {
      rwce_backward_kernel<T, true><<<blocks, kThreads, 0, stream>>>(logits, prm.labels, prm.weights, prm.scale,
                                                                      prm.hw, total, K, prm.ignore_index, grad);
    } else {
      rwce_backward_kernel<T, false><<<blocks, kThreads, 0, stream>>>(logits, prm.labels, prm.weights, prm.scale,
                                                                       prm.hw, total, K, prm.ignore_index, grad);
    }
    check_launch("rwce_backward_cuda");
  });
}

}  // namespace trmcore
