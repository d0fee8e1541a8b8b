#include "vitq/util/blas.h"

#include <dlfcn.h>

namespace vitq {

BlasInfo blas_info() {
  BlasInfo b;
  using Config = char* (*)();
  using Parallel = int (*)();
  if (auto f = reinterpret_cast<Config>(::dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    if (const char* s = f()) b.config = s;
  }
  if (auto f = reinterpret_cast<Parallel>(::dlsym(RTLD_DEFAULT, "openblas_get_parallel"))) {
    switch (f()) {  // OpenBLAS: 0 sequential, 1 pthreads, 2 OpenMP
      case 0: b.threading = "sequential"; break;
      case 1: b.threading = "pthreads"; break;
      case 2: b.threading = "OpenMP"; break;
      default: break;
    }
  }
  return b;
}

std::string BlasInfo::summary() const {
  return (config.empty() ? std::string("not OpenBLAS") : config) + " (" + (threading.empty() ? "unknown threading" : threading) + ")";
}

std::string blas_warning(int threads) {
  if (threads < 2) return "";
  const BlasInfo b = blas_info();
  if (b.threading != "pthreads") return "";
  return "warning: libtorch runs on OpenBLAS's pthreads build, whose threads spin beside libtorch's OpenMP ones "
         "(a reconstruction on 2 cores takes ~20% longer); select the OpenMP build: scripts/setup.sh does, or "
         "update-alternatives --config libopenblas.so.0-<arch>";
}

}  // namespace vitq
