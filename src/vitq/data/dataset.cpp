#include "vitq/data/dataset.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "vitq/util/error.h"
#include "vitq/util/file_io.h"

namespace vitq {

namespace fs = std::filesystem;

Dataset open_dataset(const std::string& dir) {
  if (!fs::exists(dir)) fail("data set not found: {}", dir);
  if (!fs::is_directory(dir)) fail("data set {} is not a directory", dir);
  Dataset d;
  d.root = dir;
  const fs::path labels = fs::path(dir) / "labels.txt";
  if (fs::exists(labels)) {
    std::istringstream in(read_file(labels.string(), "labels file", uint64_t{1} << 30));
    std::string line;
    size_t lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
      if (line.empty() || line[0] == '#') continue;
      const auto sep = line.find_last_of(" \t");
      if (sep == std::string::npos) fail("{}:{}: expected 'FILE CLASS'", labels.string(), lineno);
      std::string file = line.substr(0, sep), cls = line.substr(sep + 1);
      while (!file.empty() && (file.back() == ' ' || file.back() == '\t')) file.pop_back();
      int64_t label = 0;
      try {
        size_t used = 0;
        label = std::stoll(cls, &used);
        if (used != cls.size()) throw std::invalid_argument(cls);
      } catch (const std::exception&) {
        fail("{}:{}: class '{}' is not an integer", labels.string(), lineno, cls);
      }
      if (label < 0) fail("{}:{}: class {} is negative", labels.string(), lineno, label);
      d.samples.push_back({(fs::path(dir) / file).string(), label});
    }
  } else {
    std::vector<fs::path> classes;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_directory()) classes.push_back(e.path());
    std::sort(classes.begin(), classes.end());
    for (size_t c = 0; c < classes.size(); ++c) {
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(classes[c])) {
        if (!e.is_regular_file()) continue;
        std::string ext = e.path().extension().string();
        std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
        if (ext == ".jpg" || ext == ".jpeg" || ext == ".png") files.push_back(e.path());
      }
      std::sort(files.begin(), files.end());
      for (auto& f : files) d.samples.push_back({f.string(), static_cast<int64_t>(c)});
    }
  }
  if (d.samples.empty()) fail("data set {} is empty (no labels.txt entries or class folders with images)", dir);
  return d;
}

void check_labels(const Dataset& data, int64_t num_classes) {
  for (const auto& s : data.samples)
    if (s.label < 0 || s.label >= num_classes)
      fail("{}: label {} is outside the model's {} classes", s.path, s.label, num_classes);
}

Dataset sample_subset(const Dataset& data, size_t n, uint64_t seed) {
  if (n > data.samples.size()) fail("asked for {} images but {} has only {}", n, data.root, data.samples.size());
  std::vector<size_t> idx(data.samples.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::mt19937_64 rng(seed);
  // Fisher-Yates with our own index draw, so the subset does not depend on the standard library's shuffle
  for (size_t i = 0; i < n; ++i) {
    size_t j = i + static_cast<size_t>(rng() % (idx.size() - i));
    std::swap(idx[i], idx[j]);
  }
  Dataset out{data.root, {}};
  for (size_t i = 0; i < n; ++i) out.samples.push_back(data.samples[idx[i]]);
  return out;
}

}  // namespace vitq
