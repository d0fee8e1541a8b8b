// Reliability: vitq never destroys a user's file, never reports success for a failed write, never answers NaN
// or garbage, never hangs or allocates without bound, and names the file, tensor, layer or option at fault.
// One test per class of bad input (docs/reliability.md lists them).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vitq/data/dataset.h"
#include "vitq/eval/evaluate.h"
#include "vitq/graph/kernels.h"
#include "vitq/models/model_loader.h"
#include "vitq/models/safetensors.h"
#include "vitq/util/error.h"
#include "vitq/util/file_io.h"
#ifdef VITQ_WITH_ONNX
#include <onnx/onnx_pb.h>
#endif

using namespace vitq::test;

namespace {

const std::string kVitq = VITQ_BINARY;

// A copy of the DeiT-Tiny folder (config, weights) that a test may damage, with the config patched.
fs::path model_copy(const TempDir& dir, const nlohmann::json& patch = {}, const std::string& name = "model") {
  const fs::path m = dir / name;
  fs::create_directories(m);
  auto config = nlohmann::json::parse(read_file(model_dir() / "config.json"));
  if (!patch.is_null()) config.merge_patch(patch);
  write_file(m / "config.json", config.dump());
  fs::copy_file(model_dir() / "model.safetensors", m / "model.safetensors");
  return m;
}

// Four val1000 images with their labels.
fs::path image_set(const TempDir& dir, const std::string& name = "images") { return val_subset(dir.path(), 4, name); }

// One minmax W8A8 plan of the shared DeiT-Tiny (2 calibration images), made once for the suite.
class Reliability : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    auto r = run_vitq("quantize " + quoted(model_dir()) + " --calib " + quoted(imagenet("calib1000")) +
                      " --calib-size 2 --method minmax --quiet --out " + quoted(*dir_ / "plan.json"));
    ASSERT_EQ(r.code, 0) << r.output;
    plan_ = new nlohmann::json(nlohmann::json::parse(read_file(*dir_ / "plan.json")));
  }
  static void TearDownTestSuite() {
    delete plan_;
    delete dir_;
  }
  static fs::path plan_path() { return *dir_ / "plan.json"; }
  static const nlohmann::json& plan() { return *plan_; }
  // `plan` written to DIR/name; eval of 2 val1000 images under it
  static CliResult eval_plan(const TempDir& dir, const nlohmann::json& p, const std::string& extra = "") {
    write_file(dir / "p.json", p.dump());
    return run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(imagenet("val1000")) + " --limit 2 --quiet --plan " +
                    quoted(dir / "p.json") + " " + extra);
  }
  static TempDir* dir_;
  static nlohmann::json* plan_;
};
TempDir* Reliability::dir_ = nullptr;
nlohmann::json* Reliability::plan_ = nullptr;

std::string quantize_to(const fs::path& model, const fs::path& calib, const std::string& out) {
  return "quantize " + quoted(model) + " --calib " + quoted(calib) + " --calib-size 2 --method minmax --quiet --out " + out;
}

}  // namespace

// 1. An output that is (or resolves to) an input is refused before any work, and the input is untouched.
TEST_F(Reliability, OutputThatIsAnInputIsRefused) {
  TempDir dir;
  const fs::path m = model_copy(dir), data = image_set(dir);
  const std::string weights = read_file(m / "model.safetensors"), config = read_file(m / "config.json"),
                    labels = read_file(data / "labels.txt");
  expect_cli_error(run_vitq(quantize_to(m, data, quoted(m / "model.safetensors"))), "is also an input");
  fs::create_symlink(m / "model.safetensors", dir / "link.json");  // through a link
  expect_cli_error(run_vitq(quantize_to(m, data, quoted(dir / "link.json"))), "is also an input");
  expect_cli_error(run_vitq(quantize_to(m, data, quoted(data / "labels.txt"))), "is also an input");
  const std::string ev = "eval " + quoted(m) + " --data " + quoted(data) + " --quiet ";
  expect_cli_error(run_vitq(ev + "--json " + quoted(m / "config.json")), "--json");
  expect_cli_error(run_vitq(ev + "--json " + quoted(m / "model.safetensors")), "is also an input");
  expect_cli_error(run_vitq(ev + "--dump-logits " + quoted(data / "labels.txt")), "is also an input");
  expect_cli_error(run_vitq(ev + "--json " + quoted(dir / "x.json") + " --dump-logits " + quoted(dir / "x.json")),
                   "is also an input");
  fs::copy_file(plan_path(), dir / "plan.json");
  const std::string plan_before = read_file(dir / "plan.json");
  expect_cli_error(run_vitq(ev + "--plan " + quoted(dir / "plan.json") + " --report " + quoted(dir / "plan.json")),
                   "is also an input");
  expect_cli_error(run_vitq("info " + quoted(m) + " --json " + quoted(m / "config.json")), "is also an input");
  EXPECT_EQ(read_file(m / "model.safetensors"), weights);
  EXPECT_EQ(read_file(m / "config.json"), config);
  EXPECT_EQ(read_file(data / "labels.txt"), labels);
  EXPECT_EQ(read_file(dir / "plan.json"), plan_before);
}

// 2. A failed write is an error, never "wrote" with exit 0; the unwritable output is found before the work.
TEST_F(Reliability, FailedWritesAreErrors) {
  TempDir dir;
  const fs::path data = image_set(dir);
  auto r = run_vitq(quantize_to(model_dir(), data, "/dev/full"));
  expect_cli_error(r, "/dev/full: write failed");
  EXPECT_EQ(r.output.find("wrote"), std::string::npos) << r.output;
  expect_cli_error(run_vitq("info " + quoted(model_dir()) + " --json /dev/full"), "write failed");
  // compare into a folder where nothing can be created: refused before the FP32 reference is computed
  r = run_vitq("compare " + quoted(model_dir()) + " --calib " + quoted(data) + " --calib-size 2 --data " + quoted(data) +
               " --methods minmax --bits w8a8 --out /proc/vitq_results");
  expect_cli_error(r, "cannot create files in /proc");
  EXPECT_EQ(r.output.find("FP32 reference"), std::string::npos) << r.output;
  // eval: unwritable --json / --dump-logits found before the evaluation (no result lines printed)
  for (const char* opt : {"--json", "--dump-logits", "--report"}) {
    r = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(data) + " --plan " + quoted(plan_path()) + " " + opt +
                 " " + quoted(dir / "no" / "such" / "out"));
    expect_cli_error(r, "does not exist");
    EXPECT_EQ(r.output.find("top-1"), std::string::npos) << opt << ": " << r.output;
  }
  // a folder as the output
  expect_cli_error(run_vitq(quantize_to(model_dir(), data, quoted(dir.path()))), "is a folder");
  // a FIFO that nobody reads as the output: an error, not a hang
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0644), 0);
  expect_cli_error(run_bash("timeout 120 " + kVitq + " " + quantize_to(model_dir(), data, quoted(dir / "fifo"))),
                   "a FIFO (named pipe) that nobody reads");
  // a socket as the output: refused before the work
  {
    const int sock = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string sp = (dir / "sock").string();
    ASSERT_LT(sp.size(), sizeof(addr.sun_path));
    std::memcpy(addr.sun_path, sp.c_str(), sp.size() + 1);
    ASSERT_EQ(::bind(sock, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
    expect_cli_error(run_vitq(quantize_to(model_dir(), data, quoted(dir / "sock"))), "is a socket");
    ::close(sock);
  }
  // devices and pipes are written in place: --json /dev/stdout into the test's pipe
  r = run_vitq("info " + quoted(model_dir()) + " --json /dev/stdout");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("\"macs_per_image\""), std::string::npos) << r.output;
}

// 3. A write cut short (the disk fills: here a file-size limit) leaves the previous plan whole, and no temporary.
TEST_F(Reliability, WritesAreAtomic) {
  TempDir dir;
  const fs::path data = image_set(dir);
  fs::copy_file(plan_path(), dir / "plan.json");
  const std::string before = read_file(dir / "plan.json");
  ASSERT_GT(before.size(), 20000u);
  // 16 blocks of 512 bytes: far less than a plan
  auto r = run_bash("trap '' XFSZ; ulimit -f 16; " + kVitq + " " + quantize_to(model_dir(), data, quoted(dir / "plan.json")));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(error_line(r.output).find("write failed"), std::string::npos) << r.output;
  EXPECT_EQ(read_file(dir / "plan.json"), before);
  // two runs writing the same --out at once: the file is one of them, whole, and no temporary is left
  r = run_bash(kVitq + " " + quantize_to(model_dir(), data, quoted(dir / "same.json")) + " & " + kVitq + " " +
                quantize_to(model_dir(), data, quoted(dir / "same.json")) + "; wait");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NO_THROW(nlohmann::json::parse(read_file(dir / "same.json")));
  for (const auto& e : fs::directory_iterator(dir.path())) {
    const std::string name = e.path().filename().string();
    EXPECT_EQ(name.find(".tmp."), std::string::npos) << name;
    EXPECT_EQ(name.find(".vitq-probe"), std::string::npos) << name;
  }
  // eval's outputs through the same path: --json, --dump-logits, --report all complete
  r = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(data) + " --quiet --plan " + quoted(plan_path()) +
               " --json " + quoted(dir / "e.json") + " --dump-logits " + quoted(dir / "l.npy") + " --report " +
               quoted(dir / "r.json") + " --report-images 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "e.json"))["images"], 4);
  EXPECT_EQ(fs::file_size(dir / "l.npy"), 128u + 4u * 1000u * 4u);
  EXPECT_TRUE(nlohmann::json::parse(read_file(dir / "r.json"))["layers"].is_array());
}

// 4a. NaN/Inf weights, a normalisation epsilon <= 0 and absurd mean/std are refused at load, naming the culprit.
TEST_F(Reliability, NonFiniteWeightsAndBadConfigsAreRefused) {
  TempDir dir;
  {
    const fs::path m = model_copy(dir, {}, "nan");
    vitq::SafeTensorsFile f(m / "model.safetensors");
    const auto& info = f.info("blocks.3.mlp.fc1.weight");
    std::string bytes = read_file(m / "model.safetensors");
    uint64_t header = 0;
    for (int i = 7; i >= 0; --i) header = (header << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
    const float nan = std::nanf("");
    std::memcpy(bytes.data() + 8 + header + info.begin + 40, &nan, 4);
    write_file(m / "model.safetensors", bytes);
    expect_cli_error(run_vitq("info " + quoted(m)), "tensor blocks.3.mlp.fc1.weight has NaN or infinite values");
  }
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, {{"layer_norm_eps", 0.0}}, "eps0"))), "epsilon 0");
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, {{"layer_norm_eps", -1e-6}}, "epsneg"))), "epsilon");
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, {{"pretrained_cfg", {{"mean", {1e30, 0.4, 0.4}}}}}, "mean"))),
                   "pretrained_cfg.mean");
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, {{"pretrained_cfg", {{"std", {0.0, 0.2, 0.2}}}}}, "std0"))),
                   "pretrained_cfg.std");
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, {{"pretrained_cfg", {{"std", {1e-9, 0.2, 0.2}}}}}, "stdtiny"))),
                   "pretrained_cfg.std");
#ifdef VITQ_WITH_ONNX
  {  // the ONNX file with an infinite weight
    onnx::ModelProto model;
    const std::string bytes = read_file(model_dir() / "model.onnx");
    ASSERT_TRUE(model.ParseFromString(bytes));
    onnx::TensorProto* victim = nullptr;
    for (auto& init : *model.mutable_graph()->mutable_initializer())
      if (init.data_type() == onnx::TensorProto::FLOAT && init.raw_data().size() >= 64) {
        victim = &init;
        break;
      }
    ASSERT_NE(victim, nullptr);
    std::string raw = victim->raw_data();
    const float inf = std::numeric_limits<float>::infinity();
    std::memcpy(raw.data() + 4, &inf, 4);
    victim->set_raw_data(raw);
    write_file(dir / "inf.onnx", model.SerializeAsString());
    expect_cli_error(run_vitq("info " + quoted(dir / "inf.onnx")), "has NaN or infinite values");
  }
#endif
}

// 4b. Plans: scales must be normal positive floats, biases finite and weight-sized.
TEST_F(Reliability, ImplausiblePlanValuesAreRefused) {
  TempDir dir;
  auto p = plan();
  auto& act = *std::find_if(p["points"].begin(), p["points"].end(), [](const nlohmann::json& e) { return e["weight"] == false; });
  act["scale"]["data"][0] = 1e-45;
  expect_cli_error(eval_plan(dir, p), "not a normal positive float");
  act["scale"]["data"][0] = 0.0;
  expect_cli_error(eval_plan(dir, p), "not a normal positive float");
  p = plan();
  p["bias"]["blocks.0.mlp.fc2"] = {{"shape", {192}}, {"data", std::vector<float>(192, 3e38f)}};
  expect_cli_error(eval_plan(dir, p), "corrected bias of blocks.0.mlp.fc2");
}

// 4c. Non-finite results are an error naming the first layer whose output went non-finite (never "top-1 0.00%").
TEST(ReliabilityEval, NonFiniteLogitsNameTheFirstLayer) {
  vitq::Graph g = vitq::load_model(model_dir().string());
  const auto v = g.find_value("blocks.5.attn.proj.weight");
  ASSERT_TRUE(v.has_value());
  g.consts[static_cast<size_t>(*v)] = g.consts[static_cast<size_t>(*v)] * std::numeric_limits<float>::infinity();
  vitq::Dataset data = vitq::open_dataset(imagenet("val1000").string());
  vitq::EvalOptions opt;
  opt.limit = 2;
  opt.progress = false;
  try {
    vitq::evaluate(g, data, opt);
    FAIL() << "no error";
  } catch (const vitq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("first layer with a non-finite output is blocks.5.attn.proj"), std::string::npos)
        << e.what();
  }
}

// 5. FIFOs never block; sizes derived from input are bounded.
TEST_F(Reliability, FifosAndHugeSizesAreRefused) {
  TempDir dir;
  const fs::path data = image_set(dir);
  // every input as a FIFO: a one-line error at once (the test's `timeout` turns a hang into a failure)
  const fs::path fm = dir / "fifo_model";
  fs::create_directories(fm);
  fs::copy_file(model_dir() / "config.json", fm / "config.json");
  ASSERT_EQ(::mkfifo((fm / "model.safetensors").c_str(), 0644), 0);
  expect_cli_error(run_bash("timeout 60 " + kVitq + " info " + quoted(fm)), "not a regular file");
  const fs::path fc = dir / "fifo_config";
  fs::create_directories(fc);
  fs::copy_file(model_dir() / "model.safetensors", fc / "model.safetensors");
  ASSERT_EQ(::mkfifo((fc / "config.json").c_str(), 0644), 0);
  expect_cli_error(run_bash("timeout 60 " + kVitq + " info " + quoted(fc)), "FIFO");
  const fs::path fl = dir / "fifo_labels";
  fs::create_directories(fl);
  ASSERT_EQ(::mkfifo((fl / "labels.txt").c_str(), 0644), 0);
  expect_cli_error(run_bash("timeout 60 " + kVitq + " eval " + quoted(model_dir()) + " --data " + quoted(fl)), "FIFO");
  ASSERT_EQ(::mkfifo((dir / "plan.fifo").c_str(), 0644), 0);
  expect_cli_error(run_bash("timeout 60 " + kVitq + " eval " + quoted(model_dir()) + " --data " + quoted(data) + " --plan " +
                             quoted(dir / "plan.fifo")),
                   "FIFO");
  const fs::path fi = dir / "fifo_images";
  fs::create_directories(fi);
  ASSERT_EQ(::mkfifo((fi / "a.png").c_str(), 0644), 0);
  write_file(fi / "labels.txt", "a.png 1\n");
  auto r = run_bash("timeout 60 " + kVitq + " eval " + quoted(model_dir()) + " --data " + quoted(fi) + " --quiet");
  EXPECT_NE(r.output.find("a.png: the image is a FIFO"), std::string::npos) << r.output;
  expect_cli_error(r, "no image");
  // crop_pct 1e-6 would resize every image to 224/1e-6 pixels a side
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, {{"pretrained_cfg", {{"crop_pct", 1e-6}}}}, "crop"))), "crop_pct");
  // input_size 100000 would allocate a 120 GB position embedding
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, {{"pretrained_cfg", {{"input_size", {3, 100000, 100000}}}}}, "big"))),
                   "100000");
  // a 20000x1 PNG (a few hundred bytes) would resize to 224 x 4.5 million pixels: skipped, naming the file
  const fs::path thin = dir / "thin";
  fs::create_directories(thin);
  write_png(thin / "strip.png", 20000, 1);
  fs::copy_file(data / "labels.txt", thin / "labels.txt");
  for (const auto& e : fs::directory_iterator(data))
    if (e.path().extension() == ".JPEG") fs::copy_file(e.path(), thin / e.path().filename());
  write_file(thin / "labels.txt", read_file(thin / "labels.txt") + "strip.png 3\n");
  r = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(thin) + " --quiet");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("strip.png: image 20000x1: its aspect ratio is too extreme"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("4 images evaluated, 1 unreadable"), std::string::npos) << r.output;
  // thread counts
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(data) + " --threads 1024"), "--threads 1024");
}

// 6. A malformed plan fails at load, before any evaluation.
TEST_F(Reliability, MalformedPlanSettingsFailAtLoad) {
  TempDir dir;
  auto p = plan();
  p["settings"] = nlohmann::json::array({1, 2});
  auto r = eval_plan(dir, p);
  expect_cli_error(r, "plan settings must be a JSON object");
  EXPECT_EQ(r.output.find("top-1"), std::string::npos);
  p = plan();
  p["settings"]["wbits"] = "eight";
  expect_cli_error(eval_plan(dir, p), "settings.wbits");
}

// 7. Invalid values are errors, not silently read as something else.
TEST_F(Reliability, InvalidValuesAreNotSilentlyAccepted) {
  TempDir dir;
  const fs::path data = image_set(dir);
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(data) + " --limit -5"), "--limit");
  expect_cli_error(run_vitq("compare " + quoted(model_dir()) + " --calib " + quoted(data) + " --data " + quoted(data) +
                            " --limit -1 --out " + quoted(dir / "c")),
                   "--limit");
  const std::string q = "quantize " + quoted(model_dir()) + " --calib " + quoted(data) + " --calib-size 2 --quiet --out " +
                        quoted(dir / "q.json") + " ";
  expect_cli_error(run_vitq(q + "--method liu2021 --mixed-precision --avg-bits nan"), "--avg-bits must be between 2 and 8");
  expect_cli_error(run_vitq(q + "--method liu2021+mp --avg-bits 0.5"), "--avg-bits must be between 2 and 8");
  expect_cli_error(run_vitq(q + "--method minmax --layer-bits head=4x"), "'4x' is not a number of bits");
  expect_cli_error(run_vitq(q + "--method percentile --percentile nan"), "--percentile");
  expect_cli_error(run_vitq(q + "--method fqvit --attn-bits 12"), "--attn-bits must be between 2 and 8");
  EXPECT_FALSE(fs::exists(dir / "q.json"));
  // plans
  auto p = plan();
  p["points"].push_back(p["points"][0]);
  p["points"].back()["scale"]["data"][0] = p["points"][0]["scale"]["data"][0].get<double>() * 2;
  expect_cli_error(eval_plan(dir, p), "is listed twice");
  p = plan();
  p["points"] = nlohmann::json::array();
  expect_cli_error(eval_plan(dir, p), "quantizes nothing");
  p = plan();
  p["points"][0]["slot"] = uint64_t{1} << 40;
  expect_cli_error(eval_plan(dir, p), "'slot' is 1099511627776");
  p = plan();
  p["points"][0]["spec"]["bits"] = 8.7;
  expect_cli_error(eval_plan(dir, p), "'bits' must be an integer");
  p = plan();
  p["points"][0]["scale"]["shape"] = {-1};
  expect_cli_error(eval_plan(dir, p), "malformed plan");
}

// 8. A safetensors file truncated while it is read: an error naming the file and tensor, not SIGBUS.
TEST(ReliabilityFiles, SafetensorsTruncatedWhileReading) {
  TempDir dir;
  fs::copy_file(model_dir() / "model.safetensors", dir / "w.safetensors");
  vitq::SafeTensorsFile f((dir / "w.safetensors").string());
  EXPECT_EQ(f.get("cls_token").numel(), 192);
  ASSERT_EQ(::truncate((dir / "w.safetensors").c_str(), 4096), 0);  // another process cuts the file
  try {
    f.get("head.weight");
    FAIL() << "no error";
  } catch (const vitq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor head.weight could not be read"), std::string::npos) << e.what();
  }
  // and a header that claims an astronomically large tensor: no overflow, an error
  std::string header = R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  write_file(dir / "huge.safetensors", bytes + header);
  EXPECT_THROW(vitq::SafeTensorsFile((dir / "huge.safetensors").string()), vitq::Error);
}

// 9. Messages name what they are about, not raw library text.
TEST_F(Reliability, MessagesNameTheirSubject) {
  TempDir dir;
  const fs::path data = image_set(dir);
  // a config field of the wrong JSON type names the file
  const fs::path m = model_copy(dir, {{"pretrained_cfg", {{"mean", "grey"}}}}, "typed");
  auto r = run_vitq("info " + quoted(m));
  expect_cli_error(r, (m / "config.json").string());
  // a plan whose per-channel activation axis does not exist in the tensor: the layer is named
  auto p = plan();
  auto& act = *std::find_if(p["points"].begin(), p["points"].end(),
                            [](const nlohmann::json& e) { return e["weight"] == false && e["node"] == "blocks.0.attn.qkv"; });
  act["spec"]["granularity"] = "channel";
  act["spec"]["axis"] = 7;
  act["scale"] = {{"shape", {3}}, {"data", {0.1, 0.1, 0.1}}};
  act["zero_point"] = {{"shape", {3}}, {"data", {128, 128, 128}}};
  r = eval_plan(dir, p);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_LT(r.code, 128) << r.output;
  EXPECT_NE(error_line(r.output).find("blocks.0.attn.qkv"), std::string::npos) << r.output;
  // missing files: the path and what it was meant to be
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(data) + " --plan " + quoted(dir / "none.json")),
                   "none.json: cannot open plan");
}

// Fuzz finding F1: a softmax row holding inf (inf - inf = NaN) went through a float-to-int conversion of NaN
// (undefined behaviour; UBSan stops there). The result is NaN, for evaluate's check to name the layer.
TEST(ReliabilityKernels, SoftmaxOfNonFiniteRowsIsNaNNotUndefined) {
  at::Tensor x = at::randn({4, 37});
  x[1][5] = std::numeric_limits<float>::infinity();
  x[2][0] = std::numeric_limits<float>::quiet_NaN();
  x[3].fill_(-std::numeric_limits<float>::infinity());
  const at::Tensor y = vitq::softmax_lastdim(x);
  EXPECT_TRUE(at::isfinite(y[0]).all().item<bool>());
  EXPECT_TRUE(at::allclose(y[0], at::softmax(x[0], -1), 1e-5, 1e-7));
  EXPECT_TRUE(at::isnan(y[1]).any().item<bool>());
  EXPECT_TRUE(at::isnan(y[2]).all().item<bool>());
  EXPECT_TRUE(at::isnan(y[3]).all().item<bool>());
}

// Fuzz finding F2: JSON floats where integers belong (img_size 1e30, a shape of [1e30]) were converted with a
// plain cast (undefined behaviour) before any range check; now they are errors naming the file and field.
TEST_F(Reliability, HugeJsonNumbersAreErrors) {
  TempDir dir;
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, {{"img_size", 1e30}}, "img"))), "img_size is 1e+30");
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, {{"pretrained_cfg", {{"input_size", {3, 1e42, 224}}}}}, "in"))),
                   "pretrained_cfg.input_size[1]");
  const std::string header = R"({"x":{"dtype":"F32","shape":[1e30],"data_offsets":[0,4]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  write_file(dir / "f.safetensors", bytes + header + "abcd");
  try {
    vitq::SafeTensorsFile f((dir / "f.safetensors").string());
    FAIL() << "no error";
  } catch (const vitq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("x.shape[0] is 1e+30"), std::string::npos) << e.what();
  }
  auto p = plan();
  p["points"][0]["scale"]["shape"] = {1e30, 1};
  expect_cli_error(eval_plan(dir, p), "'shape' must be an integer");
}
