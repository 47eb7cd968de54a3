// What the compiled operators of unet/native share: three float32 inputs, one float32 output, and
// per-channel parameters whose shape MXNet may not know yet. Included by each operator's file.
#ifndef UNET_NATIVE_OPERATOR_H_
#define UNET_NATIVE_OPERATOR_H_

#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

namespace unet_native {

using mxnet::ext::MXReturnValue;

inline MXReturnValue three_inputs_one_output(int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  return mxnet::ext::MX_SUCCESS;
}

// Every input and the output float32; `op` names the operator in the error.
inline MXReturnValue float32_only(const char* op, const std::vector<int>& in_types,
                                  std::vector<int>* out_types) {
  for (int t : in_types) {
    if (t != mxnet::ext::kFloat32) {
      MX_ERROR_MSG << op << ": float32 inputs only, got dtype " << t;
      return mxnet::ext::MX_FAIL;
    }
  }
  (*out_types)[0] = mxnet::ext::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

// A per-channel parameter's shape `s` as (size,): filled in where not known yet (no shape, or the
// unknown size of a deferred parameter); false when it is known and differs.
inline bool channel_shape(std::vector<unsigned int>* s, unsigned int size) {
  const unsigned int unknown = static_cast<unsigned int>(-1);
  if (s->empty() || (s->size() == 1 && ((*s)[0] == 0 || (*s)[0] == unknown))) *s = {size};
  return s->size() == 1 && (*s)[0] == size;
}

}  // namespace unet_native

#endif  // UNET_NATIVE_OPERATOR_H_
