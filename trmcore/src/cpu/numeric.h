// Scalar numerics written so that GCC/Clang auto-vectorise loops that call them
// on baseline x86-64 (SSE2): branch-free half/bfloat16 conversions and
// Cephes-style expf/logf (about 1 ulp) built from +, *, compares and bit casts.
// No -ffast-math is needed, so results are IEEE-exact functions of the inputs
// whether a lane runs in a vector or in the scalar epilogue.
#pragma once
// Everything here lives in the namespace TRMCORE_CPU_ISA, which the build sets
// per instruction-set variant (cpu_baseline, cpu_avx2): the same inline code is
// compiled once per variant, and distinct namespaces keep the linker from
// merging an AVX2 copy into the baseline path (which would crash CPUs without AVX2).
#ifndef TRMCORE_CPU_ISA
#error "TRMCORE_CPU_ISA (the namespace of this instruction-set variant) must be defined"
#endif
#include <cstdint>
#include <cstring>

namespace trmcore {
namespace TRMCORE_CPU_ISA {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// IEEE binary16 -> float, exact for every input (subnormals, inf, NaN).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t magnitude = static_cast<uint32_t>(h) & 0x7fffu;
  // Shifting exponent and mantissa into float position and scaling by 2^112
  // rebiases the exponent (15 -> 127) and normalises half subnormals.
  const float finite = bits_to_float(magnitude << 13) * bits_to_float(0x77800000u);  // 2^112
  const uint32_t special = 0x7f800000u | ((magnitude & 0x3ffu) << 13);            // inf / NaN
  const uint32_t body = magnitude >= 0x7c00u ? special : float_to_bits(finite);
  return bits_to_float(sign | body);
}

// float -> IEEE binary16, round to nearest even, overflow to inf, NaN kept quiet.
inline uint16_t float_to_half(float f) {
  uint32_t x = float_to_bits(f);
  const uint32_t sign = x & 0x80000000u;
  x ^= sign;
  uint32_t out;
  if (x >= (143u << 23)) {  // >= 65536 after rounding range, inf or NaN
    out = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (x < (113u << 23)) {  // half subnormal or zero: let the FPU round
    const float denorm_magic = bits_to_float(((127u - 15u) + (23u - 10u) + 1u) << 23);
    out = float_to_bits(bits_to_float(x) + denorm_magic) - float_to_bits(denorm_magic);
  } else {
    const uint32_t mantissa_odd = (x >> 13) & 1u;
    x += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    x += mantissa_odd;
    out = x >> 13;
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

// float -> bfloat16, round to nearest even, NaN kept quiet.
inline uint16_t float_to_bf16(float f) {
  const uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// True for inf and NaN, as an integer usable in vectorised counts.
inline int32_t is_nonfinite(float f) { return (float_to_bits(f) & 0x7f800000u) == 0x7f800000u; }

// expf for x in [-87.3, 88.3] (inputs outside are clamped; exp(-87.3) ~ 1e-38 is
// negligible next to the softmax denominator >= 1). Cephes expf polynomial.
inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  // Round x*log2(e) to nearest with the 1.5*2^23 trick (SSE2 has no roundps).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float y = poly * (r * r) + r + 1.0f;
  const int32_t e = static_cast<int32_t>(n) + 127;
  return y * bits_to_float(static_cast<uint32_t>(e) << 23);
}

// logf for positive normal x (callers clamp at FLT_MIN). Cephes logf polynomial.
inline float fast_log(float x) {
  const uint32_t bits = float_to_bits(x);
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xffu) - 126;  // x = m * 2^e, m in [0.5, 1)
  float m = bits_to_float((bits & 0x007fffffu) | 0x3f000000u);
  const int32_t small = m < 0.707106781186547524f;
  e -= small;
  m = small ? (m + m) - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (m + y) + fe * 0.693359375f;
}

}  // namespace TRMCORE_CPU_ISA
}  // namespace trmcore
