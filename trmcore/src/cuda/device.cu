// cuda_available(): false, without raising, when there is no driver or device.
#include <cuda_runtime.h>

#include "trmcore/ops.h"

namespace trmcore {

bool cuda_available() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return false;
  }
  return count > 0;
}

}  // namespace trmcore
