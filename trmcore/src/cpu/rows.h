// Shared machinery of the CPU kernels: fixed chunking (determinism), per-thread
// aligned scratch, dtype/class-count dispatch and the vectorisable row loops
// (load + convert, softmax over the class dimension for a row of pixels).
//
// Work is split into chunks of kChunkPixels pixels whose boundaries depend only
// on the problem size; every reduction first forms per-chunk partial sums and
// then adds the partials in chunk order, so results are bitwise identical for
// any thread count. Inside a chunk, pixels are processed kRowPixels at a time
// with the class index as the (small) outer loop and pixels as the inner,
// vectorised loop. Per-pixel float sums live in per-lane arrays (element-wise
// updates), never in reassociated horizontal reductions.
#pragma once
// Everything here lives in the namespace TRMCORE_CPU_ISA, which the build sets
// per instruction-set variant (cpu_baseline, cpu_avx2): the same inline code is
// compiled once per variant, and distinct namespaces keep the linker from
// merging an AVX2 copy into the baseline path (which would crash CPUs without AVX2).
#ifndef TRMCORE_CPU_ISA
#error "TRMCORE_CPU_ISA (the namespace of this instruction-set variant) must be defined"
#endif
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "trmcore/ops.h"
#include "numeric.h"
#include "parallel.h"

namespace trmcore {
namespace TRMCORE_CPU_ISA {

constexpr int kRowPixels = 64;          // pixels per vectorised row
constexpr int64_t kChunkPixels = 4096;  // pixels per deterministic chunk (multiple of kRowPixels)

inline int thread_count(int requested) { return requested > 0 ? requested : parallel::default_threads(); }

// 64-byte aligned heap array, allocated once per thread per call so that the
// vector loops see the same alignment in every thread.
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t count)
      : data_(static_cast<T*>(::operator new(std::max<size_t>(count, 1) * sizeof(T), std::align_val_t(64)))) {}
  ~AlignedBuffer() { ::operator delete(data_, std::align_val_t(64)); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* get() const { return data_; }

 private:
  T* data_;
};

// Storage types of the three logits dtypes and their float conversions.
struct Float32 {
  using storage = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
struct Float16 {
  using storage = uint16_t;
  static float load(uint16_t v) { return half_to_float(v); }
  static uint16_t store(float v) { return float_to_half(v); }
};
struct BFloat16 {
  using storage = uint16_t;
  static float load(uint16_t v) { return bf16_to_float(v); }
  static uint16_t store(float v) { return float_to_bf16(v); }
};

// Calls Kernel<D, KT>::run(params, args...) with D the dtype tag and KT the class
// count when it is 1..8 or 16 (KT = 0: generic, runtime count). 16 covers the
// common multi-class heads; each specialisation multiplies the compiled code.
template <template <typename, int> class Kernel, typename Params, typename... Args>
void dispatch(const Params& params, int64_t classes, Args&&... args) {
  auto by_classes = [&](auto tag) {
    using D = decltype(tag);
    switch (classes) {
      case 1: return Kernel<D, 1>::run(params, args...);
      case 2: return Kernel<D, 2>::run(params, args...);
      case 3: return Kernel<D, 3>::run(params, args...);
      case 4: return Kernel<D, 4>::run(params, args...);
      case 5: return Kernel<D, 5>::run(params, args...);
      case 6: return Kernel<D, 6>::run(params, args...);
      case 7: return Kernel<D, 7>::run(params, args...);
      case 8: return Kernel<D, 8>::run(params, args...);
      case 16: return Kernel<D, 16>::run(params, args...);
      default: return Kernel<D, 0>::run(params, args...);
    }
  };
  switch (params.dtype) {
    case DType::kFloat32: return by_classes(Float32{});
    case DType::kFloat16: return by_classes(Float16{});
    case DType::kBFloat16: return by_classes(BFloat16{});
  }
  throw std::invalid_argument("trmcore: unknown dtype code " + std::to_string(static_cast<int>(params.dtype)));
}

// Labels of one row as int32 class indices; -1 marks ignored and out-of-range
// labels (which are counted as bad and never used as an index).
struct LabelCounts {
  int64_t valid = 0;
  int64_t bad = 0;
};

// Reads each int64 label as two 32-bit halves (little-endian) so that the loop
// vectorises with SSE2, which has no 64-bit integer compares.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "trmcore's CPU kernels assume little-endian int64");
typedef int32_t aliasing_int32 __attribute__((may_alias));

inline void load_labels(const int64_t* __restrict labels, int len, int64_t classes, int64_t ignore_index,
                        int32_t* __restrict dst, LabelCounts& counts) {
  const aliasing_int32* __restrict half = reinterpret_cast<const aliasing_int32*>(labels);
  const int32_t ignore_lo = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(ignore_index)));
  const int32_t ignore_hi = static_cast<int32_t>(static_cast<uint64_t>(ignore_index) >> 32);
  const int32_t num_classes = static_cast<int32_t>(classes);  // <= 2^24, checked by the launchers
  int32_t valid = 0, bad = 0;
  for (int p = 0; p < len; ++p) {
    const int32_t lo = half[2 * p], hi = half[2 * p + 1];
    const int32_t ignored = (lo == ignore_lo) & (hi == ignore_hi);
    const int32_t ok = (hi == 0) & (lo >= 0) & (lo < num_classes) & (ignored ^ 1);
    dst[p] = ok ? lo : -1;
    valid += ok;
    bad += (ok | ignored) ^ 1;
  }
  counts.valid += valid;
  counts.bad += bad;
}

// Loads classes 0..K-1 of a row (class stride `hw`) into x[k * kRowPixels + p] as
// float, sets rowmax[p], and returns the number of non-finite logits.
template <typename D, int KT>
inline int64_t load_logits_row(const typename D::storage* __restrict src, int64_t hw, int classes, int len,
                               float* __restrict x, float* __restrict rowmax) {
  const int K = KT > 0 ? KT : classes;
  int64_t nonfinite = 0;
  for (int k = 0; k < K; ++k) {
    const typename D::storage* __restrict s = src + k * hw;
    float* __restrict xk = x + k * kRowPixels;
    int32_t bad = 0;
    for (int p = 0; p < len; ++p) {
      const float v = D::load(s[p]);
      xk[p] = v;
      bad += is_nonfinite(v);
    }
    nonfinite += bad;
  }
  for (int p = 0; p < len; ++p) rowmax[p] = x[p];
  for (int k = 1; k < K; ++k) {
    const float* __restrict xk = x + k * kRowPixels;
    for (int p = 0; p < len; ++p) rowmax[p] = xk[p] > rowmax[p] ? xk[p] : rowmax[p];
  }
  return nonfinite;
}

// In place: x[k][p] <- exp(x[k][p] - rowmax[p]); sum[p] <- sum_k of those.
// With a runtime class count (possibly hundreds) the sum runs in double so that
// its rounding error does not grow with K.
template <int KT>
inline void exp_shifted_row(int classes, int len, float* __restrict x, const float* __restrict rowmax,
                            float* __restrict sum) {
  if constexpr (KT > 0) {
    for (int p = 0; p < len; ++p) sum[p] = 0.0f;
    for (int k = 0; k < KT; ++k) {
      float* __restrict xk = x + k * kRowPixels;
      for (int p = 0; p < len; ++p) {
        const float e = fast_exp(xk[p] - rowmax[p]);
        xk[p] = e;
        sum[p] += e;
      }
    }
  } else {
    alignas(64) double wide[kRowPixels];
    for (int p = 0; p < len; ++p) wide[p] = 0.0;
    for (int k = 0; k < classes; ++k) {
      float* __restrict xk = x + k * kRowPixels;
      for (int p = 0; p < len; ++p) {
        const float e = fast_exp(xk[p] - rowmax[p]);
        xk[p] = e;
        wide[p] += static_cast<double>(e);
      }
    }
    for (int p = 0; p < len; ++p) sum[p] = static_cast<float>(wide[p]);
  }
}

// Visits the rows of flattened pixels [begin, end) of an [N, HW] layout; a row
// never crosses an image boundary. fn(image, pixel_offset, length).
template <typename Fn>
inline void for_each_row(int64_t begin, int64_t end, int64_t hw, Fn&& fn) {
  int64_t g = begin;
  while (g < end) {
    const int64_t image = g / hw;
    const int64_t pixel = g - image * hw;
    const int64_t len = std::min<int64_t>({static_cast<int64_t>(kRowPixels), end - g, hw - pixel});
    fn(image, pixel, static_cast<int>(len));
    g += len;
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Chunk `chunk` of an [N, HW] layout cut into ceil(HW / kChunkPixels) chunks per
// image, so that no chunk spans two images (per-image reductions). `begin` is
// the pixel offset within the image.
struct ImageChunk {
  int64_t image, begin, len;
};

inline ImageChunk image_chunk(int64_t chunk, int64_t chunks_per_image, int64_t hw) {
  const int64_t image = chunk / chunks_per_image;
  const int64_t begin = (chunk - image * chunks_per_image) * kChunkPixels;
  return {image, begin, std::min(hw - begin, kChunkPixels)};
}

// Fills every entry of a launcher's status array (ops.h).
inline void write_status(int64_t* status, int64_t valid, int64_t bad_labels, int64_t nonfinite,
                         int64_t nonfinite_weights = 0, int64_t negative_weights = 0) {
  status[kStatusValid] = valid;
  status[kStatusBadLabels] = bad_labels;
  status[kStatusNonFinite] = nonfinite;
  status[kStatusNonFiniteWeights] = nonfinite_weights;
  status[kStatusNegativeWeights] = negative_weights;
}

}  // namespace TRMCORE_CPU_ISA
}  // namespace trmcore
