// The C++ CPU kernels' entry points, torch.ops.ge_detectron_cpu.*, and their input checks. The public
// operators torch.ops.ge_detectron.* are defined in Python (ge_detectron/ops/excite_op.py), which calls
// these from its CPU implementation; they have the public operators' schemas:
//
//   excite(x, g)                   = x * sigmoid(up(g))
//   excite_residual(x, g, s)       = relu(x * sigmoid(up(g)) + s)
//
// x, s: (N, C, H, W); g: (N, C, h, w) with h <= H, w <= W; up = F.interpolate(mode="nearest") to
// (H, W). The backward operators return the gradients in the order of the forward's inputs.
// The residual backward takes the forward's output, whose sign is the ReLU's mask. The Python layer
// checks the inputs first; the checks here guard the raw-pointer kernels against direct calls.
#include "excite.h"

#include <torch/library.h>

namespace ge_detectron {

void check_excite_inputs(const char* op, const at::Tensor& x, const at::Tensor& g) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be a 4-D (N, C, H, W) tensor, but got a ", x.dim(),
              "-D tensor of shape ", x.sizes());
  TORCH_CHECK(g.dim() == 4, op, ": g must be a 4-D (N, C, h, w) tensor, but got a ", g.dim(),
              "-D tensor of shape ", g.sizes());
  TORCH_CHECK(g.device() == x.device(), op, ": x and g must be on the same device, but x is on ", x.device(),
              " and g is on ", g.device());
  const auto xt = x.scalar_type();
  TORCH_CHECK(xt == at::kFloat || xt == at::kDouble || xt == at::kHalf || xt == at::kBFloat16, op,
              ": x must be float32, float64, float16 or bfloat16, but got ", xt);
  const bool reduced = xt == at::kHalf || xt == at::kBFloat16;
  TORCH_CHECK(g.scalar_type() == xt || (reduced && g.scalar_type() == at::kFloat), op,
              ": g must have x's dtype (", xt, ")", reduced ? " or float32" : "", ", but got ", g.scalar_type());
  TORCH_CHECK(g.size(0) == x.size(0) && g.size(1) == x.size(1) && g.size(2) >= 1 && g.size(2) <= x.size(2) &&
                  g.size(3) >= 1 && g.size(3) <= x.size(3),
              op, ": g must have shape (N, C, h, w) with 1 <= h <= H and 1 <= w <= W for x of shape (N, C, H, W) = ",
              x.sizes(), ", but got g of shape ", g.sizes());
}

void check_like_x(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have x's shape ", x.sizes(), ", but got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " must be on x's device (", x.device(), "), but is on ",
              t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype (", x.scalar_type(),
              "), but got ", t.scalar_type());
}

TORCH_LIBRARY(ge_detectron_cpu, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def("excite(Tensor x, Tensor g) -> Tensor", tags);
  m.def("excite_backward(Tensor grad_out, Tensor x, Tensor g) -> (Tensor grad_x, Tensor grad_g)", tags);
  m.def("excite_residual(Tensor x, Tensor g, Tensor shortcut) -> Tensor", tags);
  m.def(
      "excite_residual_backward(Tensor grad_out, Tensor out, Tensor x, Tensor g)"
      " -> (Tensor grad_x, Tensor grad_g, Tensor grad_shortcut)",
      tags);
}

}  // namespace ge_detectron
