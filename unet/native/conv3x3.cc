// A 3x3 convolution (padding 1, stride 1, with bias) for inference, on oneDNN's Winograd kernel.
//
// Loaded by unet/native through MXNet's custom-operator library API (mx.library.load): the
// operator `unet_conv3x3(data, weight, bias)` computes what mxnet.gluon.nn.Conv2D(kernel_size=3,
// padding=1) computes, for data (N, C, H, W), weight (K, C, 3, 3) and bias (K,), into
// (N, K, H, W). MXNet 1.9.1 asks its bundled oneDNN for the direct algorithm only; this file links
// oneDNN 2.6 from the onednn-cpu-gomp wheel and asks for F(4x4, 3x3) Winograd, which does
// ~2.3-3.5x fewer multiplications and runs the U-Net's layers 2.3-4.8x faster on an AVX-512 CPU
// (float32 all the way; outputs differ from the direct algorithm by rounding, ~1e-5 relative).
//
// Forward only: no gradient, so the network that uses it is for inference. MXNet re-creates an
// operator's state on most calls, so what is worth keeping lives here, process-wide, under one
// lock: the primitives of each shape, and the weights in Winograd's layout (a transform of a
// 1024x1024 layer takes ~170 ms, its convolution ~25 ms) together with a copy of the weights they
// came from, found by content and compared in full on every call (~1% of the call; neither the
// weights' address nor MXNet's version counter identifies them: MXNet may pass a new copy on
// every call, and a freed array's address comes back with other weights at the same version).
// Where oneDNN has no Winograd kernel for a shape or a CPU, it falls back to oneDNN's own choice.
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"
#include "oneapi/dnnl/dnnl.hpp"

using namespace mxnet::ext;

namespace {

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Primitives and buffers for one input shape and output channel count.
struct Plan {
  dnnl::convolution_forward conv;
  dnnl::memory::desc weights_md, plain_src_md, plain_weights_md, plain_dst_md;
  dnnl::memory src, dst;   // in the convolution's own layouts, unless those are plain
  bool src_plain = false, dst_plain = false;
};

// Weights in the convolution's layout, and the plain weights they were made from.
struct Packed {
  std::vector<float> plain;
  dnnl::memory::desc md;
  dnnl::memory memory;
};

constexpr size_t kMaxCached = 512;     // entries per cache; both are emptied when full

std::mutex cache_lock;
std::map<std::vector<int64_t>, std::unique_ptr<Plan>> plans;    // key: N, C, H, W, K
std::map<std::vector<uint64_t>, std::unique_ptr<Packed>> packed_weights;  // key: K, C, 3, 3, fingerprint

std::unique_ptr<Plan> make_plan(const dnnl::memory::dims& src_dims, int64_t out_channels) {
  auto plan = std::make_unique<Plan>();
  auto& engine = cpu_engine();
  const int64_t n = src_dims[0], c = src_dims[1], h = src_dims[2], w = src_dims[3];
  dnnl::memory::dims weights_dims{out_channels, c, 3, 3}, bias_dims{out_channels},
      dst_dims{n, out_channels, h, w};
  plan->plain_src_md = dnnl::memory::desc(src_dims, dt::f32, tag::nchw);
  plan->plain_weights_md = dnnl::memory::desc(weights_dims, dt::f32, tag::oihw);
  plan->plain_dst_md = dnnl::memory::desc(dst_dims, dt::f32, tag::nchw);
  const dnnl::memory::desc any_src(src_dims, dt::f32, tag::any),
      any_weights(weights_dims, dt::f32, tag::any), any_dst(dst_dims, dt::f32, tag::any),
      bias_md(bias_dims, dt::f32, tag::x);
  dnnl::convolution_forward::primitive_desc pd;
  for (auto algorithm : {dnnl::algorithm::convolution_winograd, dnnl::algorithm::convolution_auto}) {
    try {
      dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference, algorithm, any_src,
                                           any_weights, bias_md, any_dst, {1, 1}, {1, 1}, {1, 1});
      pd = dnnl::convolution_forward::primitive_desc(desc, engine);
      break;
    } catch (const dnnl::error&) {
      if (algorithm == dnnl::algorithm::convolution_auto) throw;
    }
  }
  plan->conv = dnnl::convolution_forward(pd);
  plan->weights_md = pd.weights_desc();
  plan->src_plain = pd.src_desc() == plan->plain_src_md;
  plan->dst_plain = pd.dst_desc() == plan->plain_dst_md;
  if (!plan->src_plain) plan->src = dnnl::memory(pd.src_desc(), engine);
  if (!plan->dst_plain) plan->dst = dnnl::memory(pd.dst_desc(), engine);
  return plan;
}

Plan& plan_for(const dnnl::memory::dims& src_dims, int64_t out_channels) {
  std::vector<int64_t> key(src_dims.begin(), src_dims.end());
  key.push_back(out_channels);
  auto found = plans.find(key);
  if (found != plans.end()) return *found->second;
  if (plans.size() >= kMaxCached) plans.clear();
  return *(plans[key] = make_plan(src_dims, out_channels));
}

// A cheap fingerprint of `count` floats: FNV-1a over the bits of at most 4096 of them, evenly
// spaced. Equal weights give equal fingerprints; the full comparison decides.
uint64_t fingerprint(const float* data, size_t count) {
  uint64_t hash = 1469598103934665603ull ^ count;
  const size_t step = count > 4096 ? count / 4096 : 1;
  for (size_t i = 0; i < count; i += step) {
    uint32_t bits;
    std::memcpy(&bits, data + i, sizeof bits);
    hash = (hash ^ bits) * 1099511628211ull;
  }
  return hash;
}

// The weights at `data` in the layout of `plan`, transformed again only when no cached entry
// holds the same values (found by content: MXNet hands the same weights over at a new address
// whenever it has kept them in a layout of its own oneDNN).
const dnnl::memory& weights_for(const Plan& plan, const float* data, dnnl::stream& stream) {
  const size_t count = plan.plain_weights_md.get_size() / sizeof(float);
  const auto& dims = plan.plain_weights_md.dims();
  std::vector<uint64_t> key(dims.begin(), dims.end());
  key.push_back(fingerprint(data, count));
  auto found = packed_weights.find(key);
  if (found != packed_weights.end() && found->second->md == plan.weights_md &&
      std::memcmp(found->second->plain.data(), data, count * sizeof(float)) == 0)
    return found->second->memory;
  if (found == packed_weights.end() && packed_weights.size() >= kMaxCached) packed_weights.clear();
  auto& entry = packed_weights[key];
  entry = std::make_unique<Packed>();
  entry->plain.assign(data, data + count);
  entry->md = plan.weights_md;
  entry->memory = dnnl::memory(plan.weights_md, cpu_engine());
  dnnl::memory plain(plan.plain_weights_md, cpu_engine(), entry->plain.data());
  dnnl::reorder(plain, entry->memory).execute(stream, plain, entry->memory);
  return entry->memory;
}

MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs,
                      std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                      const OpResource& res) {
  MXTensor& data = (*inputs)[0];
  MXTensor& weight = (*inputs)[1];
  MXTensor& bias = (*inputs)[2];
  MXTensor& out = (*outputs)[0];
  const dnnl::memory::dims src_dims(data.shape.begin(), data.shape.end());
  const int64_t out_channels = weight.shape[0];
  try {
    std::lock_guard<std::mutex> hold(cache_lock);
    auto& engine = cpu_engine();
    dnnl::stream stream(engine);
    Plan& p = plan_for(src_dims, out_channels);
    const dnnl::memory& packed = weights_for(p, weight.data<float>(), stream);
    dnnl::memory user_src(p.plain_src_md, engine, data.data_ptr);
    dnnl::memory user_dst(p.plain_dst_md, engine, out.data_ptr);
    dnnl::memory bias_mem(dnnl::memory::desc({out_channels}, dt::f32, tag::x), engine,
                          bias.data_ptr);
    dnnl::memory src = user_src, dst = user_dst;
    if (!p.src_plain) {
      dnnl::reorder(user_src, p.src).execute(stream, user_src, p.src);
      src = p.src;
    }
    if (!p.dst_plain) dst = p.dst;
    p.conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, packed},
                            {DNNL_ARG_BIAS, bias_mem}, {DNNL_ARG_DST, dst}});
    if (!p.dst_plain) dnnl::reorder(p.dst, user_dst).execute(stream, p.dst, user_dst);
    stream.wait();
  } catch (const dnnl::error& e) {
    MX_ERROR_MSG << "unet_conv3x3: oneDNN failed: " << e.what();
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

// Registered so that MXNet can build a graph's gradient (a hybridized block always does), never
// meant to run: the network that uses this operator is for inference.
MXReturnValue backward(const std::unordered_map<std::string, std::string>& attrs,
                       std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                       const OpResource& res) {
  MX_ERROR_MSG << "unet_conv3x3 has no backward pass: train with nn.Conv2D";
  return MX_FAIL;
}

MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs,
                          int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<int>* in_types, std::vector<int>* out_types) {
  for (int t : *in_types) {
    if (t != kFloat32) {
      MX_ERROR_MSG << "unet_conv3x3: float32 inputs only, got dtype " << t;
      return MX_FAIL;
    }
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const std::vector<unsigned int>& x = (*in_shapes)[0];
  const std::vector<unsigned int>& w = (*in_shapes)[1];
  if (x.size() != 4) {
    MX_ERROR_MSG << "unet_conv3x3: data must be (N, C, H, W)";
    return MX_FAIL;
  }
  if (w.size() != 4 || w[1] != x[1] || w[2] != 3 || w[3] != 3) {
    MX_ERROR_MSG << "unet_conv3x3: weight must be (K, " << x[1] << ", 3, 3)";
    return MX_FAIL;
  }
  std::vector<unsigned int>& b = (*in_shapes)[2];
  const unsigned int unknown = static_cast<unsigned int>(-1);
  if (b.empty() || (b.size() == 1 && (b[0] == 0 || b[0] == unknown))) b = {w[0]};
  if (b.size() != 1 || b[0] != w[0]) {
    MX_ERROR_MSG << "unet_conv3x3: bias must have shape (" << w[0] << ",)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = {x[0], w[0], x[2], x[3]};
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(unet_conv3x3)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

MXReturnValue initialize(int version) {
  return version >= 10700 ? MX_SUCCESS : MX_FAIL;
}
