#include "vitq/data/loader.h"

#include <fmt/format.h>

#include "vitq/data/transform.h"
#include "vitq/util/error.h"

namespace vitq {

BatchLoader::BatchLoader(const Dataset& data, PreprocessConfig config, size_t batch_size, int workers, size_t prefetch)
    : data_(data), config_(std::move(config)), batch_size_(batch_size), prefetch_(std::max<size_t>(prefetch, 1)) {
  if (batch_size_ == 0) fail("batch size must be at least 1");
  num_batches_ = (data_.samples.size() + batch_size_ - 1) / batch_size_;
  for (int i = 0; i < std::max(workers, 1); ++i) threads_.emplace_back([this] { work(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

Batch BatchLoader::make_batch(size_t index) const {
  Batch b;
  b.index = index;
  const size_t begin = index * batch_size_, end = std::min(begin + batch_size_, data_.samples.size());
  const size_t plane = static_cast<size_t>(3) * config_.input_height * config_.input_width;
  b.pixels.resize((end - begin) * plane);
  for (size_t i = begin; i < end; ++i) {
    const auto& s = data_.samples[i];
    try {
      Image img = decode_image(s.path);
      eval_transform(img, config_, b.pixels.data() + b.size() * plane);
      b.labels.push_back(s.label);
      b.samples.push_back(i);
    } catch (const std::bad_alloc&) {
      b.errors.push_back(s.path + ": out of memory decoding or resizing the image");
    } catch (const std::exception& e) {
      // every message names the image (decoder errors already start with its path)
      const std::string what = first_line(e.what());
      b.errors.push_back(what.rfind(s.path, 0) == 0 ? what : s.path + ": " + what);
    }
  }
  b.pixels.resize(b.size() * plane);
  return b;
}

void BatchLoader::work() {
  for (;;) {
    size_t index;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || next_to_make_ >= num_batches_ || next_to_make_ < next_to_return_ + prefetch_; });
      if (stop_ || next_to_make_ >= num_batches_) return;
      index = next_to_make_++;
    }
    Batch b;
    try {
      b = make_batch(index);
    } catch (const std::exception& e) {  // e.g. out of memory for the batch buffer: report, do not terminate
      b = Batch{};
      b.index = index;
      const size_t begin = index * batch_size_, end = std::min(begin + batch_size_, data_.samples.size());
      for (size_t i = begin; i < end; ++i) b.errors.push_back(fmt::format("{}: {}", data_.samples[i].path, e.what()));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_.emplace(index, std::move(b));
    }
    cv_.notify_all();
  }
}

std::optional<Batch> BatchLoader::next() {
  std::unique_lock<std::mutex> lock(mu_);
  if (next_to_return_ >= num_batches_) return std::nullopt;
  cv_.wait(lock, [&] { return ready_.count(next_to_return_) != 0; });
  Batch b = std::move(ready_.at(next_to_return_));
  ready_.erase(next_to_return_);
  ++next_to_return_;
  lock.unlock();
  cv_.notify_all();
  return b;
}

}  // namespace vitq
