// The CPU kernels of cpu_kernels.c as the CPU implementations of the torch ops elmbench::gemv and
// elmbench::attend, whose schemas and fake (meta) functions elmbench.engine.cpu_kernels defines.
// Registered from C++, a call never enters Python, so inductor's C++ wrapper and AOTInductor's
// libraries run decode without the interpreter. Built by elmbench.engine.cpu_kernels with the
// system C++ compiler against torch's headers.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

extern "C" {
void elm_gemv_f32(const float *w, const float *x, float *y, int64_t n, int64_t k, int64_t m,
                  int64_t panels, int threads);
void elm_gemv_bf16(const uint16_t *w, const float *x, float *y, int64_t n, int64_t k, int64_t m,
                   int64_t panels, int threads);
int elm_attend_f32(const float *q, const float *k, const float *v, float *out, const int64_t *pos,
                   int64_t B, int64_t Hq, int64_t Hkv, int64_t T, int64_t S, int64_t D,
                   float scale, int threads);
}

namespace {

void check_float_cpu(const at::Tensor &t, const char *name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "elmbench::", name,
              ": needs float32 CPU tensors, got ", t.scalar_type(), " on ", t.device());
}

// x (..., K) @ weight^T, fp32 or bf16 (x and weight alike); fp32 arithmetic either way. The
// weight is (N, K), or (P, N, K / P): P column panels, each contiguous.
at::Tensor gemv(const at::Tensor &x, const at::Tensor &weight) {
  bool bf16 = weight.scalar_type() == at::kBFloat16;
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu() &&
                  x.scalar_type() == weight.scalar_type() &&
                  (bf16 || weight.scalar_type() == at::kFloat),
              "elmbench::gemv: needs float32 or bfloat16 CPU tensors of one dtype, got ",
              x.scalar_type(), " and ", weight.scalar_type(), " on ", x.device());
  int64_t panels = weight.dim() == 3 ? weight.size(0) : 1;
  TORCH_CHECK((weight.dim() == 2 || weight.dim() == 3) && x.dim() >= 1 &&
                  x.size(-1) == panels * weight.size(-1),
              "elmbench::gemv: x (..., K) and weight (N, K) or (P, N, K / P) do not match: ",
              x.sizes(), " and ", weight.sizes());
  at::Tensor xc = x.to(at::kFloat).contiguous(), wc = weight.contiguous();
  std::vector<int64_t> sizes = xc.sizes().vec();
  sizes.back() = wc.size(-2);
  at::Tensor out = at::empty(sizes, xc.options());
  int64_t n = wc.size(-2), k = xc.size(-1), rows = k == 0 ? 0 : xc.numel() / k;
  if (bf16) {
    const auto *w = reinterpret_cast<const uint16_t *>(wc.data_ptr<at::BFloat16>());
    elm_gemv_bf16(w, xc.data_ptr<float>(), out.data_ptr<float>(), n, k, rows, panels,
                  at::get_num_threads());
    return out.to(at::kBFloat16);
  }
  elm_gemv_f32(wc.data_ptr<float>(), xc.data_ptr<float>(), out.data_ptr<float>(), n, k, rows,
               panels, at::get_num_threads());
  return out;
}

// Causal attention of q (B, Hq, T, D) over a cache k, v (B, Hkv, S, D): row t sees keys 0..pos[t].
at::Tensor attend(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
                  const at::Tensor &pos) {
  for (const at::Tensor *t : {&q, &k, &v}) check_float_cpu(*t, "attend");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes(),
              "elmbench::attend: q (B, Hq, T, D) and k, v (B, Hkv, S, D) expected, got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  int64_t b = q.size(0), hq = q.size(1), t = q.size(2), d = q.size(3);
  int64_t hkv = k.size(1), s = k.size(2);
  TORCH_CHECK(k.size(0) == b && k.size(3) == d && pos.numel() == t,
              "elmbench::attend: shapes do not match: q ", q.sizes(), ", k ", k.sizes(), ", pos ",
              pos.sizes());
  TORCH_CHECK(hkv > 0 && hq % hkv == 0, "elmbench::attend: ", hq, " query heads over ", hkv,
              " KV heads; needs whole groups");
  at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  at::Tensor pc = pos.to(at::kLong).contiguous();
  at::Tensor out = at::empty_like(qc, at::MemoryFormat::Contiguous);
  float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  int status = elm_attend_f32(qc.data_ptr<float>(), kc.data_ptr<float>(), vc.data_ptr<float>(),
                              out.data_ptr<float>(), pc.data_ptr<int64_t>(), b, hq, hkv, t, s, d,
                              scale, at::get_num_threads());
  TORCH_CHECK(status != -2, "elmbench::attend: ", hq / hkv * t,
              " query rows per KV head, more than the kernel takes (MAX_ROWS in cpu_kernels.c)");
  TORCH_CHECK(status == 0, "elmbench::attend: no scratch memory (status ", status, ")");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(elmbench, CPU, m) {
  m.impl("gemv", &gemv);
  m.impl("attend", &attend);
}

// The ops as C shims for AOTInductor (`aot_inductor.custom_ops_to_c_shims`, named as its generated
// code names them: aoti_torch_<device>_<op>): a compiled decode step calls these directly, not
// through its proxy executor (arguments boxed and unboxed, the dispatcher) for each of 81 calls.
extern "C" {
AOTITorchError aoti_torch_cpu_gemv(AtenTensorHandle x, AtenTensorHandle weight,
                                   AtenTensorHandle *out) {
  using namespace torch::aot_inductor;
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *out = new_tensor_handle(
        gemv(*tensor_handle_to_tensor_pointer(x), *tensor_handle_to_tensor_pointer(weight)));
  });
}

AOTITorchError aoti_torch_cpu_attend(AtenTensorHandle q, AtenTensorHandle k, AtenTensorHandle v,
                                     AtenTensorHandle pos, AtenTensorHandle *out) {
  using namespace torch::aot_inductor;
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    *out = new_tensor_handle(attend(*tensor_handle_to_tensor_pointer(q),
                                    *tensor_handle_to_tensor_pointer(k),
                                    *tensor_handle_to_tensor_pointer(v),
                                    *tensor_handle_to_tensor_pointer(pos)));
  });
}
}
