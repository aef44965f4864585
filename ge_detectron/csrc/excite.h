// Shared by the CPU kernels of the ge_detectron excite operators: the input checks, the layout rule,
// the dtype dispatch and the nearest-resize index rule.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <cmath>
#include <type_traits>

namespace ge_detectron {

// Checks x (N, C, H, W) and the gate logits g (N, C, h, w), 1 <= h <= H, 1 <= w <= W: rank, shape,
// device, and dtype (g has x's dtype, or float32 when x is float16/bfloat16).
void check_excite_inputs(const char* op, const at::Tensor& x, const at::Tensor& g);

// Checks that `t` (a shortcut, gradient or saved output) has x's shape, dtype and device.
void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x);

// The layout of an operator's outputs, and of the buffers its kernels read: channels_last when `t`
// is channels_last and not also contiguous, else contiguous. ops/excite_inputs.py's memory_format is the
// same rule, so every implementation's outputs (and the fake ones) have the same strides.
inline at::MemoryFormat excite_memory_format(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous() ? at::MemoryFormat::ChannelsLast
                                                                                : at::MemoryFormat::Contiguous;
}

// Scale of the nearest resize from `in` to `out` pixels, computed as ATen's compute_scales_value<float>
// does without a scale factor: float(in) / out.
inline float nearest_scale(int64_t in, int64_t out) {
  return static_cast<float>(in) / out;
}

// Source index of output pixel `dst` for F.interpolate(mode="nearest"): ATen's
// nearest_neighbor_compute_source_index, min(floor(float(dst) * scale), in - 1), in float arithmetic.
// (ATen special-cases out == in and out == 2 * in; this formula gives the same indices there.)
inline int64_t nearest_source(int64_t dst, float scale, int64_t in) {
  const int64_t src = static_cast<int64_t>(floorf(static_cast<float>(dst) * scale));
  return src < in - 1 ? src : in - 1;
}

// The first output pixel whose source index is >= `src` (`out` if none): the output pixels reading
// source pixel s are [nearest_first(s), nearest_first(s + 1)), as nearest_source is non-decreasing.
// The estimate is corrected with nearest_source itself, so the runs agree with it exactly.
inline int64_t nearest_first(int64_t src, float scale, int64_t in, int64_t out) {
  int64_t d = static_cast<int64_t>(ceilf(static_cast<float>(src) / scale));
  d = d < 0 ? 0 : (d > out ? out : d);
  while (d > 0 && nearest_source(d - 1, scale, in) >= src) {
    --d;
  }
  while (d < out && nearest_source(d, scale, in) < src) {
    ++d;
  }
  return d;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<scalar_t>, TypeTag<gate_t>) for x's dtype and g's dtype (g's is x's, or float for
// a float16/bfloat16 x, as check_excite_inputs allows).
template <typename Fn>
void dispatch_excite_types(const at::Tensor& x, const at::Tensor& g, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ge_detectron::excite", [&] {
    if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
      fn(TypeTag<scalar_t>{}, TypeTag<scalar_t>{});
    } else if (g.scalar_type() == x.scalar_type()) {
      fn(TypeTag<scalar_t>{}, TypeTag<scalar_t>{});
    } else {
      fn(TypeTag<scalar_t>{}, TypeTag<float>{});
    }
  });
}

}  // namespace ge_detectron
