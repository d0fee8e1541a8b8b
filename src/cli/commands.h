#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace vitq {
struct EvalResult;
struct LayerReport;
class Graph;
struct QuantPlan;
}  // namespace vitq

namespace vitq::cli {

struct BenchOptions {
  std::string model, data, out_dir, device = "cpu", plan, onnx;
  size_t batch = 32, iters = 10, limit = 512;
  int threads = 0, workers = 1;
};
int run_bench(const BenchOptions& opt);

struct QuantArgs {
  std::string model, method = "liu2021", calib, out, weight_granularity = "channel", keep_fp, layer_bits,
      similarity = "pearson", convention = "paper";
  int wbits = 8, abits = 8, threads = 0, search_steps = 100, search_images = 8, rounds = 0, attn_bits = 4;
  size_t calib_size = 32;
  uint64_t seed = 0;
  double avg_bits = 0, percentile = 99.99;
  bool mixed_precision = false, no_ranking = false, no_bias_correction = false, quiet = false;
  // reconstruction (recon/recon.h)
  std::string reconstruct, recon_loss = "fisher", device = "cpu", start_plan;
  int recon_iters = 300, recon_batch = 8, recon_images = 0;
  int synthetic_iters = 50;  // --calib synthetic[:N]: optimisation steps (quant/synthetic.h)
  std::string synthetic_init = "natural";  // --calib synthetic[:N]: the starting noise (quant/synthetic.h)
  double synthetic_bn_weight = 100;        // --calib synthetic[:N]: weight of the BatchNorm statistics term
  double recon_lr_round = 2e-2, recon_lr_scale = 2e-3, qdrop = 0.5;
  bool recon_learn_log = false;
  bool recon_token_scales = false;
  int recon_augment = 0;
  double recon_damping = 0;
  double recon_lr_log = 2e-4;
  bool no_joint_bridges = false;
};
int run_quantize(const QuantArgs& args);

struct CompareArgs {
  QuantArgs q;
  std::string methods = "minmax,easyquant,fqvit,ptq4vit,liu2021", bits = "w8a8,w6a6,w4a4", data, out, command_line;
  size_t limit = 0;
  bool exclude_calib = false;  // evaluate on --data without the images drawn for calibration
  std::string shard;               // "I/N": run only this share of the (bits, method) cells
  std::vector<std::string> merge;  // partial results to merge into one table instead of running
  std::string report;              // also write the HTML report here (report_command.cpp)
  size_t report_images = 32;
  std::string save_plans;          // also write each cell's plan into this folder (<method>_w<W>a<A>.plan.json)
};
int run_compare(const CompareArgs& args);

struct ExportArgs {
  std::string model, plan, format, out;
  bool force = false;
};
int run_export(const ExportArgs& args);
struct RunArgs {
  std::string model, plan, runtime;
  std::vector<std::string> images;
  int top = 5, threads = 0;
};
int run_run(const RunArgs& args);
struct ReportArgs {
  std::string compare, model, plan, data, out;
  size_t images = 32;
  int worst = 4, threads = 0;
  bool quiet = false;
};
int run_report(const ReportArgs& args);
// The JSON of a compare result, whole or partial (Error: unreadable, invalid or truncated).
nlohmann::json parse_compare_json(const std::string& path);
// A compare result read and checked (Error: truncated, foreign, a partial shard, rows without numbers).
nlohmann::json read_compare_result(const std::string& path);
// The "plan" part of a report: per-layer SQNR on the first `images` of `data_dir`, the `worst` layers (lowest SQNR
// alone), their activation histograms with the plan's quantizers, bits per layer.
nlohmann::json plan_report_data(const Graph& g, const QuantPlan& plan, const std::string& plan_file, const std::string& data_dir,
                                size_t images, int worst, bool progress);
// Renders `data` (html_report.h) with versions and a time stamp into `out` (atomically).
void write_report(const std::string& out, nlohmann::json data);

// The files a MODEL argument names (itself, and the model files inside it when it is a folder).
std::vector<std::string> model_files(const std::string& model);
// The files a data folder argument names (its labels.txt).
std::vector<std::string> data_files(const std::string& dir);

void print_quant_eval(const EvalResult& r);
nlohmann::json report_json(const std::vector<LayerReport>& report);

// Sets libtorch's intra-op threads (0 = all cores) and returns the count in use.
int set_threads(int threads);

}  // namespace vitq::cli
