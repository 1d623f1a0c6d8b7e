// Risk-weighted cross-entropy on the CPU (SPEC section 4).
// Forward: per image (sum over valid pixels of w * CE, #foreground, #valid) with
// CE = logsumexp(l) - l[y]. Backward: scale[b] * w * (softmax(l) - onehot(y)).
// Compiled once per instruction-set variant (see kernels.h).
#include <algorithm>
#include <atomic>
#include <vector>

#include "rows.h"
#include "kernels.h"
#include "trmcore/ops.h"

namespace trmcore {
namespace TRMCORE_CPU_ISA {
namespace {

template <typename D, int KT>
struct RwceForwardKernel {
  static void run(const RwceForwardParams& prm) {
    const int K = KT > 0 ? KT : static_cast<int>(prm.c);
    const int64_t hw = prm.hw;
    // Chunks never span two images so that each partial belongs to one image.
    const int64_t chunks_per_image = ceil_div(hw, kChunkPixels);
    const int64_t num_chunks = prm.n * chunks_per_image;
    std::vector<double> chunk_loss(static_cast<size_t>(num_chunks));
    std::vector<int64_t> chunk_fg(static_cast<size_t>(num_chunks)), chunk_valid(static_cast<size_t>(num_chunks));
    const auto* logits = static_cast<const typename D::storage*>(prm.logits);
    const int threads = thread_count(prm.num_threads);
    std::atomic<int64_t> total_bad{0}, total_nonfinite{0}, total_nonfinite_weights{0}, total_negative_weights{0};
    parallel::for_each_worker(threads, num_chunks, [&](parallel::IndexQueue& queue) {
      int64_t bad = 0, nonfinite = 0, nonfinite_weights = 0, negative_weights = 0;
      AlignedBuffer<float> x(static_cast<size_t>(K) * kRowPixels);
      AlignedBuffer<float> rowmax(kRowPixels), sum(kRowPixels), picked(kRowPixels);
      AlignedBuffer<int32_t> label(kRowPixels);
      AlignedBuffer<double> acc(kRowPixels);
      for (int64_t chunk; queue.next(chunk);) {
        const ImageChunk part = image_chunk(chunk, chunks_per_image, hw);
        const int64_t begin = part.image * hw + part.begin;
        const int64_t end = begin + part.len;
        LabelCounts counts;
        int64_t foreground = 0;
        double* __restrict a = acc.get();
        for (int p = 0; p < kRowPixels; ++p) a[p] = 0.0;
        for_each_row(begin, end, hw, [&](int64_t img, int64_t pixel, int len) {
          float* __restrict xs = x.get();
          float* __restrict m = rowmax.get();
          float* __restrict s = sum.get();
          float* __restrict xy = picked.get();
          const int32_t* __restrict y = label.get();
          const float* __restrict w = prm.weights + img * hw + pixel;
          nonfinite += load_logits_row<D, KT>(logits + img * K * hw + pixel, hw, K, len, xs, m);
          load_labels(prm.labels + img * hw + pixel, len, K, prm.ignore_index, label.get(), counts);
          for (int p = 0; p < len; ++p) xy[p] = 0.0f;
          for (int k = 0; k < K; ++k) {
            const float* __restrict xk = xs + k * kRowPixels;
            for (int p = 0; p < len; ++p) {
              const float v = xk[p], old = xy[p];
              xy[p] = y[p] == k ? v : old;
            }
          }
          exp_shifted_row<KT>(K, len, xs, m, s);
          int32_t fg = 0, w_nonfinite = 0, w_negative = 0;
          for (int p = 0; p < len; ++p) {
            const float ce = fast_log(s[p]) - (xy[p] - m[p]);
            const double term = static_cast<double>(w[p]) * static_cast<double>(ce);
            a[p] += y[p] >= 0 ? term : 0.0;
            fg += y[p] > 0;
            // Weights are checked at every pixel, ignored ones included, so that a
            // corrupt weight map is reported whatever the labels.
            w_nonfinite += is_nonfinite(w[p]);
            w_negative += w[p] < 0.0f;
          }
          foreground += fg;
          nonfinite_weights += w_nonfinite;
          negative_weights += w_negative;
        });
        double t = 0.0;
        for (int p = 0; p < kRowPixels; ++p) t += a[p];
        chunk_loss[chunk] = t;
        chunk_fg[chunk] = foreground;
        chunk_valid[chunk] = counts.valid;
        bad += counts.bad;
      }
      total_bad += bad;
      total_nonfinite += nonfinite;
      total_nonfinite_weights += nonfinite_weights;
      total_negative_weights += negative_weights;
    });
    int64_t valid = 0;
    for (int64_t image = 0; image < prm.n; ++image) {
      double loss = 0.0;
      int64_t fg = 0, v = 0;
      for (int64_t j = 0; j < chunks_per_image; ++j) {
        const int64_t chunk = image * chunks_per_image + j;
        loss += chunk_loss[chunk];
        fg += chunk_fg[chunk];
        v += chunk_valid[chunk];
      }
      prm.per_image[image * 3 + 0] = loss;
      prm.per_image[image * 3 + 1] = static_cast<double>(fg);
      prm.per_image[image * 3 + 2] = static_cast<double>(v);
      valid += v;
    }
    write_status(prm.status, valid, total_bad.load(), total_nonfinite.load(), total_nonfinite_weights.load(),
                 total_negative_weights.load());
  }
};

template <typename D, int KT>
struct RwceBackwardKernel {
  static void run(const RwceBackwardParams& prm) {
    const int K = KT > 0 ? KT : static_cast<int>(prm.c);
    const int64_t hw = prm.hw;
    const int64_t total = prm.n * hw;
    const int64_t num_chunks = ceil_div(total, kChunkPixels);
    const auto* logits = static_cast<const typename D::storage*>(prm.logits);
    auto* grad = static_cast<typename D::storage*>(prm.grad);
    const int threads = thread_count(prm.num_threads);
    parallel::for_each_worker(threads, num_chunks, [&](parallel::IndexQueue& queue) {
      AlignedBuffer<float> x(static_cast<size_t>(K) * kRowPixels);
      AlignedBuffer<float> rowmax(kRowPixels), sum(kRowPixels);
      AlignedBuffer<int32_t> label(kRowPixels);
      LabelCounts counts;  // unused: the forward pass reports label problems
      for (int64_t chunk; queue.next(chunk);) {
        const int64_t begin = chunk * kChunkPixels;
        const int64_t end = std::min(total, begin + kChunkPixels);
        for_each_row(begin, end, hw, [&](int64_t image, int64_t pixel, int len) {
          float* __restrict xs = x.get();
          float* __restrict m = rowmax.get();
          float* __restrict s = sum.get();
          const int32_t* __restrict y = label.get();
          const float* __restrict w = prm.weights + image * hw + pixel;
          const float scale = prm.scale[image];
          load_logits_row<D, KT>(logits + image * K * hw + pixel, hw, K, len, xs, m);
          load_labels(prm.labels + image * hw + pixel, len, K, prm.ignore_index, label.get(), counts);
          exp_shifted_row<KT>(K, len, xs, m, s);
          // m becomes the per-pixel factor scale * w / sum (0 where ignored).
          for (int p = 0; p < len; ++p) {
            const float factor = scale * w[p];
            m[p] = y[p] >= 0 ? factor : 0.0f;
          }
          for (int p = 0; p < len; ++p) s[p] = 1.0f / s[p];
          typename D::storage* dst = grad + image * K * hw + pixel;
          for (int k = 0; k < K; ++k) {
            const float* __restrict xk = xs + k * kRowPixels;
            typename D::storage* __restrict gk = dst + k * hw;
            for (int p = 0; p < len; ++p) {
              const float onehot = y[p] == k ? 1.0f : 0.0f;
              const float g = m[p] * (xk[p] * s[p] - onehot);
              gk[p] = D::store(y[p] >= 0 ? g : 0.0f);
            }
          }
        });
      }
    });
  }
};

}  // namespace

void rwce_forward(const RwceForwardParams& p) { dispatch<RwceForwardKernel>(p, p.c); }

void rwce_backward(const RwceBackwardParams& p) { dispatch<RwceBackwardKernel>(p, p.c); }

}  // namespace TRMCORE_CPU_ISA
}  // namespace trmcore
