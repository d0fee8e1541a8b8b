// libFuzzer target: the labels parser. The input is a labels.txt in an otherwise empty folder, opened with
// open_dataset, then checked against 1000 classes and subsampled as the calibration code does.
#include "fuzz_util.h"
#include "vitq/data/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vitq::fuzz::write_scratch("labels.txt", data, size);
  return vitq::fuzz::guarded([&] {
    vitq::Dataset d = vitq::open_dataset(vitq::fuzz::scratch_dir());
    vitq::fuzz::guarded([&] { vitq::check_labels(d, 1000); });
    (void)vitq::sample_subset(d, 1 + size % 7, size);
  });
}
