"""The GE backbone (bottom-up, or bottom-up + FPN) through ``torch.export`` and the dynamo-based ONNX
exporter, the fused excite operator in the model: both graphs take any height and width that are
multiples of the backbone's size divisibility (what detectron2's ``ImageList`` pads images to).
``torch.export`` keeps ``ge_detectron::excite_residual`` as one node; ``run_decompositions`` turns it
into its ATen definition (registered in ``ge_detectron/ops/excite_op.py``), as the ONNX exporter does."""
import torch

__all__ = ["export_backbone", "export_backbone_onnx"]


def _dynamic_sizes(backbone, image, max_side):
    """Dims for H and W of ``image``: multiples of the backbone's size divisibility (32 without FPN: the
    deepest stride) from 5 of them, up to ``max_side``. The graph is specialised to whether each gate is
    1 wide (a size-1 dimension changes what is contiguous), measured: for E8 gates up to stride 128
    (res4), so from 160 px no gate is 1 wide and every size in the range holds."""
    step = getattr(backbone, "size_divisibility", 0) or 32
    if image.shape[-2] % step or image.shape[-1] % step:
        raise ValueError(f"export_backbone: image of shape {tuple(image.shape)}: height and width must be "
                         f"multiples of the backbone's size divisibility {step}.")
    height = torch.export.Dim("height_blocks", min=5, max=max_side // step)
    width = torch.export.Dim("width_blocks", min=5, max=max_side // step)
    return {"x": {2: step * height, 3: step * width}}


def export_backbone(backbone, image, max_side=2048):
    """``torch.export.export`` of ``backbone`` (eval mode, without gradients: GE-θ gathers that will be
    differentiated switch layouts, which would tie the graph to the example's sizes) on ``image``
    (N, 3, H, W), H and W dynamic."""
    with torch.no_grad():
        return torch.export.export(backbone.eval(), (image,), dynamic_shapes=_dynamic_sizes(backbone, image, max_side))


def export_backbone_onnx(backbone, image, max_side=2048):
    """``torch.onnx.export(dynamo=True)`` of the same: an ``ONNXProgram`` (``.save(path)``), H and W dynamic."""
    with torch.no_grad():
        return torch.onnx.export(backbone.eval(), (image,), dynamo=True, verbose=False,
                                 dynamic_shapes=_dynamic_sizes(backbone, image, max_side))
