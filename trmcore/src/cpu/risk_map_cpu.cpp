// Transfer risk map on the CPU (SPEC section 3):
//   T' = (max T - T) / (max T - min T + eps),  R = base ** T',  0 at ignored pixels,
// with min/max over the valid pixels of each image (per_image) or of the batch.
// min/max are exact, so the result does not depend on the chunking at all.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "huge_pages.h"
#include "rows.h"
#include "trmcore/ops.h"
#include "../validate.h"

namespace trmcore {
namespace cpu = TRMCORE_CPU_ISA;  // baseline build only: the map is a cheap elementwise pass

void risk_map_cpu(const RiskMapParams& prm) {
  detail::validate(prm, "risk_map_cpu");
  cpu_memory::advise_huge_pages(prm.risk, static_cast<size_t>(prm.n * prm.hw) * sizeof(float));
  const int64_t hw = prm.hw;
  const int64_t chunks_per_image = cpu::ceil_div(hw, cpu::kChunkPixels);
  const int64_t num_chunks = prm.n * chunks_per_image;
  const int threads = cpu::thread_count(prm.num_threads);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::vector<float> chunk_min(static_cast<size_t>(num_chunks), kInf);
  std::vector<float> chunk_max(static_cast<size_t>(num_chunks), -kInf);

  // Pass 1: min/max of T over the valid pixels of each chunk.
  parallel::for_each_index(threads, num_chunks, [&](int64_t chunk) {
    const auto [image, begin, len] = cpu::image_chunk(chunk, chunks_per_image, hw);
    const float* __restrict t = prm.leep_map + image * hw + begin;
    const int64_t* __restrict y = prm.labels + image * hw + begin;
    float lo = kInf, hi = -kInf;
    for (int64_t p = 0; p < len; ++p) {
      const bool valid = y[p] != prm.ignore_index;
      const float v = t[p];
      lo = valid && v < lo ? v : lo;
      hi = valid && v > hi ? v : hi;
    }
    chunk_min[chunk] = lo;
    chunk_max[chunk] = hi;
  });

  // Per-image (or batch) extrema; an image without valid pixels keeps +inf/-inf
  // and produces only zeros below because all its pixels are ignored.
  std::vector<float> image_min(static_cast<size_t>(prm.n), kInf), image_max(static_cast<size_t>(prm.n), -kInf);
  for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
    const int64_t image = chunk / chunks_per_image;
    image_min[image] = std::min(image_min[image], chunk_min[chunk]);
    image_max[image] = std::max(image_max[image], chunk_max[chunk]);
  }
  if (!prm.per_image) {
    const float lo = *std::min_element(image_min.begin(), image_min.end());
    const float hi = *std::max_element(image_max.begin(), image_max.end());
    std::fill(image_min.begin(), image_min.end(), lo);
    std::fill(image_max.begin(), image_max.end(), hi);
  }

  // Pass 2: R = exp(T' * ln(base)).
  const float log_base = static_cast<float>(std::log(prm.base));
  parallel::for_each_index(threads, num_chunks, [&](int64_t chunk) {
    const auto [image, begin, len] = cpu::image_chunk(chunk, chunks_per_image, hw);
    const float* __restrict t = prm.leep_map + image * hw + begin;
    const int64_t* __restrict y = prm.labels + image * hw + begin;
    float* __restrict r = prm.risk + image * hw + begin;
    const double hi = image_max[image];
    const double range = hi - static_cast<double>(image_min[image]) + prm.eps;
    // No valid pixel: every output below is 0; keep the arithmetic finite anyway.
    const double inv_range = std::isfinite(range) && range > 0.0 ? 1.0 / range : 0.0;
    const double top = std::isfinite(hi) ? hi : 0.0;
    for (int64_t p = 0; p < len; ++p) {
      const float scaled = static_cast<float>((top - static_cast<double>(t[p])) * inv_range);
      const float risk = cpu::fast_exp(scaled * log_base);
      r[p] = y[p] != prm.ignore_index ? risk : 0.0f;
    }
  });
}

}  // namespace trmcore
