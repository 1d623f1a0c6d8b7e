// pybind11 binding trmcore._C: fills the launcher params structs of
// trmcore/include/trmcore/ops.h from keyword arguments (pointers are Python ints
// holding addresses, dtype is the trmcore::DType code) and calls the CPU or CUDA
// launcher with the GIL released. The launchers check every field
// (trmcore/src/validate.h); this file only refuses CUDA calls to a CPU-only
// build. No computation happens here.
//
// Errors: std::invalid_argument -> ValueError, std::runtime_error -> RuntimeError
// (pybind11's built-in translation).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "trmcore/ops.h"

namespace py = pybind11;
using trmcore::DType;

namespace {

constexpr bool kBuiltWithCuda =
#ifdef TRMCORE_WITH_CUDA
    true;
#else
    false;
#endif

// Python passes addresses as integers; the launchers reject null pointers.
template <typename T>
T* address(std::uintptr_t value) {
  return reinterpret_cast<T*>(value);
}

void check_cuda(bool cuda, const char* kernel) {
  if (cuda && !kBuiltWithCuda) {
    throw std::invalid_argument(std::string(kernel) + ": trmcore was built without CUDA");
  }
}

// Runs the CPU or the CUDA launcher without the GIL.
template <typename Params, typename CpuFn, typename CudaFn>
void launch(const Params& params, bool cuda, std::uintptr_t stream, CpuFn cpu_fn, CudaFn cuda_fn) {
  py::gil_scoped_release release;
  if (cuda) {
    cuda_fn(params, reinterpret_cast<void*>(stream));
  } else {
    cpu_fn(params);
  }
}

#ifdef TRMCORE_WITH_CUDA
#define TRMCORE_CUDA_LAUNCHER(name) trmcore::name##_cuda
#else
#define TRMCORE_CUDA_LAUNCHER(name) [](const auto&, void*) { throw std::invalid_argument("trmcore was built without CUDA"); }
#endif

void leep_joint(std::uintptr_t logits, int dtype, std::uintptr_t labels, int64_t n, int64_t z, int64_t hw, int64_t c,
                int64_t ignore_index, std::uintptr_t joint, std::uintptr_t status, int num_threads, bool cuda,
                std::uintptr_t stream) {
  check_cuda(cuda, "leep_joint");
  trmcore::LeepJointParams p;
  p.logits = address<const void>(logits);
  p.dtype = static_cast<DType>(dtype);
  p.labels = address<const int64_t>(labels);
  p.n = n;
  p.z = z;
  p.hw = hw;
  p.c = c;
  p.ignore_index = ignore_index;
  p.joint = address<double>(joint);
  p.status = address<int64_t>(status);
  p.num_threads = num_threads;
  launch(p, cuda, stream, trmcore::leep_joint_cpu, TRMCORE_CUDA_LAUNCHER(leep_joint));
}

void pixel_leep(std::uintptr_t logits, int dtype, std::uintptr_t labels, std::uintptr_t conditional, int64_t n,
                int64_t z, int64_t hw, int64_t c, int64_t ignore_index, std::uintptr_t out, std::uintptr_t status,
                int num_threads, bool cuda, std::uintptr_t stream) {
  check_cuda(cuda, "pixel_leep");
  trmcore::PixelLeepParams p;
  p.logits = address<const void>(logits);
  p.dtype = static_cast<DType>(dtype);
  p.labels = address<const int64_t>(labels);
  p.conditional = address<const double>(conditional);
  p.n = n;
  p.z = z;
  p.hw = hw;
  p.c = c;
  p.ignore_index = ignore_index;
  p.out = address<float>(out);
  p.status = address<int64_t>(status);
  p.num_threads = num_threads;
  launch(p, cuda, stream, trmcore::pixel_leep_cpu, TRMCORE_CUDA_LAUNCHER(pixel_leep));
}

void risk_map(std::uintptr_t leep_map, std::uintptr_t labels, int64_t n, int64_t hw, int64_t ignore_index,
              double base, double eps, bool per_image, std::uintptr_t risk, int num_threads, bool cuda,
              std::uintptr_t stream) {
  check_cuda(cuda, "risk_map");
  trmcore::RiskMapParams p;
  p.leep_map = address<const float>(leep_map);
  p.labels = address<const int64_t>(labels);
  p.n = n;
  p.hw = hw;
  p.ignore_index = ignore_index;
  p.base = base;
  p.eps = eps;
  p.per_image = per_image;
  p.risk = address<float>(risk);
  p.num_threads = num_threads;
  launch(p, cuda, stream, trmcore::risk_map_cpu, TRMCORE_CUDA_LAUNCHER(risk_map));
}

void rwce_forward(std::uintptr_t logits, int dtype, std::uintptr_t labels, std::uintptr_t weights, int64_t n,
                  int64_t c, int64_t hw, int64_t ignore_index, std::uintptr_t per_image, std::uintptr_t status,
                  int num_threads, bool cuda, std::uintptr_t stream) {
  check_cuda(cuda, "rwce_forward");
  trmcore::RwceForwardParams p;
  p.logits = address<const void>(logits);
  p.dtype = static_cast<DType>(dtype);
  p.labels = address<const int64_t>(labels);
  p.weights = address<const float>(weights);
  p.n = n;
  p.c = c;
  p.hw = hw;
  p.ignore_index = ignore_index;
  p.per_image = address<double>(per_image);
  p.status = address<int64_t>(status);
  p.num_threads = num_threads;
  launch(p, cuda, stream, trmcore::rwce_forward_cpu, TRMCORE_CUDA_LAUNCHER(rwce_forward));
}

void rwce_backward(std::uintptr_t logits, int dtype, std::uintptr_t labels, std::uintptr_t weights,
                   std::uintptr_t scale, int64_t n, int64_t c, int64_t hw, int64_t ignore_index, std::uintptr_t grad,
                   int num_threads, bool cuda, std::uintptr_t stream) {
  check_cuda(cuda, "rwce_backward");
  trmcore::RwceBackwardParams p;
  p.logits = address<const void>(logits);
  p.dtype = static_cast<DType>(dtype);
  p.labels = address<const int64_t>(labels);
  p.weights = address<const float>(weights);
  p.scale = address<const float>(scale);
  p.n = n;
  p.c = c;
  p.hw = hw;
  p.ignore_index = ignore_index;
  p.grad = address<void>(grad);
  p.num_threads = num_threads;
  launch(p, cuda, stream, trmcore::rwce_backward_cpu, TRMCORE_CUDA_LAUNCHER(rwce_backward));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "trmcore native core: pixel-level LEEP, transfer risk map and risk-weighted cross-entropy launchers "
            "(CPU threads and CUDA). Pointers are integer addresses; see trmcore/include/trmcore/ops.h.";

  m.def("leep_joint", &leep_joint, py::kw_only(), py::arg("logits"), py::arg("dtype") = 0, py::arg("labels"),
        py::arg("n"), py::arg("z"), py::arg("hw"), py::arg("c"), py::arg("ignore_index") = -100, py::arg("joint"),
        py::arg("status"), py::arg("num_threads") = 0, py::arg("cuda") = false, py::arg("stream") = 0,
        "joint[C, Z] (float64) <- sum over valid pixels with label y of softmax(logits)[z]; status[5] (int64) <- "
        "(#valid, #bad labels, #non-finite logits, 0, 0).");
  m.def("pixel_leep", &pixel_leep, py::kw_only(), py::arg("logits"), py::arg("dtype") = 0, py::arg("labels"),
        py::arg("conditional"), py::arg("n"), py::arg("z"), py::arg("hw"), py::arg("c"),
        py::arg("ignore_index") = -100, py::arg("out"), py::arg("status"), py::arg("num_threads") = 0,
        py::arg("cuda") = false, py::arg("stream") = 0,
        "out[N, HW] (float32) <- log(max(sum_z P(y|z) softmax(logits)[z], FLT_MIN)), 0 at ignored pixels.");
  m.def("risk_map", &risk_map, py::kw_only(), py::arg("leep_map"), py::arg("labels"), py::arg("n"), py::arg("hw"),
        py::arg("ignore_index") = -100, py::arg("base") = 10.0, py::arg("eps") = 1e-8, py::arg("per_image") = true,
        py::arg("risk"), py::arg("num_threads") = 0, py::arg("cuda") = false, py::arg("stream") = 0,
        "risk[N, HW] (float32) <- base ** ((max T - T) / (max T - min T + eps)), 0 at ignored pixels.");
  m.def("rwce_forward", &rwce_forward, py::kw_only(), py::arg("logits"), py::arg("dtype") = 0, py::arg("labels"),
        py::arg("weights"), py::arg("n"), py::arg("c"), py::arg("hw"), py::arg("ignore_index") = -100,
        py::arg("per_image"), py::arg("status"), py::arg("num_threads") = 0, py::arg("cuda") = false,
        py::arg("stream") = 0,
        "per_image[N, 3] (float64) <- (sum_valid w * CE, #foreground, #valid); status[5] <- (#valid, #bad labels, "
        "#non-finite logits, #non-finite weights, #negative weights).");
  m.def("rwce_backward", &rwce_backward, py::kw_only(), py::arg("logits"), py::arg("dtype") = 0, py::arg("labels"),
        py::arg("weights"), py::arg("scale"), py::arg("n"), py::arg("c"), py::arg("hw"),
        py::arg("ignore_index") = -100, py::arg("grad"), py::arg("num_threads") = 0, py::arg("cuda") = false,
        py::arg("stream") = 0,
        "grad[N, C, HW] (logits dtype) <- scale[b] * w * (softmax(logits) - onehot(y)), 0 at ignored pixels.");
  m.def("built_with_cuda", []() { return kBuiltWithCuda; }, "Whether this build contains the CUDA kernels.");
  m.def("cuda_available", []() { return trmcore::cuda_available(); },
        "Whether this build contains the CUDA kernels and a CUDA device is usable.");
  m.def("default_num_threads", &trmcore::default_num_threads,
        "Threads the CPU kernels use when num_threads is 0 (OMP_NUM_THREADS, else the CPUs available).");
  m.def("cpu_isa", []() { return std::string(trmcore::cpu_isa()); },
        "Instruction-set variant of the CPU kernels in use: 'avx2' or 'baseline'.");
  m.def("set_cpu_isa", [](const std::string& name) { trmcore::set_cpu_isa(name.c_str()); }, py::arg("name"),
        "Use the 'baseline', 'avx2' or 'auto' variant of the CPU kernels (results are identical; for tests "
        "and benchmarks). The environment variable TRMCORE_CPU_ISA=baseline sets it at import.");
}
