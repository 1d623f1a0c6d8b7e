// Worker threads for the CPU kernels (C++ threads, no OpenMP).
//
// Why not OpenMP: its runtime (libgomp) is a shared library that a manylinux
// wheel would have to bundle, and the system's copy needs a newer glibc than the
// wheels target (docs/packaging.md). std::thread is part of the C++ runtime,
// which the wheel build links statically.
//
// Threads are started per call and joined before it returns (no pool): nothing
// outlives a call, so fork() (DataLoader workers) never inherits a half-alive
// pool. Starting one thread costs tens of microseconds, small against the
// kernels' milliseconds. Results never depend on the thread count: the kernels
// reduce per-chunk partials in chunk order (rows.h).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>

namespace trmcore {
namespace parallel {

// Threads used when a launcher is given num_threads = 0: OMP_NUM_THREADS when it
// holds a positive number (the variable users already set for CPU libraries),
// else the number of CPUs this process may run on.
int default_threads();

// Runs body(worker) for worker = 0 .. workers-1: worker 0 on the calling thread,
// the others on new threads, and returns when all have finished. If a thread
// cannot be started, the workers already running share the work (callers hand
// out work dynamically, see for_each_index). The first exception thrown by a
// worker is rethrown here once every worker has stopped.
void run(int workers, const std::function<void(int)>& body);

// Hands out 0 .. count-1, one index per call, to any number of workers.
// Out of line (parallel.cpp, built without -mavx2) so that the linker never
// keeps an AVX2 copy of it for the baseline kernels.
class IndexQueue {
 public:
  explicit IndexQueue(int64_t count);
  bool next(int64_t& index);

 private:
  std::atomic<int64_t> next_{0};
  const int64_t count_;
};

// Starting a thread costs tens of microseconds, about what a few chunks of
// work take, so a thread is started only for every kMinItemsPerThread items.
constexpr int64_t kMinItemsPerThread = 4;

// Runs worker(queue) on up to `threads` workers (inline when that is 1); each
// worker pulls indices from the shared queue until it is empty.
template <typename Worker>
void for_each_worker(int threads, int64_t count, Worker&& worker) {
  IndexQueue queue(count);
  const int64_t by_work = (count + kMinItemsPerThread - 1) / kMinItemsPerThread;
  const int64_t workers = threads < by_work ? threads : by_work;
  if (workers <= 1) {
    worker(queue);
    return;
  }
  run(static_cast<int>(workers), [&](int) { worker(queue); });
}

// body(index) for index = 0 .. count-1, in any order, on up to `threads` threads.
template <typename Body>
void for_each_index(int threads, int64_t count, Body&& body) {
  for_each_worker(threads, count, [&](IndexQueue& queue) {
    for (int64_t i; queue.next(i);) body(i);
  });
}

}  // namespace parallel
}  // namespace trmcore
