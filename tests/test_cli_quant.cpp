// Bad input to vitq quantize / eval --plan / compare through the real binary.
#include <gtest/gtest.h>
#include <png.h>

#include <nlohmann/json.hpp>
#include <set>

#include "test_util.h"
#include "vitq/data/dataset.h"

using namespace vitq::test;

namespace {

std::string quantize_args(const std::string& extra) {
  return "quantize " + quoted(model_dir()) + " --calib " + quoted(imagenet("calib1000")) + " --calib-size 4 --quiet " + extra;
}
// The plan `vitq quantize` writes with these options (the command must succeed).
nlohmann::json quantized_plan(const std::string& options) {
  TempDir dir;
  const auto r = run_vitq(quantize_args(options + " --out " + quoted(dir / "p.json")));
  EXPECT_EQ(r.code, 0) << r.output;
  if (r.code != 0) return nlohmann::json::object();
  return nlohmann::json::parse(std::ifstream(dir / "p.json"));
}
}  // namespace

TEST(CliQuant, BitsOutsideRange) {
  TempDir dir;
  auto refused = [&](const std::string& options, const std::string& message) {
    expect_cli_error(run_vitq(quantize_args(options + " --out " + quoted(dir / "p.json"))), message);
  };
  refused("--method minmax --wbits 9 --abits 8", "--wbits must be between 2 and 8, got 9");
  refused("--method minmax --wbits 4 --abits 1", "--abits must be between 2 and 8, got 1");
  refused("--method minmax --layer-bits blocks.0.attn.qkv=12", "bits must be between 2 and 8");
  for (const std::string bad : {"blocks.0.attn.qkv=w9", "blocks.0.attn.qkv=a", "blocks.0.attn.qkv=w4ax", "blocks.0.attn.qkv=x4",
                                "blocks.0.attn.qkv=w4a-3", "blocks.0.attn.qkv=wa4", "blocks.0.attn.qkv=w4a", "blocks.0.attn.qkv=a4w5",
                                "blocks.0.attn.qkv=", "blocks.0.attn.qkv=w99999999999", "blocks.0.attn.qkv=+4"})
    refused("--method minmax --layer-bits " + bad, "--layer-bits");
  // widths that would change nothing: a matmul has no weight, the patch embedding's input is the 8-bit image
  refused("--method minmax --layer-bits blocks.0.attn.matmul_qk=w4", "has no weight");
  refused("--method minmax --layer-bits patch_embed.proj=a4", "is the image");
  // mixed precision chooses every width itself
  refused("--method liu2021+mpkind --layer-bits head=8", "cannot be combined with mixed precision");
  EXPECT_FALSE(fs::exists(dir / "p.json"));
  // NAME=wBaB: the weight and the input apart, written into the plan
  // (a side given alone wins over NAME=BITS, in either order)
  ASSERT_EQ(run_vitq(quantize_args("--method minmax --layer-bits blocks.0.attn.qkv=w4a7,blocks.1.mlp.fc1=a5,blocks.1.mlp.fc1=3,"
                                   "blocks.2.mlp.fc2=w5,blocks.2.mlp.fc2=7 --out " + quoted(dir / "p.json"))).code, 0);
  const auto plan = nlohmann::json::parse(std::ifstream(dir / "p.json"));
  int seen = 0;
  for (const auto& p : plan["points"]) {
    const std::string node = p["node"];
    const bool weight = p["weight"];
    if (node == "blocks.0.attn.qkv") {
      EXPECT_EQ(p["spec"]["bits"], weight ? 4 : 7);
      ++seen;
    }
    if (node == "blocks.1.mlp.fc1") {
      EXPECT_EQ(p["spec"]["bits"], weight ? 3 : 5);
      ++seen;
    }
    if (node == "blocks.2.mlp.fc2") {
      EXPECT_EQ(p["spec"]["bits"], weight ? 5 : 7);
      ++seen;
    }
  }
  EXPECT_EQ(seen, 6);
}

// liu2021's mixed precision through the command line: by default it is the kind-wise allocation (vitq's, issue 11),
// the plan says so and keeps both budgets.
TEST(CliQuant, MixedPrecisionByKind) {
  const auto plan = quantized_plan("--method liu2021 --mixed-precision --avg-bits 6 --search-steps 2 --search-images 2 --threads 2");
  ASSERT_TRUE(plan.contains("settings") && plan["settings"].contains("mixed_precision")) << plan.dump().substr(0, 200);
  const auto& mp = plan["settings"]["mixed_precision"];
  EXPECT_EQ(mp["sensitivity"], "kind");
  EXPECT_EQ(mp["avg_bits"], 6.0);
  EXPECT_EQ(mp["kinds"].size(), 13u);
  EXPECT_TRUE(mp["kinds"].contains("blocks.*.attn.qkv A (Linear after LayerNorm)")) << mp["kinds"].dump();
  std::set<int> widths;
  for (const auto& p : plan["points"]) widths.insert(p["spec"]["bits"].get<int>());
  EXPECT_GT(widths.size(), 2u);
}

// liu2021's KL check through the command line (on by default since issue 11): the plan records, for each of the 16
// kinds of input, both KLs and which steps it kept, consistently with them.
TEST(CliQuant, Liu2021KlCheck) {
  const auto plan = quantized_plan("--method liu2021 --wbits 8 --abits 8 --search-steps 2 --search-images 2 --threads 2");
  ASSERT_TRUE(plan.contains("settings") && plan["settings"].contains("kl_check")) << plan.dump().substr(0, 200);
  const auto& check = plan.at("settings").at("kl_check");
  EXPECT_EQ(check.at("images"), 4);
  ASSERT_EQ(check.at("kinds").size(), 16u) << check.dump();
  EXPECT_EQ(check.at("kinds_not_moved_by_the_search"), 0);  // 2 grid points, 0.5 and 1.2: the search moves every step
  int minmax = 0;
  for (const auto& [name, k] : check.at("kinds").items()) {
    minmax += k.at("kept") == "minmax";
    EXPECT_EQ(k.at("kept") == "minmax", k.at("kl_minmax").get<double>() <= k.at("kl_searched").get<double>()) << name;
  }
  EXPECT_EQ(check.at("kinds_kept_at_minmax"), minmax);
}

// liu2021+paper is the published method: no KL check, the nuclear-norm allocation; +klcheck and +mpkind add vitq's
// fixes back one at a time, wherever +paper is written; +paper belongs to liu2021 alone.
TEST(CliQuant, Liu2021Paper) {
  const std::string quick = " --wbits 6 --abits 6 --mixed-precision --avg-bits 6 --search-steps 2 --search-images 2 --threads 2";
  const auto paper = quantized_plan("--method liu2021+paper" + quick);
  ASSERT_TRUE(paper.contains("settings") && paper["settings"].contains("mixed_precision")) << paper.dump().substr(0, 200);
  EXPECT_FALSE(paper["settings"].contains("kl_check"));
  EXPECT_EQ(paper["settings"]["mixed_precision"]["sensitivity"], "nuclear");
  const auto checked = quantized_plan("--method liu2021+klcheck+paper" + quick);
  ASSERT_TRUE(checked.contains("settings") && checked["settings"].contains("mixed_precision")) << checked.dump().substr(0, 200);
  EXPECT_TRUE(checked["settings"].contains("kl_check"));
  EXPECT_EQ(checked["settings"]["mixed_precision"]["sensitivity"], "nuclear");
  const auto kind = quantized_plan("--method liu2021+paper+mpkind" + quick);
  ASSERT_TRUE(kind.contains("settings") && kind["settings"].contains("mixed_precision")) << kind.dump().substr(0, 200);
  EXPECT_FALSE(kind["settings"].contains("kl_check"));
  EXPECT_EQ(kind["settings"]["mixed_precision"]["sensitivity"], "kind");
  TempDir dir;
  expect_cli_error(run_vitq(quantize_args("--method repqvit+paper --out " + quoted(dir / "p.json"))), "'+paper' is liu2021's");
  EXPECT_FALSE(fs::exists(dir / "p.json"));
}

TEST(CliQuant, UnknownMethod) {
  TempDir dir;
  expect_cli_error(run_vitq(quantize_args("--method brecq --out " + quoted(dir / "p.json"))), "unknown method 'brecq'");
  expect_cli_error(run_vitq(quantize_args("--method liu2021+fast --out " + quoted(dir / "p.json"))), "unknown method variant");
  expect_cli_error(run_vitq(quantize_args("--method minmax+klcheck --out " + quoted(dir / "p.json"))), "'+klcheck' is liu2021's");
  expect_cli_error(run_vitq(quantize_args("--method repqvit+holdout --out " + quoted(dir / "p.json"))), "'+holdout' is liu2021's");
}

TEST(CliQuant, PlanFromAnotherModel) {
  TempDir dir;
  auto r = run_vitq(quantize_args("--method minmax --wbits 8 --abits 8 --out " + quoted(dir / "p.json")));
  ASSERT_EQ(r.code, 0) << r.output;
  auto j = nlohmann::json::parse(read_file(dir / "p.json"));
  j["model"] = "deit_small_patch16_224";
  write_file(dir / "other.json", j.dump());
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(imagenet("val1000")) + " --plan " + quoted(dir / "other.json")),
               "plan is for model 'deit_small_patch16_224', not 'deit_tiny_patch16_224'");
  write_file(dir / "broken.json", "{\"format\": \"vitq-quant-plan\", \"version\": 1}");
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(imagenet("val1000")) + " --plan " + quoted(dir / "broken.json")),
               "malformed plan");
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(imagenet("val1000")) + " --plan " + quoted(dir / "none.json")),
               "cannot open plan");
  // and the good plan evaluates, with the comparison against FP32
  r = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(imagenet("val1000")) + " --limit 32 --quiet --plan " +
               quoted(dir / "p.json") + " --report " + quoted(dir / "rep.json") + " --report-images 4");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("agreement"), std::string::npos);
  EXPECT_NE(r.output.find("blocks.11.mlp.fc2"), std::string::npos);
  auto rep = nlohmann::json::parse(read_file(dir / "rep.json"));
  EXPECT_EQ(rep["layers"].size(), 74u);
}

TEST(CliQuant, EmptyCalibrationSet) {
  TempDir dir, empty;
  expect_cli_error(run_vitq("quantize " + quoted(model_dir()) + " --calib " + quoted(empty.path()) + " --method minmax --out " +
                        quoted(dir / "p.json")),
               "is empty");
  expect_cli_error(run_vitq(quantize_args("--method minmax --calib-size 0 --out " + quoted(dir / "p.json"))), "calib-size");
}

TEST(CliQuant, AllBlackCalibrationImages) {
  TempDir data, out;
  std::string labels;
  for (int i = 0; i < 4; ++i) {
    write_png(data / ("black" + std::to_string(i) + ".png"), 64, 48);
    labels += "black" + std::to_string(i) + ".png 0\n";
  }
  write_file(data / "labels.txt", labels);
  for (const std::string method : {"minmax", "omse", "liu2021", "easyquant", "ptq4vit", "fqvit"}) {
    auto r = run_vitq("quantize " + quoted(model_dir()) + " --calib " + quoted(data.path()) + " --calib-size 4 --quiet --method " +
                      method + " --wbits 4 --abits 4 --search-steps 4 --search-images 2 --rounds 1 --out " + quoted(out / "p.json"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("warning: the calibration images are constant"), std::string::npos) << r.output;
    auto j = nlohmann::json::parse(read_file(out / "p.json"));
    for (const auto& p : j["points"])
      for (const char* key : {"scale", "scale2"})
        if (p.contains(key))
          for (double s : p[key]["data"]) {
            ASSERT_TRUE(std::isfinite(s)) << method << " " << p["node"];
            ASSERT_GT(s, 0.0) << method << " " << p["node"];
          }
  }
}

TEST(CliQuant, CompareRejectsNonsense) {
  TempDir dir;
  std::string base = "compare " + quoted(model_dir()) + " --calib " + quoted(imagenet("calib1000")) + " --data " +
                     quoted(imagenet("val1000")) + " --out " + quoted(dir / "t");
  expect_cli_error(run_vitq(base + " --bits w9a8"), "outside 2-8 bits");
  expect_cli_error(run_vitq(base + " --bits 8bit"), "--bits expects items like w8a8");
  expect_cli_error(run_vitq(base + " --methods minmax,foo"), "unknown method 'foo'");
}

// compare --save-plans writes each cell's plan, the one its row was measured with: eval --plan on it gives the row's
// numbers; a folder that cannot be made is refused before any work.
TEST(CliQuant, CompareSavesPlans) {
  TempDir dir;
  const auto set = val_subset(dir.path(), 4, "set");
  const std::string base = "compare " + quoted(model_dir()) + " --calib " + quoted(set) + " --calib-size 2 --seed 0 --data " + quoted(set) +
                           " --methods minmax,percentile --bits w8a8,w6a6 --quiet --out " + quoted(dir / "t");
  auto r = run_vitq(base + " --save-plans " + quoted(dir / "plans"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = nlohmann::json::parse(read_file(dir / "t.json"));
  ASSERT_EQ(j["rows"].size(), 4u);
  for (const auto& row : j["rows"]) {
    const std::string want = (dir / "plans" / (row["method"].get<std::string>() + "_w" + std::to_string(row["wbits"].get<int>()) + "a" +
                                               std::to_string(row["abits"].get<int>()) + ".plan.json")).string();
    ASSERT_EQ(row["plan_file"].get<std::string>(), want);
    ASSERT_TRUE(fs::exists(want)) << want;
  }
  const auto& row = j["rows"][1];  // percentile W8A8
  auto e = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(set) + " --plan " + quoted(fs::path(row["plan_file"].get<std::string>())) +
                    " --quiet --json " + quoted(dir / "e.json"));
  ASSERT_EQ(e.code, 0) << e.output;
  const auto ej = nlohmann::json::parse(read_file(dir / "e.json"));
  EXPECT_DOUBLE_EQ(ej["top1"].get<double>(), row["top1"].get<double>());
  EXPECT_DOUBLE_EQ(ej["agreement"].get<double>(), row["agreement"].get<double>());
  EXPECT_NEAR(ej["kl"].get<double>(), row["kl"].get<double>(), 1e-9);
  write_file(dir / "file", "x");
  expect_cli_error(run_vitq(base + " --save-plans " + quoted(dir / "file")), "--save-plans");
}

// compare --exclude-calib evaluates on --data without the images drawn for calibration, matched by the file they
// are (a labels.txt that reaches the same image by another path still matches).
TEST(CliQuant, CompareExcludesCalibrationImages) {
  TempDir dir;
  const auto set = val_subset(dir.path(), 6, "set");
  // another folder whose labels.txt names the first 5 images of the set through ../set/
  std::istringstream in(read_file(set / "labels.txt"));
  std::string line, labels;
  std::vector<std::string> first5;
  for (int i = 0; i < 5 && std::getline(in, line); ++i) {
    labels += "../set/" + line + "\n";
    first5.push_back(line.substr(0, line.find(' ')));
  }
  fs::create_directories(dir / "half");
  write_file(dir / "half" / "labels.txt", labels);
  const auto drawn = vitq::sample_subset(vitq::open_dataset(set.string()), 4, 0);
  int64_t in_half = 0;
  for (const auto& s : drawn.samples)
    for (const auto& f : first5) in_half += fs::path(s.path).filename() == f;
  const std::string base = "compare " + quoted(model_dir()) + " --calib " + quoted(set) +
                           " --calib-size 4 --seed 0 --methods minmax --bits w8a8 --quiet --exclude-calib --out " + quoted(dir / "t");
  for (const auto& [data, total, excluded] : {std::tuple{set, int64_t{6}, int64_t{4}}, {dir / "half", int64_t{5}, in_half}}) {
    auto r = run_vitq(base + " --data " + quoted(data));
    ASSERT_EQ(r.code, 0) << r.output;
    const auto j = nlohmann::json::parse(read_file(dir / "t.json"));
    EXPECT_EQ(j["calibration_images_excluded"].get<int64_t>(), excluded) << data;
    EXPECT_EQ(j["images"].get<int64_t>(), total - excluded) << data;
    EXPECT_NE(read_file(dir / "t.md").find("without the " + std::to_string(excluded) + " calibration images"), std::string::npos);
  }
  // images a reconstruction would optimise on beyond the calibration batch (--recon-images) are held out too
  {
    auto r = run_vitq("compare " + quoted(model_dir()) + " --calib " + quoted(set) + " --calib-size 2 --recon-images 5 --seed 0 --data " +
                      quoted(set) + " --methods minmax+recon --recon-iters 1 --recon-batch 2 --bits w8a8 --quiet --exclude-calib --out " +
                      quoted(dir / "t"));
    ASSERT_EQ(r.code, 0) << r.output;
    const auto j = nlohmann::json::parse(read_file(dir / "t.json"));
    EXPECT_EQ(j["calibration_images_excluded"].get<int64_t>(), 5);
    EXPECT_EQ(j["images"].get<int64_t>(), 1);
    EXPECT_EQ(j["calib_size"].get<int64_t>(), 2);
  }
  // nothing left, and synthetic calibration images (which no folder holds)
  expect_cli_error(run_vitq("compare " + quoted(model_dir()) + " --calib " + quoted(set) + " --calib-size 6 --data " + quoted(set) +
                            " --methods minmax --bits w8a8 --quiet --exclude-calib --out " + quoted(dir / "u")),
                   "every image of");
  expect_cli_error(run_vitq("compare " + quoted(model_dir()) + " --calib synthetic:2 --data " + quoted(set) +
                            " --methods minmax --bits w8a8 --quiet --exclude-calib --out " + quoted(dir / "u")),
                   "--exclude-calib: the calibration images are synthetic");
  EXPECT_FALSE(fs::exists(dir / "u.json"));
}

TEST(CliQuant, NewMethodOptionsRejectNonsense) {
  TempDir dir;
  const std::string out = " --out " + quoted(dir / "p.json");
  expect_cli_error(run_vitq(quantize_args("--method fqvit --attn-bits 5" + out)), "--attn-bits must be 2-4");
  expect_cli_error(run_vitq(quantize_args("--method fqvit+attn9" + out)), "unknown method variant '+attn9'");
  expect_cli_error(run_vitq(quantize_args("--method ptq4vit --convention mine" + out)), "--convention");
  expect_cli_error(run_vitq(quantize_args("--method easyquant --rounds 0" + out)), "--rounds");
  expect_cli_error(run_vitq(quantize_args("--method ptq4vit --search-images 0" + out)), "--search-images");
}

// +adalog after any method (here min/max) through the CLI: the plan records what it replaced, and evaluates.
TEST(CliQuant, AdalogAfterAnyMethod) {
  TempDir dir;
  auto q = run_vitq(quantize_args("--method minmax+adalog --wbits 4 --abits 4 --out " + quoted(dir / "p.json")));
  ASSERT_EQ(q.code, 0) << q.output;
  const auto plan = nlohmann::json::parse(read_file(dir / "p.json"));
  EXPECT_EQ(plan["method"], "minmax+adalog");
  EXPECT_EQ(plan["version"], 5);
  int adalog = 0;
  for (const auto& p : plan["points"]) adalog += p["spec"]["kind"] == "adalog";
  EXPECT_EQ(plan["settings"]["adalog"]["replaced"].get<int>(), adalog);
  EXPECT_GT(adalog, 12);  // min/max's 4-bit uniform grid on attention probabilities and GELU outputs loses to it
  auto e = run_vitq("eval " + quoted(model_dir()) + " --plan " + quoted(dir / "p.json") + " --data " +
                    quoted(imagenet("val1000")) + " --limit 4 --quiet");
  EXPECT_EQ(e.code, 0) << e.output;
}

TEST(CliQuant, FullyQuantizedPlanEvaluates) {
  // fqvit's plan (integer LayerNorm and Log-Int-Softmax) through the CLI, end to end on 8 images
  TempDir dir;
  auto q = run_vitq(quantize_args("--method fqvit --wbits 8 --abits 8 --out " + quoted(dir / "fq.json")));
  ASSERT_EQ(q.code, 0) << q.output;
  auto e = run_vitq("eval " + quoted(model_dir()) + " --plan " + quoted(dir / "fq.json") + " --data " +
                    quoted(imagenet("val1000")) + " --limit 8 --json " + quoted(dir / "e.json"));
  ASSERT_EQ(e.code, 0) << e.output;
  EXPECT_NE(e.output.find("agreement"), std::string::npos);
}
