// Bad input through the real binary: a one-line error naming the problem and a nonzero exit, never a crash.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#ifdef VITQ_WITH_ONNX
#include <onnx/onnx_pb.h>
#endif

using namespace vitq::test;

namespace {

// A model directory whose config.json is the real one with `patch` applied, next to `weights`.
fs::path model_copy(const TempDir& dir, const std::string& weights_bytes, const nlohmann::json& patch = {}) {
  auto config = nlohmann::json::parse(read_file(model_dir() / "config.json"));
  if (!patch.is_null()) config.merge_patch(patch);
  write_file(dir / "config.json", config.dump());
  write_file(dir / "model.safetensors", weights_bytes);
  return dir.path();
}

// An image set of two real val1000 images plus the extra files given.
fs::path image_set(const TempDir& dir, const std::vector<std::pair<std::string, std::string>>& extra,
                   const std::string& labels_extra = "") {
  auto val = imagenet("val1000");
  std::string labels = read_file(val / "labels.txt");
  std::istringstream in(labels);
  std::string line, out;
  for (int i = 0; i < 2 && std::getline(in, line); ++i) {
    std::string file = line.substr(0, line.find(' '));
    fs::copy_file(val / file, dir / file);
    out += line + "\n";
  }
  for (const auto& [name, bytes] : extra) {
    write_file(dir / name, bytes);
    out += name + " 1\n";
  }
  write_file(dir / "labels.txt", out + labels_extra);
  return dir.path();
}
}  // namespace

TEST(Cli, MissingModel) { expect_cli_error(run_vitq("info /nonexistent/model"), "model not found: /nonexistent/model"); }

TEST(Cli, TruncatedSafetensors) {
  TempDir dir;
  std::string real = read_file(model_dir() / "model.safetensors");
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, real.substr(0, real.size() / 2)))), "truncated");
}

TEST(Cli, CorruptSafetensors) {
  TempDir dir;
  std::string real = read_file(model_dir() / "model.safetensors");
  for (size_t i = 8; i < 40; ++i) real[i] = '#';  // scribble over the JSON header
  expect_cli_error(run_vitq("info " + quoted(model_copy(dir, real))), "corrupt safetensors header");
}

TEST(Cli, ConfigDisagreesWithTensors) {
  TempDir dir;
  auto path = model_copy(dir, read_file(model_dir() / "model.safetensors"), {{"embed_dim", 384}, {"num_heads", 6}});
  expect_cli_error(run_vitq("info " + quoted(path)), "tensor patch_embed.proj.weight has shape [192, 3, 16, 16] but the config implies [384, 3, 16, 16]");
  TempDir deeper;
  path = model_copy(deeper, read_file(model_dir() / "model.safetensors"), {{"depth", 10}});
  expect_cli_error(run_vitq("info " + quoted(path)), "tensor blocks.10.attn.proj.bias is not used");
}

TEST(Cli, UnknownModelFormat) {
  TempDir dir;
  write_file(dir / "model.bin", "x");
  expect_cli_error(run_vitq("info " + quoted(dir / "model.bin")), "unknown model format");
}

#ifdef VITQ_WITH_ONNX
TEST(Cli, OnnxWithUnsupportedOp) {
  onnx::ModelProto model;
  model.set_ir_version(8);
  model.add_opset_import()->set_version(17);
  auto* graph = model.mutable_graph();
  graph->set_name("tiny");
  auto* in = graph->add_input();
  in->set_name("input");
  auto* tt = in->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  for (int d : {1, 3, 8, 8}) tt->mutable_shape()->add_dim()->set_dim_value(d);
  graph->add_output()->set_name("out");
  auto* node = graph->add_node();
  node->set_op_type("NonMaxSuppression");
  node->set_name("nms0");
  node->add_input("input");
  node->add_output("out");
  TempDir dir;
  {
    std::ofstream f(dir / "model.onnx", std::ios::binary);
    ASSERT_TRUE(model.SerializeToOstream(&f));
  }
  expect_cli_error(run_vitq("info " + quoted(dir / "model.onnx")), "unsupported ONNX op NonMaxSuppression (node nms0)");
  write_file(dir / "garbage.onnx", "definitely not protobuf \x01\x02\x03");
  expect_cli_error(run_vitq("info " + quoted(dir / "garbage.onnx")), "garbage.onnx");
}
#endif

TEST(Cli, CorruptImageIsReportedAndCounted) {
  TempDir dir;
  auto data = image_set(dir, {{"broken.JPEG", std::string("\xFF\xD8\xFF\xE0garbage-after-the-marker", 28)},
                              {"text.JPEG", "just some text"}});
  auto r = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(data) + " --quiet");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("broken.JPEG"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("text.JPEG: not a JPEG or PNG image"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2 images evaluated, 2 unreadable and skipped"), std::string::npos) << r.output;
  // --strict stops at the first one, naming it
  auto s = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(data) + " --quiet --strict");
  expect_cli_error(s, "broken.JPEG");
  EXPECT_NE(error_line(s.output).find("--strict"), std::string::npos);
}

TEST(Cli, MissingImageFileIsReported) {
  TempDir dir;
  auto data = image_set(dir, {}, "not_there.JPEG 5\n");
  auto r = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(data) + " --quiet");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("not_there.JPEG: cannot open image"), std::string::npos) << r.output;
}

TEST(Cli, EmptyDataSet) {
  TempDir dir;
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(dir.path())), "is empty");
  write_file(dir / "labels.txt", "\n");
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(dir.path())), "is empty");
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data /nonexistent/images"), "data set not found");
}

TEST(Cli, AllImagesUnreadable) {
  TempDir dir;
  write_file(dir / "a.jpg", "x");
  write_file(dir / "labels.txt", "a.jpg 0\n");
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(dir.path()) + " --quiet"), "no image of");
}

TEST(Cli, LabelOutsideClasses) {
  TempDir dir;
  auto data = image_set(dir, {}, "");
  write_file(dir / "labels.txt", read_file(dir / "labels.txt") + "extra.JPEG 1000\n");
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(data)), "label 1000 is outside the model's 1000 classes");
}

TEST(Cli, NonsenseOptions) {
  auto r = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(imagenet("val1000")) + " --batch 0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--batch"), std::string::npos) << r.output;
  r = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(imagenet("val1000")) + " --device tpu");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--device"), std::string::npos) << r.output;
  r = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(imagenet("val1000")) + " --device cuda --limit 2 --quiet");
  if (r.code != 0) EXPECT_NE(error_line(r.output).find("--device cuda"), std::string::npos) << r.output;
  r = run_vitq("eval " + quoted(model_dir()) + " --data " + quoted(imagenet("val1000")) + " --threads -3");
  EXPECT_NE(r.code, 0);
  r = run_vitq("frobnicate");
  EXPECT_NE(r.code, 0);
}

TEST(Cli, InfoAndEvalWork) {
  auto r = run_vitq("info " + quoted(model_dir()));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("5717416"), std::string::npos);
  EXPECT_NE(r.output.find("1.254 GFLOPs"), std::string::npos);
  EXPECT_NE(r.output.find("blocks.11.attn.matmul_av"), std::string::npos);
  TempDir dir;
  r = run_vitq("eval " + quoted(model_dir() / "model.onnx") + " --data " + quoted(imagenet("val1000")) +
               " --limit 64 --batch 16 --threads 2 --json " + quoted(dir / "r.json"));
  EXPECT_EQ(r.code, 0) << r.output;
  auto j = nlohmann::json::parse(read_file(dir / "r.json"));
  EXPECT_EQ(j["images"], 64);
  EXPECT_EQ(j["threads"], 2);
  EXPECT_GT(j["top1"].get<double>(), 70.0);
}
