// Labelled image sets: a directory with labels.txt (one "relative/path CLASS" line per image), or an
// ImageNet-style class-folder tree (one sub-directory per class, sorted names -> class 0, 1, ...).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace vitq {

struct Sample {
  std::string path;  // absolute or relative to the working directory
  int64_t label = -1;
};

struct Dataset {
  std::string root;
  std::vector<Sample> samples;
};

// Throws Error for a missing directory, a malformed labels file, or a set with no images.
Dataset open_dataset(const std::string& dir);
// Throws Error naming the first sample whose label is outside [0, num_classes).
void check_labels(const Dataset& data, int64_t num_classes);
// `n` samples drawn without replacement with a seeded generator (same seed, same subset), in drawn order.
Dataset sample_subset(const Dataset& data, size_t n, uint64_t seed);

}  // namespace vitq
