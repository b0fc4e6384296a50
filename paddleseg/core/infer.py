"""Model prediction mapped back to the original label size."""
import paddle.nn.functional as F


def reverse_transform(logit, trans_info):
    """Undo, newest first, the resizes and paddings the transforms recorded."""
    for op, (h, w) in reversed(trans_info):
        if op == "resize":
            logit = F.interpolate(logit, size=[h, w], mode="bilinear")
        elif op == "padding":
            logit = logit[:, :, :h, :w]
        else:
            raise ValueError(f"unknown transform record {op!r}")
    return logit


def inference(model, img, trans_info=()):
    """Logits [N, C, H, W] at the original image size for a batch of one image."""
    logit = model(img)[0]
    return reverse_transform(logit, trans_info)


def predicted_labels(logit, trans_info=()):
    """The label map ``[H, W]`` (numpy) of one image's logits ``[1, C, h, w]`` at the model's
    size, at the original image size."""
    return reverse_transform(logit, trans_info).argmax(axis=1).numpy()[0]
