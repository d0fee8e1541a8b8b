// Executes a Graph with libtorch ops, batched, on CPU or CUDA.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <vector>

#include "vitq/graph/dnnl_kernels.h"
#include "vitq/graph/graph.h"

namespace vitq {

// Hooks let later stages observe or replace tensors without touching the executor:
//  - transform_input(node, slot, x): called for every activation *and* constant input of a node; return the
//    tensor the node should see (e.g. fake-quantized). Unset = identity.
//  - on_output(node, outputs): called after a node ran, e.g. to collect statistics.
//  - replace(node, inputs): return the node's outputs to run it differently (e.g. in integers); an empty
//    vector runs the node as usual.
struct ExecHooks {
  std::function<at::Tensor(const Node&, size_t slot, const at::Tensor&)> transform_input;
  std::function<std::vector<at::Tensor>(const Node&, const std::vector<at::Tensor>&)> replace;
  std::function<void(const Node&, const std::vector<at::Tensor>&)> on_output;
  // Whether the executor may run a Linear and the GELU that alone reads it as one fused kernel: the hooks must
  // neither replace the Linear nor look at or change the edge between them. Unset = no fusion under these hooks.
  std::function<bool(const Node& linear, const Node& gelu)> allow_fusion;
};

class Executor {
 public:
  explicit Executor(const Graph& graph, c10::Device device = c10::Device(c10::kCPU));

  // input: [B, 3, H, W] float32 (moved to the executor's device). Returns the graph output (logits).
  at::Tensor run(const at::Tensor& input, const ExecHooks* hooks = nullptr) const;
  // Like run, but returns every value (activations and constants), indexed by value id. For tests and passes.
  std::vector<at::Tensor> run_all(const at::Tensor& input, const ExecHooks* hooks = nullptr) const;

  // Runs nodes [begin, end) on `vals` (indexed by value id, holding at least the values those nodes read; start
  // from constants()), writing their outputs into it. `batch`: images in the batch (batch-relative reshapes).
  // For running a model piece by piece (reconstruction of one block at a time). free_dead: after each node, free
  // the activations no later node reads (release_dead), as run() does; otherwise nothing is freed.
  void run_range(std::vector<at::Tensor>& vals, size_t begin, size_t end, int64_t batch, const ExecHooks* hooks = nullptr,
                 bool free_dead = false) const;
  // Frees, after node i has run, the activations in `vals` that no later node reads: node i's inputs read last by it
  // and its outputs read by nobody. Never a constant or the graph's output.
  void release_dead(std::vector<at::Tensor>& vals, size_t i) const;
  // Graph constants on the device, indexed by value id (undefined for activations).
  const std::vector<at::Tensor>& constants() const { return consts_; }
  // value id -> index of the last node reading it (-1: nobody)
  const std::vector<int>& last_use() const { return last_use_; }

  c10::Device device() const { return device_; }
  const Graph& graph() const { return graph_; }

 private:
  void run_one(size_t i, std::vector<at::Tensor>& vals, std::vector<at::Tensor>& args, int64_t batch,
               const ExecHooks* hooks) const;
  std::vector<at::Tensor> execute(const at::Tensor& input, const ExecHooks* hooks, bool keep_all) const;

  const Graph& graph_;
  c10::Device device_;
  // oneDNN state of each Linear node (null elsewhere), and whether node i is a Linear whose output only the GELU at
  // node i + 1 reads (fused into one GEMM epilogue when no hooks watch the edge between them)
  std::vector<std::unique_ptr<DnnlLinear>> linear_;
  std::vector<std::unique_ptr<DnnlMatMul>> matmul_;
  std::vector<char> fuse_gelu_;
  std::vector<at::Tensor> consts_;    // graph constants on device_
  std::vector<int> last_use_;         // value id -> index of the last node reading it
};

// An upper bound on the elements of the largest output node n would produce from inputs `in`, computed from shapes
// and attributes alone, before anything is allocated (in double: a malformed graph's sizes may overflow int64).
// For guarding runs of untrusted graphs (shape folding at import).
double output_elements_bound(const Node& n, const std::vector<at::Tensor>& in, int64_t batch);

// Runs one node on already-resolved inputs. Exposed for constant folding.
std::vector<at::Tensor> run_node(const Node& node, const std::vector<at::Tensor>& inputs, int64_t batch);

}  // namespace vitq
