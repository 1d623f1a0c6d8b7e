// Argument checks shared by the CPU and CUDA launchers: every launcher rejects
// null pointers, non-positive sizes and bad codes with std::invalid_argument before it
// touches memory, so the binding and direct C++ callers get the same errors.
//
// Everything is defined out of line in validate.cpp, which the C++ compiler
// builds: the CUDA translation units include this header, and their host code is
// compiled by nvcc's host compiler, which in the wheel build uses another C++
// standard library than the rest (docs/packaging.md). So that both link into one
// module, .cu files must not instantiate C++ library code that is not header-only
// (std::string, exceptions): they throw through the functions below.
#pragma once
#include "trmcore/ops.h"

namespace trmcore {
namespace detail {

void validate(const LeepJointParams& p, const char* launcher);
void validate(const PixelLeepParams& p, const char* launcher);
void validate(const RiskMapParams& p, const char* launcher);
void validate(const RwceForwardParams& p, const char* launcher);
void validate(const RwceBackwardParams& p, const char* launcher);

// throw std::invalid_argument(message)
[[noreturn]] void throw_invalid_argument(const char* message);
// throw std::runtime_error("trmcore CUDA error in " + what + ": " + message)
[[noreturn]] void throw_cuda_error(const char* what, const char* message);

}  // namespace detail
}  // namespace trmcore
