// The public library API (include/vitq/vitq.h) over vitq's internals: every internal error becomes
// vitq::api::Error with the same one-line message.
#include "vitq/vitq.h"

#include <ATen/ATen.h>

#include "vitq/data/dataset.h"
#include "vitq/eval/evaluate.h"
#include "vitq/eval/model_stats.h"
#include "vitq/methods/method.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/quant/plan.h"
#include "vitq/util/error.h"
#include "vitq/util/file_io.h"
#ifdef VITQ_WITH_ONNX
#include "vitq/deploy/onnx_export.h"
#endif

namespace vitq::api {

struct Model::Impl {
  Graph graph;
};
struct ImageSet::Impl {
  Dataset data;
};
struct Plan::Impl {
  QuantPlan plan;
};

namespace {
// Runs `f`, turning any exception into vitq::api::Error (one line).
template <class F>
auto translating(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const api::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw api::Error(first_line(e.what()));
  }
}
}  // namespace

std::string version() { return "0.1.0"; }

Model Model::load(const std::string& path) {
  return translating([&] {
    Model m;
    m.impl_ = std::make_shared<const Impl>(Impl{load_model(path)});
    return m;
  });
}
std::string Model::name() const { return impl_->graph.meta.name; }
int64_t Model::num_classes() const { return impl_->graph.meta.num_classes; }
int64_t Model::parameters() const {
  return translating([&] { return model_stats(impl_->graph).parameters; });
}
std::vector<std::string> Model::quantizable_layers() const {
  return translating([&] {
    std::vector<std::string> out;
    for (const auto& l : model_stats(impl_->graph).quantizable) out.push_back(l.name);
    return out;
  });
}

ImageSet ImageSet::open(const std::string& dir) {
  return translating([&] {
    ImageSet s;
    s.impl_ = std::make_shared<const Impl>(Impl{open_dataset(dir)});
    return s;
  });
}
size_t ImageSet::size() const { return impl_->data.samples.size(); }

Plan Plan::load(const std::string& path, const Model& model) {
  return translating([&] {
    Plan p;
    p.impl_ = std::make_shared<const Impl>(Impl{load_plan(path, model.impl().graph)});
    return p;
  });
}
void Plan::save(const std::string& path) const {
  translating([&] { save_plan(impl_->plan, path); });
}
std::string Plan::method() const { return impl_->plan.method; }
size_t Plan::quantizers() const { return impl_->plan.points.size(); }
std::string Plan::summary() const { return plan_summary(impl_->plan); }

Plan quantize(const Model& model, const ImageSet& calib, const QuantizeOptions& o) {
  return translating([&] {
    if (o.wbits < 2 || o.wbits > 8) fail("wbits must be between 2 and 8, got {}", o.wbits);
    if (o.abits < 2 || o.abits > 8) fail("abits must be between 2 and 8, got {}", o.abits);
    if (o.convention != "paper" && o.convention != "common") fail("convention must be paper or common, got '{}'", o.convention);
    const Graph& g = model.impl().graph;
    MethodOptions mo;
    mo.placement.wbits = o.wbits;
    mo.placement.abits = o.abits;
    mo.seed = o.seed;
    mo.progress = o.progress;
    mo.convention = o.convention;
    at::Tensor images = load_calibration(g, calib.impl().data, o.calib_size, o.seed, o.progress);
    Plan p;
    QuantPlan plan = run_method(g, images, o.method, mo);
    plan.method = o.method;
    p.impl_ = std::make_shared<const Plan::Impl>(Plan::Impl{std::move(plan)});
    return p;
  });
}

EvalReport evaluate(const Model& model, const ImageSet& images, const EvalOptions& o) {
  return translating([&] {
    vitq::EvalOptions eo;
    eo.plan = o.plan ? &o.plan->impl().plan : nullptr;
    eo.limit = o.limit;
    eo.batch = o.batch;
    eo.progress = o.progress;
    const EvalResult r = vitq::evaluate(model.impl().graph, images.impl().data, eo);
    EvalReport out;
    out.images = r.images;
    out.unreadable = r.failed;
    out.top1 = r.top1_pct();
    out.top5 = r.top5_pct();
    if (o.plan) {
      out.fp32_top1 = r.fp_top1_pct();
      out.agreement = r.agreement_pct();
      out.kl = r.mean_kl();
    }
    out.images_per_second = r.images_per_second();
    return out;
  });
}

void export_onnx(const Model& model, const Plan* plan, const std::string& path, bool overwrite) {
  translating([&] {
#ifdef VITQ_WITH_ONNX
    const ExportResult r = vitq::export_onnx(model.impl().graph, plan ? &plan->impl().plan : nullptr);
    write_file_atomic(path, r.bytes, overwrite);
#else
    fail("this vitq was built without ONNX support (libonnx-dev)");
#endif
  });
}

}  // namespace vitq::api
