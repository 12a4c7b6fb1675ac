"""Two CNNs with seeded random weights, built with ``onnx.helper``: one cheap, one costly.

They exist to have real ONNX Runtime work of clearly different cost (their outputs are meaningless):
``smallcnn`` (3 conv layers on 3×64×64, well under a millisecond per image on one core) and
``resnet18-half`` (ResNet-18's topology at half width on 3×224×224, about 10 ms per image on one core).
"""

from __future__ import annotations

import onnx

from squishy.examples.graph import FLOAT, GraphBuilder, tensor_info

SMALLCNN_RESOLUTION = 64
SMALLCNN_CHANNELS = (16, 32, 64)
SMALLCNN_CLASSES = 10

RESNET_RESOLUTION = 224
# ResNet-18 uses 64 channels in its first stage; half the width is a quarter of the work, which puts one
# image at ~10 ms on one core here: costly next to smallcnn, yet quick enough to build, test and profile.
RESNET_WIDTH = 32
RESNET_CLASSES = 1000
# Scale of the second conv of each residual branch: keeps activations bounded through 8 blocks of random
# weights without batch norm (the role BN's zero-init gamma plays in trained ResNets).
RESIDUAL_GAIN = 0.5


def _classifier_head(g: GraphBuilder, x: str, features: int, classes: int) -> None:
    logits = g.dense(g.global_avg_pool_flat(x), features, classes)
    g.node("Softmax", [logits], output="probabilities", axis=1)


def smallcnn_onnx(seed: int = 0) -> onnx.ModelProto:
    """``image`` FP32 [-1, 3, 64, 64] → ``probabilities`` FP32 [-1, 10]."""
    g = GraphBuilder(seed)
    x, channels = "image", 3
    for out_channels in SMALLCNN_CHANNELS:
        x = g.max_pool(g.relu(g.conv(x, channels, out_channels, 3)), 2, 2)
        channels = out_channels
    _classifier_head(g, x, channels, SMALLCNN_CLASSES)
    res = SMALLCNN_RESOLUTION
    return g.model(
        [tensor_info("image", FLOAT, ["batch", 3, res, res])],
        [tensor_info("probabilities", FLOAT, ["batch", SMALLCNN_CLASSES])],
        "smallcnn",
        f"3 conv+pool layers {SMALLCNN_CHANNELS} on 3x{res}x{res}, random weights (seed {seed})",
    )


def resnet18_stages(g: GraphBuilder, image: str, width: int) -> tuple[str, int]:
    """ResNet-18's stem and four stages of two residual blocks, ``width`` channels in the first stage (no
    batch norm: ``RESIDUAL_GAIN`` scales each branch's second conv). Returns the last feature map and its
    channels."""
    x = g.max_pool(g.relu(g.conv(image, 3, width, 7, 2)), 3, 2)
    channels = width
    for stage, multiplier in enumerate((1, 2, 4, 8)):
        out_channels = width * multiplier
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            branch = g.relu(g.conv(x, channels, out_channels, 3, stride))
            branch = g.conv(branch, out_channels, out_channels, 3, 1, gain=RESIDUAL_GAIN)
            shortcut = x if stride == 1 and channels == out_channels else g.conv(x, channels, out_channels, 1, stride)
            x = g.relu(g.node("Add", [branch, shortcut]))
            channels = out_channels
    return x, channels


def resnet18_half_onnx(seed: int = 0) -> onnx.ModelProto:
    """``image`` FP32 [-1, 3, 224, 224] → ``probabilities`` FP32 [-1, 1000]; ResNet-18 at half width."""
    g = GraphBuilder(seed)
    x, channels = resnet18_stages(g, "image", RESNET_WIDTH)
    _classifier_head(g, x, channels, RESNET_CLASSES)
    res = RESNET_RESOLUTION
    return g.model(
        [tensor_info("image", FLOAT, ["batch", 3, res, res])],
        [tensor_info("probabilities", FLOAT, ["batch", RESNET_CLASSES])],
        "resnet18_half",
        f"ResNet-18 topology at width {RESNET_WIDTH} on 3x{res}x{res}, no batch norm, random weights (seed {seed})",
    )
