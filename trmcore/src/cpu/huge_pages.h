// Output buffers of a few tens of MB (the gradient of the loss, the LEEP and
// risk maps) are usually fresh allocations that the kernel touches first. With
// 4 KiB pages the kernel then spends more time in page faults (the OS zeroing
// pages one by one) than computing: about 20 ms for the 59 MB gradient of
// N=64, C=4, 240x240. Asking for transparent huge pages before the first touch
// cuts that to about 4 ms.
#pragma once
#include <cstddef>

namespace trmcore {
namespace cpu_memory {

// Advises the kernel to back the 2 MiB-aligned interior of [data, data + bytes)
// with transparent huge pages (Linux, THP "madvise" or "always" mode). A no-op
// for buffers under 8 MiB, on other systems, or when the advice is refused; it
// never changes the contents or the ownership of the memory.
void advise_huge_pages(void* data, size_t bytes);

}  // namespace cpu_memory
}  // namespace trmcore
