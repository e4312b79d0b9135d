"""SCHP's evaluate.py pipeline re-stated with OpenCV and NumPy, as SCHP runs it (utils/transforms.py,
datasets.py, evaluate.py): the reference that seglab's affine inference mode is checked against
(tests/engine/test_affine_inference.py; the demo model in tests/test_parsing_demo.py)."""

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD

LIP_FLIP = ((14, 15), (16, 17), (18, 19))


def schp_get_affine_transform(center, scale, output_size, inv=False):
    """SCHP's get_affine_transform (rotation 0): three point pairs, cv2.getAffineTransform."""
    src_w, dst_w, dst_h = scale[0], output_size[1], output_size[0]
    src_dir, dst_dir = np.array([0, src_w * -0.5]), np.array([0, (dst_w - 1) * -0.5])
    src, dst = np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + src_dir
    dst[0] = [(dst_w - 1) * 0.5, (dst_h - 1) * 0.5]
    dst[1] = dst[0] + dst_dir
    for pts in (src, dst):
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]], np.float32)
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)


def schp_box2cs(w, h, input_size):
    aspect = input_size[1] / input_size[0]
    bw, bh = w - 1.0, h - 1.0
    center = np.array([bw * 0.5, bh * 0.5], np.float32)
    if bw > aspect * bh:
        bh = bw / aspect
    elif bw < aspect * bh:
        bw = bh * aspect
    return center, np.array([bw, bh], np.float32)


def schp_evaluate_labels(network_quarter, image_rgb, input_size, scales, flip, flip_pairs):
    """One image through SCHP's evaluation: BGR read, affine warp (INTER_LINEAR, black border), BGR normalise,
    multi_scale_testing (flip merged on the network's output, align_corners=True resizes, logits averaged),
    argmax, transform_parsing (INTER_NEAREST back, 0 outside)."""
    h, w = image_rgb.shape[:2]
    center, scale = schp_box2cs(w, h, input_size)
    trans = schp_get_affine_transform(center, scale, input_size)
    bgr = cv2.warpAffine(np.ascontiguousarray(image_rgb[:, :, ::-1]), trans, (input_size[1], input_size[0]),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    x = torch.from_numpy(bgr.astype(np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN[::-1]).view(3, 1, 1), torch.tensor(IMAGENET_STD[::-1]).view(3, 1, 1)
    x = ((x - mean) / std)[None]
    # SCHP's network reads these BGR channels; the converted seglab network is the same with its first
    # convolution's input channels reversed (seglab.convert.schp), i.e. it reads them in RGB order
    x = x.flip(1)
    if flip:
        x = torch.cat([x, x.flip(-1)])
    outputs = []
    for s in scales:
        scaled = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=True)
        out = network_quarter(scaled)  # the fusion logits at 1/4 resolution
        output = out[0]
        if flip:
            flipped = out[1].clone()
            perm = list(range(flipped.shape[0]))
            for a, b in flip_pairs:
                perm[a], perm[b] = b, a
            output = (output + flipped[perm].flip(-1)) * 0.5
        outputs.append(F.interpolate(output[None], size=input_size, mode="bilinear", align_corners=True)[0])
    parsing = torch.stack(outputs).mean(0).argmax(0).numpy().astype(np.uint8)
    back = schp_get_affine_transform(center, scale, input_size, inv=True)
    return cv2.warpAffine(parsing, back, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def quarter_network(model):
    """The fusion logits at 1/4 resolution, as SCHP's network returns them (the model in train mode returns them
    unresized; BatchNorm and dropout kept in eval)."""

    def run(x):
        model.train()
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.Dropout2d)):
                m.eval()
        with torch.no_grad():
            out = model(x)["out"]
        model.eval()
        return out

    return run
