// cuda_available() of a CPU-only build (the CUDA build defines it in
// trmcore/src/cuda/device.cu).
#include "trmcore/ops.h"

namespace trmcore {

bool cuda_available() { return false; }

}  // namespace trmcore
