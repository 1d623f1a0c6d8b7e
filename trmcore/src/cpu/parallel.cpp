// Worker threads of the CPU kernels: see parallel.h.
#include "parallel.h"

#include "trmcore/ops.h"

#include <sched.h>

#include <cstdlib>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace trmcore {
namespace parallel {

int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    // OpenMP syntax allows a list ("4,2") for nested levels; the first entry counts.
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    if (end != env && value > 0) return static_cast<int>(value < 4096 ? value : 4096);
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int count = CPU_COUNT(&set);
    if (count > 0) return count;
  }
  const unsigned hardware = std::thread::hardware_concurrency();
  return hardware > 0 ? static_cast<int>(hardware) : 1;
}

IndexQueue::IndexQueue(int64_t count) : count_(count) {}

bool IndexQueue::next(int64_t& index) {
  index = next_.fetch_add(1, std::memory_order_relaxed);
  return index < count_;
}

void run(int workers, const std::function<void(int)>& body) {
  std::exception_ptr error;
  std::mutex error_mutex;
  auto guarded = [&](int worker) {
    try {
      body(worker);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers > 1 ? static_cast<size_t>(workers - 1) : 0);
  for (int worker = 1; worker < workers; ++worker) {
    try {
      threads.emplace_back(guarded, worker);
    } catch (const std::system_error&) {
      break;  // out of threads: the running workers take the rest
    }
  }
  guarded(0);
  for (std::thread& thread : threads) thread.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace parallel

int default_num_threads() { return parallel::default_threads(); }

}  // namespace trmcore
