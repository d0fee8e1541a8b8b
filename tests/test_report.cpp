// `vitq report`: the HTML page is checked in a real browser (headless Chromium: it loads the file, runs its
// script, lays the SVG charts out; no console message may appear), its data against the plan it draws, and
// bad input gives one-line errors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "test_util.h"
#include "vitq/data/dataset.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/plan.h"
#include "vitq/report/histograms.h"
#include "vitq/report/html_report.h"
#include "vitq/util/error.h"

using namespace vitq::test;

namespace {

const fs::path kCommittedCompare = fs::path(VITQ_REPO_DIR) / "bench" / "results" / "compare_deit_tiny.json";

std::string chromium() {
  const char* env = std::getenv("VITQ_CHROMIUM");
  return env && *env ? env : "chromium";
}

struct PageLoad {
  int code = -1;
  std::string dom;                   // the DOM after the page's scripts ran
  std::vector<std::string> console;  // console messages (errors, uncaught exceptions, failed loads, logs)
};

// Loads `html` in headless Chromium (a private profile; no network is needed by the page).
PageLoad load_in_chromium(const fs::path& html, const TempDir& dir) {
  const fs::path dom = dir / "dom.html", log = dir / "chromium.log";
  const std::string cmd = chromium() + " --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=" +
                          quoted(dir / "profile") + " --enable-logging=stderr --v=0 --dump-dom " + quoted(fs::path("file://" + html.string())) +
                          " > " + quoted(dom) + " 2> " + quoted(log);
  PageLoad r;
  r.code = run_bash("timeout 120 " + cmd).code;
  r.dom = read_file(dom);
  std::istringstream in(read_file(log));
  for (std::string line; std::getline(in, line);)
    if (line.find(":CONSOLE") != std::string::npos) r.console.push_back(line);
  return r;
}

// <body data-charts="id:WxH:N ...">: each chart's rendered size and its count of drawn shapes.
struct ChartBox {
  int w = 0, h = 0, shapes = 0;
};
std::map<std::string, ChartBox> rendered_charts(const std::string& dom) {
  std::map<std::string, ChartBox> out;
  std::smatch m;
  if (!std::regex_search(dom, m, std::regex("data-charts=\"([^\"]*)\""))) return out;
  const std::string list = m[1];
  const std::regex item(R"(([\w-]+):(\d+)x(\d+):(\d+))");
  for (auto it = std::sregex_iterator(list.begin(), list.end(), item); it != std::sregex_iterator(); ++it)
    out[(*it)[1]] = {std::stoi((*it)[2]), std::stoi((*it)[3]), std::stoi((*it)[4])};
  return out;
}

fs::path quantize_plan(const TempDir& dir, const fs::path& data, int calib_size) {
  const fs::path plan = dir / "plan.json";
  auto q = run_vitq("quantize " + quoted(model_dir()) + " --method minmax --wbits 4 --abits 4 --calib " + quoted(data) +
                    " --calib-size " + std::to_string(calib_size) + " --layer-bits head=8,blocks.0.attn.qkv=6 --quiet --threads 2 --out " + quoted(plan));
  EXPECT_EQ(q.code, 0) << q.output;
  return plan;
}

}  // namespace

// The acceptance: the committed DeiT-Tiny compare, with a plan's per-layer charts, renders in Chromium with every
// chart present and no console message.
TEST(Report, CommittedCompareRendersInChromium) {
  TempDir dir;
  const fs::path data = val_subset(dir.path(), 8);
  const fs::path plan = quantize_plan(dir, data, 8);
  const fs::path html = dir / "report.html";
  auto r = run_vitq("report " + quoted(model_dir()) + " --plan " + quoted(plan) + " --data " + quoted(data) + " --images 8 --compare " +
                    quoted(kCommittedCompare) + " --quiet --threads 2 --out " + quoted(html));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string page = read_file(html);
  // self-contained: nothing fetched from anywhere
  for (const char* remote : {"http://", "https://", "src=\"", "<link"})
    EXPECT_EQ(page.find(remote), std::string::npos) << remote;

  PageLoad load = load_in_chromium(html, dir);
  ASSERT_EQ(load.code, 0) << "is Chromium installed (scripts/setup.sh)? set VITQ_CHROMIUM to its path";
  EXPECT_TRUE(load.console.empty()) << load.console.front();
  const auto charts = rendered_charts(load.dom);
  ASSERT_FALSE(charts.empty()) << "the page's script did not run: no data-charts on <body>";
  // compare: 5 methods x 3 bit widths, 15 points per chart (plus lines, legend); plan: 74 quantized layers
  std::vector<std::string> expected = {"chart-top1", "chart-agreement", "chart-sqnr", "chart-bits"};
  const size_t begin = page.find("id=\"vitq-data\">") + 15, end = page.find("</script>", begin);
  const auto data_json = nlohmann::json::parse(page.substr(begin, end - begin));
  const auto& hists = data_json["plan"]["histograms"];
  ASSERT_EQ(data_json["plan"]["worst"].size(), 4u);
  ASSERT_GE(hists.size(), 4u);  // each worst layer's activation inputs (an attention matmul has two)
  for (size_t k = 0; k < hists.size(); ++k) expected.push_back("chart-hist-" + std::to_string(k));
  EXPECT_EQ(charts.size(), expected.size());
  for (const auto& id : expected) {
    ASSERT_TRUE(charts.count(id)) << id << " missing from " << load.dom.substr(0, 300);
    EXPECT_GT(charts.at(id).w, 300) << id;
    EXPECT_GT(charts.at(id).h, 200) << id;
  }
  const size_t layers = data_json["plan"]["layers"].size();
  EXPECT_EQ(layers, 74u);  // DeiT-Tiny: 12 x (qkv, q@k, attn@v, proj, fc1, fc2) + patch embed + head
  EXPECT_GE(charts.at("chart-sqnr").shapes, static_cast<int>(layers));      // a bar per layer
  EXPECT_GE(charts.at("chart-bits").shapes, static_cast<int>(layers));      // a bar per layer (and per bits kind)
  EXPECT_GE(charts.at("chart-top1").shapes, 15);                            // a point per cell
  EXPECT_GE(charts.at("chart-agreement").shapes, 15);
  // the marked layers are the lowest SQNR alone
  std::vector<double> sqnr;
  for (const auto& l : data_json["plan"]["layers"]) sqnr.push_back(l["sqnr_isolated_db"].is_number() ? l["sqnr_isolated_db"].get<double>() : 1e9);
  std::sort(sqnr.begin(), sqnr.end());
  for (const auto& w : data_json["plan"]["worst"])
    for (const auto& l : data_json["plan"]["layers"])
      if (l["layer"] == w) EXPECT_LE(l["sqnr_isolated_db"].get<double>(), sqnr[3]) << w;
  // mixed precision drawn as planned: the head at 8 bits, blocks.0.attn.qkv at 6, the rest at 4
  for (const auto& l : data_json["plan"]["layers"]) {
    const int expect = l["layer"] == "head" ? 8 : l["layer"] == "blocks.0.attn.qkv" ? 6 : 4;
    if (l["wbits"].is_number()) EXPECT_EQ(l["wbits"].get<int>(), expect) << l["layer"];
  }
  // the compare table is in the page the browser built
  EXPECT_NE(load.dom.find("<td>ptq4vit</td><td>W4A4</td><td>51.30</td>"), std::string::npos);

  // the check itself can fail: the same page with a script error is caught
  std::string broken = page;
  broken.insert(broken.rfind("</body>"), "<script>undefined_function_of_the_test();</script>");
  write_file(dir / "broken.html", broken);
  PageLoad bad = load_in_chromium(dir / "broken.html", dir);
  ASSERT_EQ(bad.console.size(), 1u);
  EXPECT_NE(bad.console[0].find("undefined_function_of_the_test is not defined"), std::string::npos) << bad.console[0];
}

// The histogram's grid is every value the plan's quantizer produces, whatever its kind.
TEST(Report, HistogramGridIsTheQuantizersOutput) {
  TempDir dir;
  const fs::path data = val_subset(dir.path(), 4);
  const fs::path plan_file = quantize_plan(dir, data, 4);
  vitq::Graph g = vitq::load_model(model_dir().string());
  vitq::QuantPlan plan = vitq::load_plan(plan_file.string(), g);
  at::Tensor images = vitq::load_calibration(g, vitq::open_dataset(data.string()), 4, 0, false);
  // uniform asymmetric 4 bits per tensor: (q - zp) * scale for q = 0..15
  auto h = vitq::activation_histograms(g, plan, images, {"blocks.3.mlp.fc2"});
  ASSERT_EQ(h.size(), 1u);
  const vitq::QuantPoint& p = *plan.find("blocks.3.mlp.fc2", 0);
  const double s = p.params.scale.item<double>(), zp = p.params.zero_point.item<double>();
  ASSERT_EQ(h[0].grid.size(), 16u);
  for (int q = 0; q < 16; ++q) EXPECT_NEAR(h[0].grid[q], (q - zp) * s, 1e-6 * s) << q;
  EXPECT_DOUBLE_EQ(h[0].range_lo, h[0].grid.front());
  EXPECT_DOUBLE_EQ(h[0].range_hi, h[0].grid.back());
  int64_t total = 0;
  for (auto c : h[0].counts) total += c;
  EXPECT_EQ(total, h[0].values);
  EXPECT_EQ(h[0].values, 4 * 197 * 768);
  EXPECT_EQ(h[0].label, "A4ta");
  EXPECT_EQ(h[0].outside, 0);  // minmax on these very images: nothing beyond the range
  // the same point as a 3-bit log2 quantizer over [0, 1]: 0 and 2^-c for c = 0..7
  vitq::QuantPoint* lp = plan.find("blocks.3.mlp.fc2", 0);
  lp->spec.kind = vitq::QuantKind::Log2;
  lp->spec.bits = 3;
  lp->spec.symmetric = true;
  lp->spec.is_signed = false;
  lp->params.scale = at::ones({1});
  lp->params.zero_point = at::zeros({1});
  h = vitq::activation_histograms(g, plan, images, {"blocks.3.mlp.fc2"});
  ASSERT_EQ(h[0].grid.size(), 9u);
  EXPECT_EQ(h[0].grid[0], 0.0);
  for (int c = 0; c < 8; ++c) EXPECT_NEAR(h[0].grid[8 - c], std::ldexp(1.0, -c), 1e-7) << c;
  EXPECT_EQ(h[0].range_hi, 1.0);
  EXPECT_GT(h[0].outside, 0);  // post-GELU values beyond 2^0.5 and below 0 are cut by a [0, 1] log grid
}

// Bad input: one-line errors, and the output file left alone.
TEST(Report, BadInputIsAnError) {
  TempDir dir;
  const std::string committed = read_file(kCommittedCompare);
  const fs::path out = dir / "r.html";
  write_file(out, "precious");
  auto report = [&](const std::string& args) { return run_vitq("report " + args + " --quiet --out " + quoted(out)); };
  write_file(dir / "trunc.json", committed.substr(0, committed.size() / 2));
  expect_cli_error(report("--compare " + quoted(dir / "trunc.json")), "not a compare result (invalid or truncated JSON)");
  write_file(dir / "plan_like.json", R"({"version": 3, "model": "deit", "points": []})");
  expect_cli_error(report("--compare " + quoted(dir / "plan_like.json")), "not a compare result (no \"rows\"");
  auto j = nlohmann::json::parse(committed);
  j["shard"] = {{"index", 0}, {"count", 2}, {"cells", 15}};
  write_file(dir / "part.json", j.dump());
  expect_cli_error(report("--compare " + quoted(dir / "part.json")), "a partial result of one shard; merge the shards first");
  j.erase("shard");
  j["rows"][3].erase("agreement");
  write_file(dir / "row.json", j.dump());
  expect_cli_error(report("--compare " + quoted(dir / "row.json")), "row 3 of the compare result lacks");
  j["rows"] = nlohmann::json::array();
  write_file(dir / "empty.json", j.dump());
  expect_cli_error(report("--compare " + quoted(dir / "empty.json")), "has no rows");
  expect_cli_error(report("--compare " + quoted(dir / "missing.json")), "missing.json");
  expect_cli_error(report(""), "report needs --compare");
  expect_cli_error(report(quoted(model_dir()) + " --plan " + quoted(dir / "plan_like.json")), "needs the MODEL it quantizes and --data");
  expect_cli_error(report("--compare " + quoted(kCommittedCompare) + " --images 0"), "--images");
  EXPECT_EQ(read_file(out), "precious");
  // the output may not be an input
  expect_cli_error(run_vitq("report --compare " + quoted(dir / "row.json") + " --out " + quoted(dir / "row.json")), "--out");
  EXPECT_NE(read_file(dir / "row.json").find("\"rows\""), std::string::npos);
  // a missing output folder
  expect_cli_error(run_vitq("report --compare " + quoted(kCommittedCompare) + " --out " + quoted(dir / "no" / "r.html")), "--out");
  // compare --report with --shard: the report belongs to the merged table
  expect_cli_error(run_vitq("compare " + quoted(model_dir()) + " --calib " + quoted(imagenet("calib1000")) + " --data " +
                            quoted(imagenet("val1000")) + " --shard 0/2 --out " + quoted(dir / "s0") + " --report " + quoted(out)),
                   "--report with --shard");
  EXPECT_EQ(read_file(out), "precious");
}

// The page escapes what it shows (method names, paths come from files) and renders a compare alone.
TEST(Report, RendersACompareAloneAndEscapes) {
  auto j = nlohmann::json::parse(read_file(kCommittedCompare));
  j["rows"][0]["method"] = "<script>alert(1)</script>";
  const std::string html = vitq::render_report_html({{"compare", j}, {"compare_file", "a&b.json"}});
  EXPECT_EQ(html.find("<script>alert(1)"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("a&amp;b.json"), std::string::npos);
  for (const char* id : {"chart-top1", "chart-agreement"}) EXPECT_NE(html.find(std::string("id=\"") + id + "\""), std::string::npos);
  EXPECT_EQ(html.find("chart-sqnr"), std::string::npos);
  // every point of the compare drawn once in each chart: 15 cells
  size_t points = 0;
  for (size_t pos = 0; (pos = html.find("<circle class=\"point\"", pos)) != std::string::npos; ++pos) ++points;
  EXPECT_EQ(points, 30u);
  EXPECT_THROW(vitq::render_report_html(nlohmann::json::object()), vitq::Error);
}

// compare --report: the table's charts, and the per-layer charts of the lowest bit width's best plan (by
// agreement); --merge --report: the table's charts.
TEST(Report, CompareWritesTheReport) {
  TempDir dir;
  const fs::path data = val_subset(dir.path(), 8);
  auto r = run_vitq("compare " + quoted(model_dir()) + " --calib " + quoted(data) + " --calib-size 4 --data " + quoted(data) +
                    " --methods minmax,percentile --bits w8a8,w4a4 --quiet --threads 2 --report-images 4 --out " + quoted(dir / "c") +
                    " --report " + quoted(dir / "c.html"));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string page = read_file(dir / "c.html");
  const size_t begin = page.find("id=\"vitq-data\">") + 15, end = page.find("</script>", begin);
  const auto j = nlohmann::json::parse(page.substr(begin, end - begin));
  const auto table = nlohmann::json::parse(read_file(dir / "c.json"));
  EXPECT_EQ(j["compare"]["rows"], table["rows"]);
  // the plan drawn: the W4A4 cell with the highest agreement (the first on a tie)
  std::string best;
  double agreement = -1;
  for (const auto& row : table["rows"])
    if (row["wbits"] == 4 && row["agreement"].get<double>() > agreement) {
      agreement = row["agreement"].get<double>();
      best = row["method"].get<std::string>();
    }
  EXPECT_EQ(j["plan"]["file"], best + " W4A4 of this compare run (not saved)");
  EXPECT_EQ(j["plan"]["images"], 4);
  EXPECT_EQ(j["plan"]["layers"].size(), 74u);
  PageLoad load = load_in_chromium(dir / "c.html", dir);
  ASSERT_EQ(load.code, 0);
  EXPECT_TRUE(load.console.empty()) << load.console.front();
  const auto charts = rendered_charts(load.dom);
  for (const char* id : {"chart-top1", "chart-agreement", "chart-sqnr", "chart-bits", "chart-hist-0"})
    EXPECT_TRUE(charts.count(id)) << id;

  // the same table as a one-shard sweep, merged with --report
  auto part = table;
  part["sweep"] = {{"command", "test"}};
  part["shard"] = {{"index", 0}, {"count", 1}, {"cells", 4}};
  write_file(dir / "p0.json", part.dump());
  auto m = run_vitq("compare --merge " + quoted(dir / "p0.json") + " --out " + quoted(dir / "m") + " --report " + quoted(dir / "m.html"));
  ASSERT_EQ(m.code, 0) << m.output;
  const std::string merged = read_file(dir / "m.html");
  EXPECT_NE(merged.find("id=\"chart-top1\""), std::string::npos);
  EXPECT_EQ(merged.find("id=\"chart-sqnr\""), std::string::npos);  // no plans in a merge
}
