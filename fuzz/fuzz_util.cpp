#include "fuzz_util.h"

#include <ATen/Parallel.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace vitq::fuzz {

namespace fs = std::filesystem;

namespace {
std::string g_dir;
pid_t g_owner = 0;
void remove_scratch() {
  if (!g_dir.empty() && getpid() == g_owner) {
    std::error_code ec;
    fs::remove_all(g_dir, ec);
  }
}
}  // namespace

const std::string& scratch_dir() {
  if (g_dir.empty() || getpid() != g_owner) {  // a forked child gets its own folder
    const char* base = std::getenv("VITQ_FUZZ_TMP");
    g_dir = std::string(base ? base : "/dev/shm") + "/vitq-fuzz-" + std::to_string(getpid());
    g_owner = getpid();
    fs::create_directories(g_dir);
    static bool registered = false;
    if (!registered) {
      std::atexit(remove_scratch);
      registered = true;
    }
  }
  return g_dir;
}

std::string write_scratch(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

}  // namespace vitq::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  vitq::fuzz::scratch_dir();
  if (vitq_fuzz_setup) vitq_fuzz_setup();
  return 0;
}
