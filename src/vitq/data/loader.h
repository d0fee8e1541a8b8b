// Decodes and transforms images on worker threads while the model runs, delivering batches in order.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "vitq/data/dataset.h"
#include "vitq/data/preprocess_config.h"

namespace vitq {

struct Batch {
  size_t index = 0;               // batch number
  std::vector<float> pixels;      // [n, 3, H, W], only the images that decoded
  std::vector<int64_t> labels;    // [n]
  std::vector<size_t> samples;    // [n] indices into the data set
  std::vector<std::string> errors;  // one line per image that failed ("path: problem")
  size_t size() const { return labels.size(); }
};

class BatchLoader {
 public:
  BatchLoader(const Dataset& data, PreprocessConfig config, size_t batch_size, int workers = 1,
              size_t prefetch = 2);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  std::optional<Batch> next();  // nullopt after the last batch
  size_t num_batches() const { return num_batches_; }

 private:
  void work();
  Batch make_batch(size_t index) const;

  const Dataset& data_;
  PreprocessConfig config_;
  size_t batch_size_, num_batches_, prefetch_;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t next_to_make_ = 0, next_to_return_ = 0;
  bool stop_ = false;
  std::map<size_t, Batch> ready_;
  std::vector<std::thread> threads_;
};

}  // namespace vitq
