// Sharded sweeps: `vitq compare --shard I/N` runs a share of the (bits, method) cells; `--merge` joins the
// partial results into the table one run writes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

using namespace vitq::test;

namespace {

// Eight val1000 images: calibration and evaluation set of the small sweep.
fs::path small_set(const TempDir& dir) { return val_subset(dir.path(), 8); }

std::string sweep(const fs::path& data, const std::string& methods, const std::string& bits) {
  return "compare " + quoted(model_dir()) + " --calib " + quoted(data) + " --calib-size 4 --data " + quoted(data) +
         " --methods " + methods + " --bits " + bits + " --quiet --threads 2";
}

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(read_file(p)); }

}  // namespace

TEST(Sweeps, MergedShardsEqualOneRun) {
  TempDir dir;
  const fs::path data = small_set(dir);
  const std::string s = sweep(data, "minmax,percentile", "w8a8,w4a4");
  // two shards as two processes at once, then the same sweep as one run
  auto shards = run_bash(std::string(VITQ_BINARY) + " " + s + " --shard 0/2 --out " + quoted(dir / "s0") + " & " + VITQ_BINARY +
                         " " + s + " --shard 1/2 --out " + quoted(dir / "s1") + " && wait");
  ASSERT_EQ(shards.code, 0) << shards.output;
  auto one = run_vitq(s + " --out " + quoted(dir / "one"));
  ASSERT_EQ(one.code, 0) << one.output;
  auto merged = run_vitq("compare --merge " + quoted(dir / "s1.json") + " " + quoted(dir / "s0.json") + " --out " + quoted(dir / "m"));
  ASSERT_EQ(merged.code, 0) << merged.output;
  EXPECT_NE(merged.output.find("merged 2 shards (4 cells)"), std::string::npos) << merged.output;

  const auto a = read_json(dir / "one.json"), b = read_json(dir / "m.json");
  const auto s0 = read_json(dir / "s0.json"), s1 = read_json(dir / "s1.json");
  EXPECT_EQ(s0["rows"].size(), 2u);
  EXPECT_EQ(s1["rows"].size(), 2u);
  ASSERT_EQ(a["rows"].size(), 4u);
  ASSERT_EQ(b["rows"].size(), 4u);
  for (const char* key : {"model", "source", "calib", "calib_size", "seed", "convention", "data", "images", "fp32_top1"})
    EXPECT_EQ(a[key], b[key]) << key;
  EXPECT_FALSE(b.contains("shard"));
  for (size_t i = 0; i < 4; ++i) {
    const auto &x = a["rows"][i], &y = b["rows"][i];
    // cell for cell: the same method and bits, the same numbers, the same plan (its quantizers and settings)
    for (const char* key : {"cell", "method", "wbits", "abits", "top1", "top5", "delta_top1", "agreement", "kl", "quantizers", "settings"})
      EXPECT_EQ(x[key], y[key]) << "row " << i << " " << key;
  }
  // the markdown tables: equal but for the search times and the --out in the Reproduce line
  auto table = [](const std::string& md) {
    std::string out;
    std::istringstream in(md);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("| ", 0) == 0 && line.find("| W") != std::string::npos) {
        // drop the 7th column (search s): between the 7th and 8th "|"
        size_t pos = 0;
        for (int k = 0; k < 6; ++k) pos = line.find('|', pos + 1);
        out += line.substr(0, pos) + line.substr(line.find('|', pos + 1)) + "\n";
      }
    return out;
  };
  EXPECT_EQ(table(read_file(dir / "one.md")), table(read_file(dir / "m.md")));
  EXPECT_FALSE(table(read_file(dir / "m.md")).empty());

  // bad input: one-line errors
  const std::string m = "compare --out " + quoted(dir / "bad") + " --merge ";
  expect_cli_error(run_vitq(m + quoted(dir / "s0.json")), "cells are missing (shards not given: 1)");
  expect_cli_error(run_vitq(m + quoted(dir / "s0.json") + " " + quoted(dir / "s0.json")), "shard 0/2 is given twice");
  const std::string text = read_file(dir / "s1.json");
  write_file(dir / "cut.json", text.substr(0, text.size() / 2));
  expect_cli_error(run_vitq(m + quoted(dir / "s0.json") + " " + quoted(dir / "cut.json")), "invalid or truncated JSON");
  expect_cli_error(run_vitq(m + quoted(dir / "s0.json") + " " + quoted(dir / "one.json")), "not a partial compare result");
  write_file(dir / "plan.json", R"({"format": "vitq-quant-plan", "version": 3, "points": []})");
  expect_cli_error(run_vitq(m + quoted(dir / "plan.json")), "not a partial compare result");
  auto overlap = s1;
  overlap["rows"][0]["cell"] = 0;
  write_file(dir / "overlap.json", overlap.dump());
  expect_cli_error(run_vitq(m + quoted(dir / "s0.json") + " " + quoted(dir / "overlap.json")), "overlapping shards");
  auto other = run_vitq(sweep(data, "minmax,percentile", "w8a8,w6a6") + " --shard 1/2 --out " + quoted(dir / "other"));
  ASSERT_EQ(other.code, 0) << other.output;
  expect_cli_error(run_vitq(m + quoted(dir / "s0.json") + " " + quoted(dir / "other.json")), "a shard of another sweep");
  expect_cli_error(run_vitq("compare --merge " + quoted(dir / "s0.json") + " " + quoted(dir / "s1.json") + " --out " +
                            quoted(dir / "s0")),
                   "is also an input");
  EXPECT_FALSE(fs::exists(dir / "bad.json"));
  EXPECT_FALSE(fs::exists(dir / "bad.md"));
}

TEST(Sweeps, BadShardOptions) {
  TempDir dir;
  const fs::path data = small_set(dir);
  const std::string s = sweep(data, "minmax", "w8a8") + " --out " + quoted(dir / "x") + " --shard ";
  expect_cli_error(run_vitq(s + "2/2"), "the index must be in [0, 2)");
  expect_cli_error(run_vitq(s + "1/0"), "the index must be in [0, 0)");
  expect_cli_error(run_vitq(s + "half"), "--shard expects I/N");
  expect_cli_error(run_vitq("compare --data " + quoted(data) + " --out " + quoted(dir / "x")), "compare needs MODEL");
}
