// Shared helpers of the libFuzzer targets (fuzz/README.md): a per-process scratch folder under /dev/shm for the
// APIs that only take a path, and the one-thread set-up.
#pragma once
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

namespace vitq::fuzz {

// /dev/shm/vitq-fuzz-<pid>/, created on first use and removed at exit.
const std::string& scratch_dir();
// Writes data to scratch_dir()/name (replacing it) and returns the path.
std::string write_scratch(const std::string& name, const uint8_t* data, size_t size);
// Runs f(): vitq rejects bad input by throwing, so an exception is a correct answer; anything else that goes
// wrong (a crash, a sanitizer report, a timeout, running out of memory) is a finding.
template <class F>
int guarded(F&& f) {
  try {
    f();
  } catch (const std::exception&) {
  }
  return 0;
}

}  // namespace vitq::fuzz

// LLVMFuzzerInitialize (fuzz_util.cpp) pins libtorch to one thread, then calls this when the target defines it.
extern "C" void vitq_fuzz_setup() __attribute__((weak));
