// trmcore native core: launchers for pixel-level LEEP, the transfer risk map and
// the risk-weighted cross-entropy (SPEC sections 2-4).
//
// Everything here is torch-free: tensors arrive as raw pointers plus sizes, CUDA
// work runs on the stream the caller passes. Layouts are dense and row-major:
//   logits  [N, K, HW]  (K = Z source classes or C target classes), dtype `dtype`
//   labels  [N, HW]     int64; `ignore_index` marks pixels that take part in nothing
//   maps    [N, HW]     float32
// The *_cpu launchers take host pointers, the *_cuda launchers device pointers
// (outputs included). Launchers throw std::invalid_argument for bad sizes and
// std::runtime_error for CUDA failures; data problems (labels out of range,
// non-finite logits) are counted in `status` so the caller can raise a clear error.
#pragma once
#include <cstdint>

namespace trmcore {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// status[kStatusSize]: number of valid pixels, labels outside [0, C) that are not
// ignore_index, non-finite logits, and (rwce_forward only, 0 elsewhere) non-finite
// and negative weights. Overwritten by every launcher that takes it.
constexpr int kStatusValid = 0;
constexpr int kStatusBadLabels = 1;
constexpr int kStatusNonFinite = 2;
constexpr int kStatusNonFiniteWeights = 3;
constexpr int kStatusNegativeWeights = 4;
constexpr int kStatusSize = 5;

struct LeepJointParams {
  const void* logits = nullptr;  // [N, Z, HW]
  DType dtype = DType::kFloat32;
  const int64_t* labels = nullptr;  // [N, HW]
  int64_t n = 0, z = 0, hw = 0, c = 0;
  int64_t ignore_index = -100;
  double* joint = nullptr;    // out [C, Z]: sum of softmax(logits) over valid pixels with label y
  int64_t* status = nullptr;  // out [kStatusSize]
  int num_threads = 0;        // CPU only; 0 = default_num_threads()
};

struct PixelLeepParams {
  const void* logits = nullptr;  // [N, Z, HW]
  DType dtype = DType::kFloat32;
  const int64_t* labels = nullptr;     // [N, HW]
  const double* conditional = nullptr; // [C, Z]: P(y | z)
  int64_t n = 0, z = 0, hw = 0, c = 0;
  int64_t ignore_index = -100;
  float* out = nullptr;       // out [N, HW]: log(max(eep, FLT_MIN)); 0 at ignored/bad pixels
  int64_t* status = nullptr;  // out [kStatusSize]
  int num_threads = 0;
};

struct RiskMapParams {
  const float* leep_map = nullptr;  // [N, HW]
  const int64_t* labels = nullptr;  // [N, HW]
  int64_t n = 0, hw = 0;
  int64_t ignore_index = -100;
  double base = 10.0;
  double eps = 1e-8;
  bool per_image = true;  // false: min/max over the whole batch
  float* risk = nullptr;  // out [N, HW]: base ** ((max - T) / (max - min + eps)); 0 at ignored pixels
  int num_threads = 0;
};

struct RwceForwardParams {
  const void* logits = nullptr;  // [N, C, HW]
  DType dtype = DType::kFloat32;
  const int64_t* labels = nullptr;  // [N, HW]
  const float* weights = nullptr;   // [N, HW]
  int64_t n = 0, c = 0, hw = 0;
  int64_t ignore_index = -100;
  double* per_image = nullptr;  // out [N, 3]: sum_valid w*CE, #foreground (label not 0), #valid
  int64_t* status = nullptr;    // out [kStatusSize]
  int num_threads = 0;
};

struct RwceBackwardParams {
  const void* logits = nullptr;  // [N, C, HW]
  DType dtype = DType::kFloat32;
  const int64_t* labels = nullptr;  // [N, HW]
  const float* weights = nullptr;   // [N, HW]
  const float* scale = nullptr;     // [N]: per-image factor (grad_output / denominator)
  int64_t n = 0, c = 0, hw = 0;
  int64_t ignore_index = -100;
  void* grad = nullptr;  // out [N, C, HW], dtype `dtype`: scale[b] * w * (softmax - onehot(y)); 0 at ignored pixels
  int num_threads = 0;
};

void leep_joint_cpu(const LeepJointParams& p);
void pixel_leep_cpu(const PixelLeepParams& p);
void risk_map_cpu(const RiskMapParams& p);
void rwce_forward_cpu(const RwceForwardParams& p);
void rwce_backward_cpu(const RwceBackwardParams& p);

bool cuda_available();  // compiled with CUDA and a device is present
// Threads the CPU kernels use for num_threads = 0: OMP_NUM_THREADS when set to a
// positive number, else the CPUs this process may run on.
int default_num_threads();

// The instruction-set variant the CPU launchers use: "avx2" or "baseline".
const char* cpu_isa();
// Switch it: "baseline", "avx2" (std::invalid_argument if unavailable) or "auto".
void set_cpu_isa(const char* name);
#ifdef TRMCORE_WITH_CUDA
void leep_joint_cuda(const LeepJointParams& p, void* stream);
void pixel_leep_cuda(const PixelLeepParams& p, void* stream);
void risk_map_cuda(const RiskMapParams& p, void* stream);
void rwce_forward_cuda(const RwceForwardParams& p, void* stream);
void rwce_backward_cuda(const RwceBackwardParams& p, void* stream);
#endif

}  // namespace trmcore
