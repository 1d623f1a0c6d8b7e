// Entry points of the CPU kernels, compiled once per instruction-set variant:
// cpu_baseline (x86-64 baseline, SSE2) and, on x86-64 with GCC or Clang, cpu_avx2
// (the same source built with -mavx2). launch_cpu.cpp picks one at run time.
// Both variants perform the same IEEE operations in the same order (no FMA
// contraction), so they return bitwise identical results.
#pragma once
#include "trmcore/ops.h"

namespace trmcore {

#define TRMCORE_DECLARE_CPU_KERNELS(isa)                                  \
  namespace isa {                                                         \
  void leep_joint(const LeepJointParams& p);                              \
  /* cond: P(y|z) as float32 [C, Z] */                                    \
  void pixel_leep(const PixelLeepParams& p, const float* cond);           \
  void rwce_forward(const RwceForwardParams& p);                          \
  void rwce_backward(const RwceBackwardParams& p);                        \
  }

TRMCORE_DECLARE_CPU_KERNELS(cpu_baseline)
#ifdef TRMCORE_HAVE_AVX2_KERNELS
TRMCORE_DECLARE_CPU_KERNELS(cpu_avx2)
#endif

#undef TRMCORE_DECLARE_CPU_KERNELS

}  // namespace trmcore
