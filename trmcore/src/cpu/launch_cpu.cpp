// The public CPU launchers of ops.h: validate the params, then run the kernels of
// the best instruction-set variant this CPU supports (kernels.h). The variant is
// chosen once: AVX2 when the build has it and the CPU (and OS) support it,
// unless the environment variable TRMCORE_CPU_ISA=baseline asks for the x86-64
// baseline; set_cpu_isa() switches it at run time (used by the tests, which
// check that both variants agree bit for bit).
#if defined(TRMCORE_HAVE_AVX2_KERNELS)
#include <cpuid.h>
#endif
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "huge_pages.h"
#include "kernels.h"
#include "trmcore/ops.h"
#include "../validate.h"

namespace trmcore {
namespace {

enum class Isa : int { kBaseline = 0, kAvx2 = 1 };

// CPUID and XGETBV directly rather than __builtin_cpu_supports: the latter relies
// on the compiler runtime's __cpu_model, which zig's compiler-rt (the wheel
// build, docs/packaging.md) leaves unset, so AVX2 was never chosen there.
bool cpu_has_avx2() {
#if defined(TRMCORE_HAVE_AVX2_KERNELS)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const bool osxsave = (ecx >> 27) & 1u, avx = (ecx >> 28) & 1u;
  if (!osxsave || !avx) return false;
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0x6u) != 0x6u) return false;  // the OS saves the XMM and YMM registers
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  return (ebx >> 5) & 1u;  // CPUID.(EAX=7,ECX=0):EBX.AVX2[bit 5]
#else
  return false;
#endif
}

Isa default_isa() {
  const char* requested = std::getenv("TRMCORE_CPU_ISA");
  if (requested != nullptr && std::strcmp(requested, "baseline") == 0) return Isa::kBaseline;
  return cpu_has_avx2() ? Isa::kAvx2 : Isa::kBaseline;
}

std::atomic<int>& current_isa() {
  static std::atomic<int> isa{static_cast<int>(default_isa())};
  return isa;
}

bool use_avx2() { return current_isa().load(std::memory_order_relaxed) == static_cast<int>(Isa::kAvx2); }

}  // namespace

#if defined(TRMCORE_HAVE_AVX2_KERNELS)
#define TRMCORE_CPU_CALL(fn, ...) (use_avx2() ? cpu_avx2::fn(__VA_ARGS__) : cpu_baseline::fn(__VA_ARGS__))
#else
#define TRMCORE_CPU_CALL(fn, ...) cpu_baseline::fn(__VA_ARGS__)
#endif

const char* cpu_isa() { return use_avx2() ? "avx2" : "baseline"; }

void set_cpu_isa(const char* name) {
  const std::string isa = name == nullptr ? "" : name;
  if (isa == "baseline") {
    current_isa().store(static_cast<int>(Isa::kBaseline));
  } else if (isa == "avx2") {
    if (!cpu_has_avx2()) {
      throw std::invalid_argument("set_cpu_isa: avx2 kernels are not available (not built, or the CPU lacks AVX2)");
    }
    current_isa().store(static_cast<int>(Isa::kAvx2));
  } else if (isa == "auto") {
    current_isa().store(static_cast<int>(cpu_has_avx2() ? Isa::kAvx2 : Isa::kBaseline));
  } else {
    throw std::invalid_argument("set_cpu_isa: expected 'baseline', 'avx2' or 'auto', got '" + isa + "'");
  }
}

void leep_joint_cpu(const LeepJointParams& p) {
  detail::validate(p, "leep_joint_cpu");
  TRMCORE_CPU_CALL(leep_joint, p);
}

void pixel_leep_cpu(const PixelLeepParams& p) {
  detail::validate(p, "pixel_leep_cpu");
  // P(y | z) as float in the [C, Z] layout; products with theta are float32.
  std::vector<float> cond(static_cast<size_t>(p.c * p.z));
  for (size_t i = 0; i < cond.size(); ++i) cond[i] = static_cast<float>(p.conditional[i]);
  cpu_memory::advise_huge_pages(p.out, static_cast<size_t>(p.n * p.hw) * sizeof(float));
  TRMCORE_CPU_CALL(pixel_leep, p, static_cast<const float*>(cond.data()));
}

void rwce_forward_cpu(const RwceForwardParams& p) {
  detail::validate(p, "rwce_forward_cpu");
  TRMCORE_CPU_CALL(rwce_forward, p);
}

void rwce_backward_cpu(const RwceBackwardParams& p) {
  detail::validate(p, "rwce_backward_cpu");
  const size_t element = p.dtype == DType::kFloat32 ? sizeof(float) : sizeof(uint16_t);
  cpu_memory::advise_huge_pages(p.grad, static_cast<size_t>(p.n * p.c * p.hw) * element);
  TRMCORE_CPU_CALL(rwce_backward, p);
}

#undef TRMCORE_CPU_CALL

}  // namespace trmcore
