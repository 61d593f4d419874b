// Fixed-size worker pool for decode tasks. Started lazily by its owner; joined on destruction.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace hivedata {

class ThreadPool {
 public:
  // Starts `threads` workers. When one cannot start (a thread limit: RLIMIT_NPROC, a pids cgroup), those
  // already started are stopped and joined, and std::runtime_error says so: nothing is left running.
  explicit ThreadPool(int threads) {
    if (threads < 1) threads = 1;
    workers_.reserve(threads);
    for (int i = 0; i < threads; ++i) {
      try {
        workers_.emplace_back([this] { Work(); });
      } catch (const std::system_error& e) {
        StopAndJoin();
        throw std::runtime_error("could not start decode thread " + std::to_string(i + 1) + " of " +
                                 std::to_string(threads) + " (" + e.what() +
                                 "): too many threads for this process or user (RLIMIT_NPROC, pids cgroup)?");
      }
    }
  }
  ~ThreadPool() { StopAndJoin(); }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

  size_t size() const { return workers_.size(); }

 private:
  // Runs the queued tasks to completion, then joins every worker.
  void StopAndJoin() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void Work() {
    while (true) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;  // stop_ and drained
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> workers_;
  bool stop_ = false;
};

}  // namespace hivedata
