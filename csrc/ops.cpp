// The Python module maskrcnn._C: one entry point per op, dispatching on the device.
// Autograd lives in Python (torch.autograd.Function in maskrcnn/ops/roi_align.py).
#include <torch/python.h>

#include "mask_iou/mask_iou.h"
#include "nms/nms.h"
#include "roi_align/roi_align.h"

namespace maskrcnn {
namespace {

// Shape and type checks shared by the CPU and CUDA kernels (each checks its own device).
void check_roi_args(const at::Tensor& rois, int64_t pooled_h, int64_t pooled_w) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "roi_align: rois must be [K, 5] (batch_index, x1, y1, x2, y2), got ",
              rois.sizes());
  TORCH_CHECK(rois.is_floating_point(), "roi_align: rois must be floating point, got ", rois.scalar_type());
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, "roi_align: output size must be positive, got (", pooled_h, ", ",
              pooled_w, ")");
}

[[noreturn]] void no_cuda(const char* op) {
  TORCH_CHECK(false, op, ": got CUDA tensors, but maskrcnn._C was built without CUDA "
                         "(rebuild with a CUDA-enabled torch, or FORCE_CUDA=1)");
}

at::Tensor roi_align_forward(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                             int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.device() == rois.device(), "roi_align: input on ", input.device(), " but rois on ",
              rois.device());
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be [N, C, H, W], got ", input.sizes());
  check_roi_args(rois, pooled_h, pooled_w);
  if (input.is_cuda()) {
#ifdef WITH_CUDA
    return roi_align_forward_cuda(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
#else
    no_cuda("roi_align_forward");
#endif
  }
  return roi_align_forward_cpu(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                              int64_t pooled_w, int64_t batch, int64_t channels, int64_t height, int64_t width,
                              int64_t sampling_ratio, bool aligned, bool channels_last) {
  TORCH_CHECK(grad.device() == rois.device(), "roi_align backward: grad on ", grad.device(), " but rois on ",
              rois.device());
  check_roi_args(rois, pooled_h, pooled_w);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_h && grad.size(3) == pooled_w,
              "roi_align backward: grad must be [", rois.size(0), ", ", channels, ", ", pooled_h, ", ", pooled_w,
              "], got ", grad.sizes());
  if (grad.is_cuda()) {
#ifdef WITH_CUDA
    return roi_align_backward_cuda(grad, rois, spatial_scale, pooled_h, pooled_w, batch, channels, height, width,
                                   sampling_ratio, aligned, channels_last);
#else
    no_cuda("roi_align_backward");
#endif
  }
  return roi_align_backward_cpu(grad, rois, spatial_scale, pooled_h, pooled_w, batch, channels, height, width,
                                sampling_ratio, aligned, channels_last);
}

at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores);
  if (boxes.is_cuda()) {
#ifdef WITH_CUDA
    return nms_cuda(boxes, scores, iou_threshold);
#else
    no_cuda("nms");
#endif
  }
  return nms_cpu(boxes, scores, iou_threshold);
}

at::Tensor greedy_suppress(const at::Tensor& iou_sorted, double iou_threshold) {
  if (iou_sorted.is_cuda()) {
#ifdef WITH_CUDA
    return greedy_suppress_cuda(iou_sorted, iou_threshold);
#else
    no_cuda("greedy_suppress");
#endif
  }
  return greedy_suppress_cpu(iou_sorted, iou_threshold);
}

at::Tensor crop_mask_intersection(const at::Tensor& a_crops, const at::Tensor& a_origins, const at::Tensor& b_crops,
                                  const at::Tensor& b_origins) {
  TORCH_CHECK(a_crops.device() == b_crops.device(), "crop_mask_intersection: a_crops on ", a_crops.device(),
              " but b_crops on ", b_crops.device());
  if (a_crops.is_cuda()) {
#ifdef WITH_CUDA
    return crop_mask_intersection_cuda(a_crops, a_origins, b_crops, b_origins);
#else
    no_cuda("crop_mask_intersection");
#endif
  }
  return crop_mask_intersection_cpu(a_crops, a_origins, b_crops, b_origins);
}

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace maskrcnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace pybind11::literals;
  m.doc() = "Compiled ops of maskrcnn (RoIAlign, NMS, crop-mask intersections); see maskrcnn/ops.";
  m.def("roi_align_forward", &maskrcnn::roi_align_forward, "RoIAlign -> Tensor[K, C, ph, pw]", "input"_a, "rois"_a,
        "spatial_scale"_a, "pooled_h"_a, "pooled_w"_a, "sampling_ratio"_a, "aligned"_a);
  m.def("roi_align_backward", &maskrcnn::roi_align_backward, "RoIAlign gradient -> Tensor[N, C, H, W]", "grad"_a,
        "rois"_a, "spatial_scale"_a, "pooled_h"_a, "pooled_w"_a, "N"_a, "C"_a, "H"_a, "W"_a, "sampling_ratio"_a,
        "aligned"_a, "channels_last"_a = false);
  m.def("nms", &maskrcnn::nms, "Greedy NMS -> int64 kept indices by decreasing score", "boxes"_a, "scores"_a,
        "iou_threshold"_a);
  m.def("greedy_suppress", &maskrcnn::greedy_suppress,
        "Greedy NMS on an IoU matrix of score-sorted items -> int64 kept positions, increasing", "iou_sorted"_a,
        "iou_threshold"_a);
  m.def("crop_mask_intersection", &maskrcnn::crop_mask_intersection,
        "Pixel counts of a_i & b_j in image coordinates -> int64[N, M]", "a_crops"_a, "a_origins"_a, "b_crops"_a,
        "b_origins"_a);
  m.def("with_cuda", &maskrcnn::with_cuda, "Whether the module was built with CUDA kernels");
}
