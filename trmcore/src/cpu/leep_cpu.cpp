// Pixel-level LEEP on the CPU (SPEC section 2): the unnormalised joint
// sum_{pixels with label y} softmax(logits)[z] and the per-pixel log EEP map.
// Compiled once per instruction-set variant (see kernels.h); the launchers that
// validate and choose a variant are in launch_cpu.cpp.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <vector>

#include "rows.h"
#include "kernels.h"
#include "trmcore/ops.h"

namespace trmcore {
namespace TRMCORE_CPU_ISA {
namespace {

// Target class counts up to this use the masked (vectorised) joint update.
constexpr int64_t kMaskedMaxTargetClasses = 8;
// Upper bound on the memory of per-chunk partial joints held at once.
constexpr int64_t kPartialBudgetBytes = int64_t{64} << 20;

template <typename D, int KT>
struct LeepJointKernel {
  static void run(const LeepJointParams& prm) {
    const int K = KT > 0 ? KT : static_cast<int>(prm.z);
    const int64_t C = prm.c;
    const int64_t CK = C * K;
    const int64_t hw = prm.hw;
    const int64_t total = prm.n * hw;
    const int64_t num_chunks = ceil_div(total, kChunkPixels);
    // Masked update: for each (y, z) lane arrays acc[y][z][p] += [label==y] * theta.
    const bool masked = KT > 0 && C <= kMaskedMaxTargetClasses;
    const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(num_chunks, kPartialBudgetBytes / (CK * 8)));
    std::vector<double> partials(static_cast<size_t>(slots * CK));
    std::fill(prm.joint, prm.joint + CK, 0.0);
    const auto* logits = static_cast<const typename D::storage*>(prm.logits);
    const int threads = thread_count(prm.num_threads);
    std::atomic<int64_t> total_valid{0}, total_bad{0}, total_nonfinite{0};

    for (int64_t wave = 0; wave < num_chunks; wave += slots) {
      const int64_t wave_chunks = std::min(slots, num_chunks - wave);
      parallel::for_each_worker(threads, wave_chunks, [&](parallel::IndexQueue& queue) {
        int64_t nonfinite = 0;
        AlignedBuffer<float> x(static_cast<size_t>(K) * kRowPixels);
        AlignedBuffer<float> rowmax(kRowPixels), sum(kRowPixels);
        AlignedBuffer<int32_t> label(kRowPixels);
        AlignedBuffer<double> acc(masked ? static_cast<size_t>(CK) * kRowPixels : 1);
        AlignedBuffer<float> xt_buf(masked ? 1 : static_cast<size_t>(K) * kRowPixels);
        LabelCounts counts;
        for (int64_t i; queue.next(i);) {
          double* __restrict out = partials.data() + i * CK;
          const int64_t begin = (wave + i) * kChunkPixels;
          const int64_t end = std::min(total, begin + kChunkPixels);
          if (masked) {
            std::fill(acc.get(), acc.get() + CK * kRowPixels, 0.0);
          } else {
            std::fill(out, out + CK, 0.0);
          }
          for_each_row(begin, end, hw, [&](int64_t image, int64_t pixel, int len) {
            const auto* src = logits + image * K * hw + pixel;
            float* __restrict xs = x.get();
            const float* __restrict s = sum.get();
            const int32_t* __restrict y = label.get();
            nonfinite += load_logits_row<D, KT>(src, hw, K, len, xs, rowmax.get());
            exp_shifted_row<KT>(K, len, xs, rowmax.get(), sum.get());
            load_labels(prm.labels + image * hw + pixel, len, C, prm.ignore_index, label.get(), counts);
            for (int p = 0; p < len; ++p) rowmax.get()[p] = 1.0f / s[p];  // reuse as 1/sum
            const float* __restrict inv = rowmax.get();
            for (int k = 0; k < K; ++k) {
              float* __restrict xk = xs + k * kRowPixels;
              for (int p = 0; p < len; ++p) xk[p] *= inv[p];  // theta
            }
            if (masked) {
              double* __restrict a = acc.get();
              for (int64_t c = 0; c < C; ++c) {
                for (int k = 0; k < K; ++k) {
                  const float* __restrict xk = xs + k * kRowPixels;
                  double* __restrict ack = a + (c * K + k) * kRowPixels;
                  const int32_t cc = static_cast<int32_t>(c);
                  for (int p = 0; p < len; ++p) {
                    const float v = xk[p];  // unconditional loads keep the select vectorisable
                    ack[p] += static_cast<double>(y[p] == cc ? v : 0.0f);
                  }
                }
              }
            } else {
              // Many target classes: transpose the row to pixel-major so that each
              // pixel adds one contiguous (vectorised) run of Z values into its
              // label's row of the joint.
              float* __restrict xt = xt_buf.get();
              for (int k = 0; k < K; ++k) {
                const float* __restrict xk = xs + k * kRowPixels;
                for (int p = 0; p < len; ++p) xt[p * K + k] = xk[p];
              }
              for (int p = 0; p < len; ++p) {
                if (y[p] < 0) continue;
                double* __restrict row = out + static_cast<int64_t>(y[p]) * K;
                const float* __restrict theta = xt + p * K;
                for (int k = 0; k < K; ++k) row[k] += static_cast<double>(theta[k]);
              }
            }
          });
          if (masked) {
            for (int64_t j = 0; j < CK; ++j) {
              const double* a = acc.get() + j * kRowPixels;
              double t = 0.0;
              for (int p = 0; p < kRowPixels; ++p) t += a[p];
              out[j] = t;
            }
          }
        }
        total_valid += counts.valid;
        total_bad += counts.bad;
        total_nonfinite += nonfinite;
      });
      // Ordered reduction of this wave's partials: chunk order, for any thread
      // count; blocks of kReduceBlock entries of the joint per task.
      double* joint = prm.joint;
      const double* part = partials.data();
      constexpr int64_t kReduceBlock = 1024;
      parallel::for_each_index(CK >= 4096 ? threads : 1, ceil_div(CK, kReduceBlock), [&](int64_t block) {
        const int64_t end = std::min(CK, (block + 1) * kReduceBlock);
        for (int64_t j = block * kReduceBlock; j < end; ++j) {
          double t = joint[j];
          for (int64_t i = 0; i < wave_chunks; ++i) t += part[i * CK + j];
          joint[j] = t;
        }
      });
    }
    write_status(prm.status, total_valid.load(), total_bad.load(), total_nonfinite.load());
  }
};

template <typename D, int KT>
struct PixelLeepKernel {
  static void run(const PixelLeepParams& prm, const float* cond) {
    const int K = KT > 0 ? KT : static_cast<int>(prm.z);
    const int64_t C = prm.c;
    const int64_t hw = prm.hw;
    const int64_t total = prm.n * hw;
    const int64_t num_chunks = ceil_div(total, kChunkPixels);
    const auto* logits = static_cast<const typename D::storage*>(prm.logits);
    const int threads = thread_count(prm.num_threads);
    // P(y | z) transposed to [Z, C] for the gathered lookup of many target classes.
    AlignedBuffer<float> transposed(static_cast<size_t>(K * C));
    for (int64_t c = 0; c < C; ++c) {
      for (int k = 0; k < K; ++k) transposed.get()[k * C + c] = cond[c * K + k];
    }
    const float* __restrict cond_t = transposed.get();
    std::atomic<int64_t> total_valid{0}, total_bad{0}, total_nonfinite{0};
    parallel::for_each_worker(threads, num_chunks, [&](parallel::IndexQueue& queue) {
      int64_t nonfinite = 0;
      AlignedBuffer<float> x(static_cast<size_t>(K) * kRowPixels);
      AlignedBuffer<float> rowmax(kRowPixels), sum(kRowPixels), num(kRowPixels);
      AlignedBuffer<int32_t> label(kRowPixels), offset(kRowPixels);
      LabelCounts counts;
      for (int64_t chunk; queue.next(chunk);) {
        const int64_t begin = chunk * kChunkPixels;
        const int64_t end = std::min(total, begin + kChunkPixels);
        for_each_row(begin, end, hw, [&](int64_t image, int64_t pixel, int len) {
          float* __restrict xs = x.get();
          const float* __restrict s = sum.get();
          float* __restrict eep = num.get();
          const int32_t* __restrict y = label.get();
          nonfinite += load_logits_row<D, KT>(logits + image * K * hw + pixel, hw, K, len, xs, rowmax.get());
          exp_shifted_row<KT>(K, len, xs, rowmax.get(), sum.get());
          load_labels(prm.labels + image * hw + pixel, len, C, prm.ignore_index, label.get(), counts);
          if (C <= kMaskedMaxTargetClasses) {
            // Vectorised: the dot product for every target class, kept where y == c.
            float* __restrict dot = rowmax.get();  // the row max is no longer needed
            for (int p = 0; p < len; ++p) eep[p] = 0.0f;
            for (int64_t c = 0; c < C; ++c) {
              for (int p = 0; p < len; ++p) dot[p] = 0.0f;
              for (int k = 0; k < K; ++k) {
                const float* __restrict xk = xs + k * kRowPixels;
                const float coef = cond[c * K + k];
                for (int p = 0; p < len; ++p) dot[p] += coef * xk[p];
              }
              const int32_t cc = static_cast<int32_t>(c);
              for (int p = 0; p < len; ++p) {
                const float d = dot[p], old = eep[p];
                eep[p] = y[p] == cc ? d : old;
              }
            }
          } else {
            // Many target classes: P(y_p | k) gathered per pixel (vgatherdps in the
            // AVX2 variant), pixels innermost; the same sum over k in order.
            int32_t* __restrict row = offset.get();
            for (int p = 0; p < len; ++p) row[p] = y[p] < 0 ? 0 : y[p];
            for (int p = 0; p < len; ++p) eep[p] = 0.0f;
            for (int k = 0; k < K; ++k) {
              const float* __restrict xk = xs + k * kRowPixels;
              const float* __restrict cond_k = cond_t + static_cast<int64_t>(k) * C;
              for (int p = 0; p < len; ++p) eep[p] += cond_k[row[p]] * xk[p];
            }
          }
          float* __restrict out = prm.out + image * hw + pixel;
          for (int p = 0; p < len; ++p) {
            float e = eep[p] / s[p];
            e = e < FLT_MIN ? FLT_MIN : e;
            const float log_eep = fast_log(e);
            out[p] = y[p] >= 0 ? log_eep : 0.0f;
          }
        });
      }
      total_valid += counts.valid;
      total_bad += counts.bad;
      total_nonfinite += nonfinite;
    });
    write_status(prm.status, total_valid.load(), total_bad.load(), total_nonfinite.load());
  }
};

}  // namespace

void leep_joint(const LeepJointParams& p) { dispatch<LeepJointKernel>(p, p.z); }

void pixel_leep(const PixelLeepParams& p, const float* cond) { dispatch<PixelLeepKernel>(p, p.z, cond); }

}  // namespace TRMCORE_CPU_ISA
}  // namespace trmcore
