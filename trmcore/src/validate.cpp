// Argument checks shared by the CPU and CUDA launchers (validate.h).
#include "validate.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace trmcore {
namespace detail {
namespace {

void require_pointer(const void* ptr, const char* launcher, const char* name) {
  if (ptr == nullptr) {
    throw std::invalid_argument(std::string(launcher) + ": `" + name + "` is a null pointer");
  }
}

void require_positive(int64_t value, const char* launcher, const char* name) {
  if (value <= 0) {
    throw std::invalid_argument(std::string(launcher) + ": `" + name + "` must be positive, got " +
                                std::to_string(value));
  }
}

void require_dtype(DType dtype, const char* launcher) {
  const int code = static_cast<int>(dtype);
  if (code < 0 || code > 2) {
    throw std::invalid_argument(std::string(launcher) + ": `dtype` must be 0 (float32), 1 (float16) or 2 "
                                "(bfloat16), got " + std::to_string(code));
  }
}

// Class counts are stored in 32-bit lanes by the kernels.
void require_class_count(int64_t value, const char* launcher, const char* name) {
  require_positive(value, launcher, name);
  if (value > (int64_t{1} << 24)) {
    throw std::invalid_argument(std::string(launcher) + ": `" + name + "` = " + std::to_string(value) +
                                " is too large (at most 2^24 classes)");
  }
}

void require_sizes(int64_t n, int64_t k, int64_t hw, const char* launcher) {
  if (n > 0 && k > 0 && hw > 0 &&
      (n > std::numeric_limits<int64_t>::max() / k || n * k > std::numeric_limits<int64_t>::max() / hw)) {
    throw std::invalid_argument(std::string(launcher) + ": n * classes * hw overflows int64");
  }
}

void require_threads(int num_threads, const char* launcher) {
  if (num_threads < 0) {
    throw std::invalid_argument(std::string(launcher) + ": `num_threads` must be >= 0 (0 = default), got " +
                                std::to_string(num_threads));
  }
}

// The fields every logits kernel shares: logits [n, classes, hw] of `dtype`,
// labels [n, hw], the thread count.
template <typename Params>
void require_logits_layout(const Params& p, int64_t classes, const char* classes_name, const char* launcher) {
  require_pointer(p.logits, launcher, "logits");
  require_pointer(p.labels, launcher, "labels");
  require_dtype(p.dtype, launcher);
  require_positive(p.n, launcher, "n");
  require_class_count(classes, launcher, classes_name);
  require_positive(p.hw, launcher, "hw");
  require_sizes(p.n, classes, p.hw, launcher);
  require_threads(p.num_threads, launcher);
}

}  // namespace

void validate(const LeepJointParams& p, const char* launcher) {
  require_logits_layout(p, p.z, "z", launcher);
  require_pointer(p.joint, launcher, "joint");
  require_pointer(p.status, launcher, "status");
  require_class_count(p.c, launcher, "c");
  if (p.c > std::numeric_limits<int64_t>::max() / p.z) {
    throw std::invalid_argument(std::string(launcher) + ": c * z overflows int64");
  }
}

void validate(const PixelLeepParams& p, const char* launcher) {
  require_logits_layout(p, p.z, "z", launcher);
  require_pointer(p.conditional, launcher, "conditional");
  require_pointer(p.out, launcher, "out");
  require_pointer(p.status, launcher, "status");
  require_class_count(p.c, launcher, "c");
  if (p.c * p.z >= (int64_t{1} << 31)) {
    throw std::invalid_argument(std::string(launcher) + ": c * z must be below 2^31");
  }
}

void validate(const RiskMapParams& p, const char* launcher) {
  require_pointer(p.leep_map, launcher, "leep_map");
  require_pointer(p.labels, launcher, "labels");
  require_pointer(p.risk, launcher, "risk");
  require_positive(p.n, launcher, "n");
  require_positive(p.hw, launcher, "hw");
  require_sizes(p.n, 1, p.hw, launcher);
  require_threads(p.num_threads, launcher);
  if (!(std::isfinite(p.base) && p.base > 0.0)) {
    throw std::invalid_argument(std::string(launcher) + ": `base` must be a positive finite number, got " +
                                std::to_string(p.base));
  }
  if (!(std::isfinite(p.eps) && p.eps >= 0.0)) {
    throw std::invalid_argument(std::string(launcher) + ": `eps` must be a finite number >= 0, got " +
                                std::to_string(p.eps));
  }
}

void validate(const RwceForwardParams& p, const char* launcher) {
  require_logits_layout(p, p.c, "c", launcher);
  require_pointer(p.weights, launcher, "weights");
  require_pointer(p.per_image, launcher, "per_image");
  require_pointer(p.status, launcher, "status");
}

void validate(const RwceBackwardParams& p, const char* launcher) {
  require_logits_layout(p, p.c, "c", launcher);
  require_pointer(p.weights, launcher, "weights");
  require_pointer(p.scale, launcher, "scale");
  require_pointer(p.grad, launcher, "grad");
}

void throw_invalid_argument(const char* message) { throw std::invalid_argument(message); }

void throw_cuda_error(const char* what, const char* message) {
  throw std::runtime_error(std::string("trmcore CUDA error in ") + what + ": " + message);
}

}  // namespace detail
}  // namespace trmcore
