// Fork detection in one place. A forked child inherits an object's memory but none of its threads, and
// the parent's locks may be held there: an object that owns threads asks whether it still lives in the
// process that made it and, in a child, abandons (never touches) what the parent had.
#pragma once

#include <sys/types.h>
#include <unistd.h>

namespace hivedata {

class ProcessOwner {
 public:
  // True in the process that made (or last adopted) this object.
  bool Current() const { return pid_ == getpid(); }
  // In a forked child: adopts this process and returns true (the caller then starts afresh); else false.
  bool AdoptIfForked() {
    const pid_t pid = getpid();
    if (pid == pid_) return false;
    pid_ = pid;
    return true;
  }

 private:
  pid_t pid_ = getpid();
};

}  // namespace hivedata
