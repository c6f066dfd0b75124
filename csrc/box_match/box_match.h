// Matching boxes to ground truth by IoU, for a batch (see maskrcnn/ops/box_match.py).
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace maskrcnn {

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_boxes_cpu(const at::Tensor& gt_boxes, const at::Tensor& gt_valid,
                                                               const at::Tensor& boxes);

}  // namespace maskrcnn
