// Which BLAS the process runs libtorch's FP32 GEMMs on, as the loaded OpenBLAS reports it.
//
// Debian ships OpenBLAS in an OpenMP and a pthreads build, each behind its own alternatives (libblas.so.3,
// liblapack.so.3 and libopenblas.so.0). libtorch links libopenblas.so.0 directly, so that one decides. The
// pthreads build keeps its own worker threads, which wait by spinning on sched_yield beside libtorch's OpenMP
// threads: on few cores they take the cores from each other, and a reconstruction on 2 cores takes ~20% longer
// (scripts/setup.sh selects the OpenMP build; the measurement is in docs/decisions.md).
#pragma once
#include <string>

namespace vitq {

struct BlasInfo {
  std::string config;     // openblas_get_config(), e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64"; "" if not OpenBLAS
  std::string threading;  // "OpenMP", "pthreads", "sequential", or "" when unknown
  std::string summary() const;  // "OpenBLAS 0.3.21 … (OpenMP)", or "not OpenBLAS (unknown threading)"
};

// Reads the loaded OpenBLAS through its exported functions (none: config and threading empty).
BlasInfo blas_info();

// One line for stderr when the BLAS is OpenBLAS's pthreads build and more than one thread is used, else "".
std::string blas_warning(int threads);

}  // namespace vitq
