// The ops on PyTorch's dispatcher: one schema per op (TORCH_LIBRARY), kernels per dispatch key
// (CPU, CUDA, and an autocast rule for RoIAlign). Autograd and the fake (meta) kernels are
// registered from Python (maskrcnn/ops/_library.py), named below by set_python_module.
// The Python module maskrcnn._C keeps its pybind11 entry points, which call the dispatcher.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <torch/python.h>

#include "box_match/box_match.h"
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

void check_forward(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_h, int64_t pooled_w) {
  TORCH_CHECK(input.device() == rois.device(), "roi_align: input on ", input.device(), " but rois on ",
              rois.device());
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be [N, C, H, W], got ", input.sizes());
  check_roi_args(rois, pooled_h, pooled_w);
}

void check_backward(const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_h, int64_t pooled_w,
                    int64_t channels) {
  TORCH_CHECK(grad.device() == rois.device(), "roi_align backward: grad on ", grad.device(), " but rois on ",
              rois.device());
  check_roi_args(rois, pooled_h, pooled_w);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_h && grad.size(3) == pooled_w,
              "roi_align backward: grad must be [", rois.size(0), ", ", channels, ", ", pooled_h, ", ", pooled_w,
              "], got ", grad.sizes());
}

void check_crop_devices(const at::Tensor& a_crops, const at::Tensor& b_crops) {
  TORCH_CHECK(a_crops.device() == b_crops.device(), "crop_mask_intersection: a_crops on ", a_crops.device(),
              " but b_crops on ", b_crops.device());
}

// The kernels of one device, with the checks in front. `Dev` supplies the device entry points.
struct Cpu {
  static at::Tensor roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                              int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
    check_forward(input, rois, pooled_h, pooled_w);
    return roi_align_forward_cpu(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
  }
  static at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                       int64_t pooled_h, int64_t pooled_w, int64_t batch, int64_t channels,
                                       int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                       bool channels_last) {
    check_backward(grad, rois, pooled_h, pooled_w, channels);
    return roi_align_backward_cpu(grad, rois, spatial_scale, pooled_h, pooled_w, batch, channels, height, width,
                                  sampling_ratio, aligned, channels_last);
  }
  static at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
    check_nms_inputs(boxes, scores);
    return nms_cpu(boxes.contiguous(), scores.contiguous(), iou_threshold);
  }
  static at::Tensor greedy_suppress(const at::Tensor& iou_sorted, double iou_threshold) {
    return greedy_suppress_cpu(iou_sorted, iou_threshold);
  }
  static at::Tensor crop_mask_intersection(const at::Tensor& a_crops, const at::Tensor& a_origins,
                                           const at::Tensor& b_crops, const at::Tensor& b_origins) {
    check_crop_devices(a_crops, b_crops);
    return crop_mask_intersection_cpu(a_crops, a_origins, b_crops, b_origins);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> match_boxes(const at::Tensor& gt_boxes,
                                                                    const at::Tensor& gt_valid,
                                                                    const at::Tensor& boxes) {
    return match_boxes_cpu(gt_boxes, gt_valid, boxes);
  }
};

#ifdef WITH_CUDA
struct Cuda {
  static at::Tensor roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                              int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
    check_forward(input, rois, pooled_h, pooled_w);
    return roi_align_forward_cuda(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
  }
  static at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                       int64_t pooled_h, int64_t pooled_w, int64_t batch, int64_t channels,
                                       int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                       bool channels_last) {
    check_backward(grad, rois, pooled_h, pooled_w, channels);
    return roi_align_backward_cuda(grad, rois, spatial_scale, pooled_h, pooled_w, batch, channels, height, width,
                                   sampling_ratio, aligned, channels_last);
  }
  static at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
    check_nms_inputs(boxes, scores);
    return nms_cuda(boxes.contiguous(), scores.contiguous(), iou_threshold);
  }
  static at::Tensor greedy_suppress(const at::Tensor& iou_sorted, double iou_threshold) {
    return greedy_suppress_cuda(iou_sorted, iou_threshold);
  }
  static at::Tensor crop_mask_intersection(const at::Tensor& a_crops, const at::Tensor& a_origins,
                                           const at::Tensor& b_crops, const at::Tensor& b_origins) {
    check_crop_devices(a_crops, b_crops);
    return crop_mask_intersection_cuda(a_crops, a_origins, b_crops, b_origins);
  }
};
#endif

c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t, int64_t, bool)>
roi_align_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("maskrcnn::roi_align", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t,
                                               int64_t, bool)>();
  return op;
}

// Autocast: RoIAlign runs on float32 (as torchvision's rule), the output back in the input's
// dtype. The kernels accumulate in float32 for half types anyway, so the numbers are the same as
// a direct half call; the rule makes mixed input/rois dtypes under autocast well defined.
template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor roi_align_autocast(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                              int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  return roi_align_op()
      .call(at::autocast::cached_cast(at::kFloat, input, device_type),
            at::autocast::cached_cast(at::kFloat, rois, device_type), spatial_scale, pooled_h, pooled_w,
            sampling_ratio, aligned)
      .to(input.scalar_type());
}

template <typename Fn>
auto dispatcher_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// pybind11 entry points (the module's interface before the dispatcher): each calls the op
// through the dispatcher, so it reaches the kernel of its tensors' device.
at::Tensor py_roi_align_forward(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  return roi_align_op().call(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
}

at::Tensor py_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_h, int64_t pooled_w, int64_t batch, int64_t channels, int64_t height,
                                 int64_t width, int64_t sampling_ratio, bool aligned, bool channels_last) {
  static const auto op = dispatcher_op<decltype(Cpu::roi_align_backward)>("maskrcnn::roi_align_backward");
  return op.call(grad, rois, spatial_scale, pooled_h, pooled_w, batch, channels, height, width, sampling_ratio,
                 aligned, channels_last);
}

at::Tensor py_nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  static const auto op = dispatcher_op<decltype(Cpu::nms)>("maskrcnn::nms");
  return op.call(boxes, scores, iou_threshold);
}

at::Tensor py_greedy_suppress(const at::Tensor& iou_sorted, double iou_threshold) {
  static const auto op = dispatcher_op<decltype(Cpu::greedy_suppress)>("maskrcnn::greedy_suppress");
  return op.call(iou_sorted, iou_threshold);
}

at::Tensor py_crop_mask_intersection(const at::Tensor& a_crops, const at::Tensor& a_origins,
                                     const at::Tensor& b_crops, const at::Tensor& b_origins) {
  static const auto op = dispatcher_op<decltype(Cpu::crop_mask_intersection)>("maskrcnn::crop_mask_intersection");
  return op.call(a_crops, a_origins, b_crops, b_origins);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> py_match_boxes(const at::Tensor& gt_boxes, const at::Tensor& gt_valid,
                                                               const at::Tensor& boxes) {
  static const auto op = dispatcher_op<decltype(Cpu::match_boxes)>("maskrcnn::match_boxes");
  return op.call(gt_boxes, gt_valid, boxes);
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

// The schemas, in one place. maskrcnn/ops/_library.py repeats them for a module built before the
// dispatcher registration (tests/ops/test_library.py checks that the two agree).
TORCH_LIBRARY(maskrcnn, m) {
  m.set_python_module("maskrcnn.ops._library");
  m.def("roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_h, int pooled_w, int sampling_ratio, "
        "bool aligned) -> Tensor");
  m.def("roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_h, int pooled_w, int batch, "
        "int channels, int height, int width, int sampling_ratio, bool aligned, bool channels_last) -> Tensor");
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("greedy_suppress(Tensor iou_sorted, float iou_threshold) -> Tensor");
  m.def("crop_mask_intersection(Tensor a_crops, Tensor a_origins, Tensor b_crops, Tensor b_origins) -> Tensor");
  m.def("match_boxes(Tensor gt_boxes, Tensor gt_valid, Tensor boxes) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(maskrcnn, CPU, m) {
  using maskrcnn::Cpu;
  m.impl("roi_align", TORCH_FN(Cpu::roi_align));
  m.impl("roi_align_backward", TORCH_FN(Cpu::roi_align_backward));
  m.impl("nms", TORCH_FN(Cpu::nms));
  m.impl("greedy_suppress", TORCH_FN(Cpu::greedy_suppress));
  m.impl("crop_mask_intersection", TORCH_FN(Cpu::crop_mask_intersection));
  m.impl("match_boxes", TORCH_FN(Cpu::match_boxes));
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(maskrcnn, CUDA, m) {
  using maskrcnn::Cuda;
  m.impl("roi_align", TORCH_FN(Cuda::roi_align));
  m.impl("roi_align_backward", TORCH_FN(Cuda::roi_align_backward));
  m.impl("nms", TORCH_FN(Cuda::nms));
  m.impl("greedy_suppress", TORCH_FN(Cuda::greedy_suppress));
  m.impl("crop_mask_intersection", TORCH_FN(Cuda::crop_mask_intersection));
}
#endif

TORCH_LIBRARY_IMPL(maskrcnn, AutocastCPU, m) {
  m.impl("roi_align", TORCH_FN((maskrcnn::roi_align_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>)));
}

TORCH_LIBRARY_IMPL(maskrcnn, AutocastCUDA, m) {
  m.impl("roi_align",
         TORCH_FN((maskrcnn::roi_align_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>)));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace pybind11::literals;
  m.doc() = "Compiled ops of maskrcnn (RoIAlign, NMS, crop-mask intersections, box matching), registered as torch.ops.maskrcnn.*; "
            "see maskrcnn/ops.";
  m.def("roi_align_forward", &maskrcnn::py_roi_align_forward, "RoIAlign -> Tensor[K, C, ph, pw]", "input"_a, "rois"_a,
        "spatial_scale"_a, "pooled_h"_a, "pooled_w"_a, "sampling_ratio"_a, "aligned"_a);
  m.def("roi_align_backward", &maskrcnn::py_roi_align_backward, "RoIAlign gradient -> Tensor[N, C, H, W]", "grad"_a,
        "rois"_a, "spatial_scale"_a, "pooled_h"_a, "pooled_w"_a, "N"_a, "C"_a, "H"_a, "W"_a, "sampling_ratio"_a,
        "aligned"_a, "channels_last"_a = false);
  m.def("nms", &maskrcnn::py_nms, "Greedy NMS -> int64 kept indices by decreasing score", "boxes"_a, "scores"_a,
        "iou_threshold"_a);
  m.def("greedy_suppress", &maskrcnn::py_greedy_suppress,
        "Greedy NMS on an IoU matrix of score-sorted items -> int64 kept positions, increasing", "iou_sorted"_a,
        "iou_threshold"_a);
  m.def("crop_mask_intersection", &maskrcnn::py_crop_mask_intersection,
        "Pixel counts of a_i & b_j in image coordinates -> int64[N, M]", "a_crops"_a, "a_origins"_a, "b_crops"_a,
        "b_origins"_a);
  m.def("match_boxes", &maskrcnn::py_match_boxes,
        "Each box's best GT by IoU and the boxes that are some GT's best -> (float[B, A], int64[B, A], bool[B, A]) "
        "(CPU; other devices use the twin)",
        "gt_boxes"_a, "gt_valid"_a, "boxes"_a);
  m.def("with_cuda", &maskrcnn::with_cuda, "Whether the module was built with CUDA kernels");
}
