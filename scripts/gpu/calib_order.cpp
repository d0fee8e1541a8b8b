// scripts/gpu/prepare.sh: orders the calibration subset so that vitq's seeded draw (sample_subset) over the
// subset folder gives the images in the order the same draw gives them over the whole folder. Usage: calib_order LABELS N
// draw() repeats sample_subset's Fisher-Yates (src/vitq/data/dataset.cpp) without linking libtorch: change both together.
#include <fstream>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>
std::vector<size_t> draw(size_t total, size_t n, uint64_t seed) {
  std::vector<size_t> idx(total);
  std::iota(idx.begin(), idx.end(), 0);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < n; ++i) { size_t j = i + static_cast<size_t>(rng() % (idx.size() - i)); std::swap(idx[i], idx[j]); }
  idx.resize(n);
  return idx;
}
int main(int argc, char** argv) {
  std::ifstream in(argv[1]); size_t n = std::stoul(argv[2]);
  std::vector<std::string> lines; std::string l;
  while (std::getline(in, l)) if (!l.empty() && l[0] != '#') lines.push_back(l);
  auto sel = draw(lines.size(), n, 0);           // orig[i] = lines[sel[i]]
  auto pi = draw(n, n, 0);                        // device: subset[i] = file[pi[i]]
  std::vector<std::string> out(n);
  for (size_t i = 0; i < n; ++i) out[pi[i]] = lines[sel[i]];  // so that file[pi[i]] = orig[i]
  for (auto& s : out) std::cout << s << "\n";
}
