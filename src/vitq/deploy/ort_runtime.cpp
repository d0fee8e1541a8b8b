#include "vitq/deploy/ort_runtime.h"

#include <ATen/ATen.h>
#include <dlfcn.h>

#include <mutex>
#include <vector>

#include "vitq/util/error.h"

#if VITQ_HAVE_ORT_HEADERS
#include <onnxruntime_c_api.h>
#endif

namespace vitq {

#if VITQ_HAVE_ORT_HEADERS

namespace {

const OrtApi* g_api = nullptr;

std::vector<std::string> candidate_libraries() {
  std::vector<std::string> c;
  if (const char* env = std::getenv("VITQ_ORT_LIB"); env && *env) c.emplace_back(env);
#ifdef VITQ_ORT_DEFAULT_LIB
  c.emplace_back(VITQ_ORT_DEFAULT_LIB);
#endif
  c.emplace_back("libonnxruntime.so.1");
  return c;
}

void check(OrtStatus* s, const std::string& what) {
  if (!s) return;
  std::string msg = g_api->GetErrorMessage(s);
  g_api->ReleaseStatus(s);
  fail("onnxruntime: {}: {}", what, first_line(msg));
}

}  // namespace

const OrtAvailability& ort_available() {
  static OrtAvailability result;
  static std::once_flag once;
  std::call_once(once, [] {
    std::string tried;
    for (const auto& lib : candidate_libraries()) {
      void* h = ::dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!h) {
        tried += (tried.empty() ? "" : "; ") + lib;
        continue;
      }
      using GetBase = const OrtApiBase* (*)();
      auto get = reinterpret_cast<GetBase>(::dlsym(h, "OrtGetApiBase"));
      if (!get) {
        tried += (tried.empty() ? "" : "; ") + lib + " (no OrtGetApiBase)";
        continue;
      }
      const OrtApiBase* base = get();
      const OrtApi* api = base->GetApi(ORT_API_VERSION);
      if (!api) {
        result.why = fmt::format("{} ({}) does not offer C API version {}", lib, base->GetVersionString(), ORT_API_VERSION);
        return;
      }
      g_api = api;
      result.ok = true;
      result.library = lib;
      result.version = base->GetVersionString();
      return;
    }
    result.why = fmt::format("ONNX Runtime not found (tried {}; run scripts/setup.sh or set VITQ_ORT_LIB)", tried);
  });
  return result;
}

struct OrtModel::Impl {
  std::string label;
  OrtEnv* env = nullptr;
  OrtSession* session = nullptr;
  OrtMemoryInfo* mem = nullptr;
  std::string input_name, output_name;
  ~Impl() {
    if (!g_api) return;
    if (mem) g_api->ReleaseMemoryInfo(mem);
    if (session) g_api->ReleaseSession(session);
    if (env) g_api->ReleaseEnv(env);
  }
};

namespace {
std::unique_ptr<OrtModel::Impl> make_session(const std::string& label, int threads, const std::string* path, const std::string* bytes);
}

OrtModel::OrtModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OrtModel::OrtModel(OrtModel&&) noexcept = default;
OrtModel& OrtModel::operator=(OrtModel&&) noexcept = default;
OrtModel::~OrtModel() = default;
const std::string& OrtModel::label() const { return impl_->label; }

OrtModel OrtModel::from_file(const std::string& path, int threads) { return OrtModel(make_session(path, threads, &path, nullptr)); }
OrtModel OrtModel::from_bytes(const std::string& bytes, int threads, const std::string& label) {
  return OrtModel(make_session(label, threads, nullptr, &bytes));
}

namespace {
std::unique_ptr<OrtModel::Impl> make_session(const std::string& label, int threads, const std::string* path, const std::string* bytes) {
  const auto& av = ort_available();
  if (!av.ok) fail("{}", av.why);
  auto m = std::make_unique<OrtModel::Impl>();
  m->label = label;
  check(g_api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "vitq", &m->env), "creating the environment");
  OrtSessionOptions* so = nullptr;
  check(g_api->CreateSessionOptions(&so), "session options");
  struct Release {
    OrtSessionOptions* so;
    ~Release() { g_api->ReleaseSessionOptions(so); }
  } release{so};
  if (threads > 0) check(g_api->SetIntraOpNumThreads(so, threads), "setting threads");
  check(g_api->SetInterOpNumThreads(so, 1), "setting threads");
  GraphOptimizationLevel level = ORT_ENABLE_ALL;
  if (const char* env = std::getenv("VITQ_ORT_OPT_LEVEL"); env && *env) {
    const std::string v = env;
    level = v == "0" ? ORT_DISABLE_ALL : v == "1" ? ORT_ENABLE_BASIC : v == "2" ? ORT_ENABLE_EXTENDED : ORT_ENABLE_ALL;
  }
  check(g_api->SetSessionGraphOptimizationLevel(so, level), "optimisation level");
  const std::string what = "loading " + label;
  if (path) check(g_api->CreateSession(m->env, path->c_str(), so, &m->session), what);
  else check(g_api->CreateSessionFromArray(m->env, bytes->data(), bytes->size(), so, &m->session), what);
  check(g_api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &m->mem), "memory info");
  OrtAllocator* alloc = nullptr;
  check(g_api->GetAllocatorWithDefaultOptions(&alloc), "allocator");
  char* name = nullptr;
  check(g_api->SessionGetInputName(m->session, 0, alloc, &name), "input name");
  m->input_name = name;
  check(g_api->AllocatorFree(alloc, name), "free");
  check(g_api->SessionGetOutputName(m->session, 0, alloc, &name), "output name");
  m->output_name = name;
  check(g_api->AllocatorFree(alloc, name), "free");
  return m;
}
}  // namespace

at::Tensor OrtModel::run(const at::Tensor& input_in) const {
  auto input = input_in.to(at::kCPU, at::kFloat).contiguous();
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  OrtValue* in = nullptr;
  check(g_api->CreateTensorWithDataAsOrtValue(impl_->mem, input.data_ptr(), static_cast<size_t>(input.numel()) * sizeof(float),
                                              shape.data(), shape.size(), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &in),
        "input tensor");
  OrtValue* out = nullptr;
  const char* in_names[] = {impl_->input_name.c_str()};
  const char* out_names[] = {impl_->output_name.c_str()};
  OrtStatus* s = g_api->Run(impl_->session, nullptr, in_names, &in, 1, out_names, 1, &out);
  g_api->ReleaseValue(in);
  check(s, "running " + impl_->label);
  struct ReleaseValue {
    OrtValue* v;
    ~ReleaseValue() { g_api->ReleaseValue(v); }
  } keep{out};
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(g_api->GetTensorTypeAndShape(out, &info), "output shape");
  size_t rank = 0;
  ONNXTensorElementDataType type{};
  OrtStatus* st = g_api->GetTensorElementType(info, &type);
  if (!st) st = g_api->GetDimensionsCount(info, &rank);
  std::vector<int64_t> dims(rank);
  if (!st) st = g_api->GetDimensions(info, dims.data(), rank);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  check(st, "output shape");
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail("onnxruntime: {}: the output is not float32", impl_->label);
  void* data = nullptr;
  check(g_api->GetTensorMutableData(out, &data), "output data");
  return at::from_blob(data, dims, at::kFloat).clone();
}

#else  // built without the ONNX Runtime headers

const OrtAvailability& ort_available() {
  static OrtAvailability result{false, "", "", "this vitq was built without the ONNX Runtime headers (run scripts/setup.sh and rebuild)"};
  return result;
}
struct OrtModel::Impl {
  std::string label;
};
OrtModel::OrtModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OrtModel::OrtModel(OrtModel&&) noexcept = default;
OrtModel& OrtModel::operator=(OrtModel&&) noexcept = default;
OrtModel::~OrtModel() = default;
const std::string& OrtModel::label() const { return impl_->label; }
OrtModel OrtModel::from_file(const std::string&, int) { fail("{}", ort_available().why); }
OrtModel OrtModel::from_bytes(const std::string&, int, const std::string&) { fail("{}", ort_available().why); }
at::Tensor OrtModel::run(const at::Tensor&) const { fail("{}", ort_available().why); }

#endif

}  // namespace vitq
