// The oneDNN plumbing of conv3x3.cc (its only includer): the engine, one lock for all calls,
// grow-only buffers for tensors in a primitive's own layouts and for its scratchpad, layout
// conversions, plans cached per shape, and a forward convolution of MXNet's plain tensors.
#ifndef UNET_NATIVE_ONEDNN_CONV_H_
#define UNET_NATIVE_ONEDNN_CONV_H_

#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace unet_native {
namespace onednn {

using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;
using dims = dnnl::memory::dims;

constexpr size_t kMaxCached = 512;     // plans per cache; a full cache is emptied

inline std::mutex lock;

inline dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Grow-only buffers for tensors in the convolution's own layouts; calls never overlap (lock).
struct Scratch {
  void* data = nullptr;
  size_t size = 0;
  ~Scratch() { std::free(data); }
  void* get(size_t bytes) {
    if (bytes > size) {
      std::free(data);
      size = (bytes + 4095) / 4096 * 4096;
      data = std::aligned_alloc(4096, size);
      if (!data) {
        size = 0;
        throw std::bad_alloc();
      }
    }
    return data;
  }
};
inline Scratch scratch[5];
constexpr int kScratchpadSlot = 4;

// Every primitive gets its scratchpad from us (slot 4), never oneDNN's default: that one lives in
// a thread-local buffer of the thread that created the primitive, and MXNet runs an operator on
// whichever engine thread is free (a primitive created on one thread and run on another wrote
// past a smaller buffer).
inline const dnnl::primitive_attr& user_scratchpad() {
  static dnnl::primitive_attr attr = [] {
    dnnl::primitive_attr a;
    a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
  }();
  return attr;
}

// Run `primitive` with `args` and the scratchpad its descriptor asks for.
inline void run(const dnnl::primitive& primitive, const dnnl::memory::desc& scratchpad_md,
                std::unordered_map<int, dnnl::memory> args, dnnl::stream& stream) {
  if (scratchpad_md.get_size() > 0)
    args[DNNL_ARG_SCRATCHPAD] = dnnl::memory(
        scratchpad_md, cpu_engine(), scratch[kScratchpadSlot].get(scratchpad_md.get_size()));
  primitive.execute(stream, args);
}

inline void reorder(dnnl::memory from, dnnl::memory to, dnnl::stream& stream) {
  dnnl::reorder::primitive_desc pd(from, to, user_scratchpad());
  run(dnnl::reorder(pd), pd.scratchpad_desc(), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}},
      stream);
}

// `user` as a memory of layout `md`: itself when the layouts agree, else a reorder into slot.
inline dnnl::memory in_layout(dnnl::memory user, const dnnl::memory::desc& md, int slot,
                              dnnl::stream& stream) {
  if (user.get_desc() == md) return user;
  dnnl::memory converted(md, cpu_engine(), scratch[slot].get(md.get_size()));
  reorder(user, converted, stream);
  return converted;
}

// Where a primitive writes a result for `user`: `user` itself when the layouts agree, else slot.
inline dnnl::memory out_layout(dnnl::memory user, const dnnl::memory::desc& md, int slot) {
  if (user.get_desc() == md) return user;
  return dnnl::memory(md, cpu_engine(), scratch[slot].get(md.get_size()));
}

inline void copy_back(dnnl::memory result, dnnl::memory user, dnnl::stream& stream) {
  if (result.get_data_handle() != user.get_data_handle()) reorder(result, user, stream);
}

struct Shapes {
  dnnl::memory::desc src, weights, bias, dst;          // plain: nchw, oihw, x, nchw
  dnnl::memory::desc any_src, any_weights, any_dst;    // for the primitive to choose
  Shapes(const dims& src_dims, int64_t out_channels) {
    const dims weights_dims{out_channels, src_dims[1], 3, 3},
        dst_dims{src_dims[0], out_channels, src_dims[2], src_dims[3]};
    src = {src_dims, dt::f32, tag::nchw};
    weights = {weights_dims, dt::f32, tag::oihw};
    bias = {{out_channels}, dt::f32, tag::x};
    dst = {dst_dims, dt::f32, tag::nchw};
    any_src = {src_dims, dt::f32, tag::any};
    any_weights = {weights_dims, dt::f32, tag::any};
    any_dst = {dst_dims, dt::f32, tag::any};
  }
};

inline const dims kOne{1, 1};

// The forward primitive descriptor: Winograd where oneDNN has it, else oneDNN's choice.
inline dnnl::convolution_forward::primitive_desc forward_pd(const Shapes& s,
                                                            dnnl::prop_kind kind,
                                                            dnnl::algorithm* chosen) {
  for (auto algorithm : {dnnl::algorithm::convolution_winograd,
                         dnnl::algorithm::convolution_auto}) {
    try {
      dnnl::convolution_forward::desc desc(kind, algorithm, s.any_src, s.any_weights, s.bias,
                                           s.any_dst, kOne, kOne, kOne);
      auto pd = dnnl::convolution_forward::primitive_desc(desc, user_scratchpad(),
                                                          cpu_engine());
      *chosen = algorithm;
      return pd;
    } catch (const dnnl::error&) {
      if (algorithm == dnnl::algorithm::convolution_auto) throw;
    }
  }
  throw std::logic_error("unreachable");
}

// The direct algorithm's forward primitive descriptor: on the plain layouts (`plain`; oneDNN
// then runs GEMM convolutions on MXNet's tensors) or on the layouts it chooses.
inline dnnl::convolution_forward::primitive_desc direct_forward_pd(const Shapes& s,
                                                                   dnnl::prop_kind kind,
                                                                   bool plain) {
  dnnl::convolution_forward::desc desc(kind, dnnl::algorithm::convolution_direct,
                                       plain ? s.src : s.any_src,
                                       plain ? s.weights : s.any_weights, s.bias,
                                       plain ? s.dst : s.any_dst, kOne, kOne, kOne);
  return {desc, user_scratchpad(), cpu_engine()};
}

// N*H*W: a 3x3 convolution's output pixels per channel (padding 1, stride 1).
inline int64_t output_pixels(const dims& src_dims) {
  return src_dims[0] * src_dims[2] * src_dims[3];
}

template <class Plan>
Plan& plan_for(std::map<std::vector<int64_t>, std::unique_ptr<Plan>>& plans,
               const dims& src_dims, int64_t out_channels) {
  // oneDNN sizes a primitive and its scratchpad for the thread count it is created with.
  std::vector<int64_t> key(src_dims.begin(), src_dims.end());
  key.push_back(out_channels);
  key.push_back(omp_get_max_threads());
  auto found = plans.find(key);
  if (found != plans.end()) return *found->second;
  if (plans.size() >= kMaxCached) plans.clear();
  return *(plans[key] = std::make_unique<Plan>(src_dims, out_channels));
}

inline dims dims_of(const MXTensor& t) { return dims(t.shape.begin(), t.shape.end()); }

inline dnnl::memory user_memory(const dnnl::memory::desc& md, const MXTensor& t) {
  return dnnl::memory(md, cpu_engine(), t.data_ptr);
}

// `body(stream)` under the lock, with oneDNN's errors turned into MXNet's.
template <class Body>
MXReturnValue guarded(const char* name, Body body) {
  try {
    std::lock_guard<std::mutex> hold(lock);
    dnnl::stream stream(cpu_engine());
    body(stream);
    stream.wait();
  } catch (const std::exception& e) {
    MX_ERROR_MSG << name << ": " << e.what();
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

// A forward convolution of the user's tensors: the data converted to `src_md` (slot 2), the output
// written in `dst_md` (slot 0) and converted back; `weights` already in the convolution's layout.
// The data's slot is the one the backward pass converts the data and its gradient into, the
// output's the one of the output's gradient: where a layer has more input than output channels
// (the decoder's, 128 -> 64 at 512x512: 128 MB against 64 MB), neither slot grows past its own
// pass's largest tensor.
inline void convolve(const dnnl::primitive& conv, const Shapes& s,
                     const dnnl::memory::desc& src_md, const dnnl::memory::desc& dst_md,
                     const dnnl::memory::desc& scratchpad_md, dnnl::memory weights,
                     const MXTensor& data, const MXTensor& bias, const MXTensor& out,
                     dnnl::stream& stream) {
  auto user_dst = user_memory(s.dst, out);
  auto src = in_layout(user_memory(s.src, data), src_md, 2, stream);
  auto dst = out_layout(user_dst, dst_md, 0);
  run(conv, scratchpad_md, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights},
                            {DNNL_ARG_BIAS, user_memory(s.bias, bias)}, {DNNL_ARG_DST, dst}},
      stream);
  copy_back(dst, user_dst, stream);
}

}  // namespace onednn
}  // namespace unet_native

#endif  // UNET_NATIVE_ONEDNN_CONV_H_
