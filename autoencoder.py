"""The autoencoder baseline: a decoder for the ResNet encoder, and its loss.

Chen & Li (2021, §3) contrast instance discrimination with reconstruction:
on images whose views share an easy feature (RandBits, a digit on a photo)
a contrastive encoder learns that feature and suppresses the others, while
an autoencoder, which must reproduce every pixel, suffers much less.
`--train_mode=autoencoder` trains the same encoder as pretraining with this
decoder on one augmented view per image, with the same online probe.

Backend-neutral: keras, keras.ops and numpy only.
"""
import keras
from keras import ops

import resnet

# The decoder starts at the smallest side of at least this size that the
# image side reaches by halving.
MIN_START_SIDE = 4
MIN_WIDTH = 16


def decoder_plan(image_size):
    """(start side s0, number of 2x upsamplings k) with s0·2^k = image_size:
    k halvings of image_size while it stays even and s0 ≥ MIN_START_SIDE
    (8 → (4, 1), 28 → (7, 2), 32 → (4, 3), 224 → (7, 5), 9 → (9, 0))."""
    side, steps = image_size, 0
    while side % 2 == 0 and side // 2 >= MIN_START_SIDE:
        side, steps = side // 2, steps + 1
    return side, steps


class Decoder(keras.layers.Layer):
    """x̂ = sigmoid(conv(up_k(... up_1(reshape(ReLU(BN(W h))))))) in [0, 1].

    h [n, D] is mapped by a dense layer to an s0 × s0 feature map
    (`decoder_plan`), upsampled k times by stride-2 4×4 transposed
    convolutions, each followed by batch norm and ReLU, with widths
    w_i = max(16, ⌊256·width_multiplier⌋ / 2^i), and mapped to `channels`
    outputs by a 3×3 convolution and a sigmoid (inputs lie in [0, 1]).

    Args:
        image_size: side of the reconstructed images.
        channels: channels of the reconstructed images.
        width_multiplier: scales the widths, as the encoder's.
        batch_norm_decay, global_bn: as the encoder's batch norm.
    """

    def __init__(self, image_size, channels, width_multiplier=1.0,
                 batch_norm_decay=0.9, global_bn=False, name="decoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.start_side, steps = decoder_plan(image_size)
        widths = [max(MIN_WIDTH, int(256 * width_multiplier) >> i) for i in range(steps + 1)]
        self.start_width = widths[0]
        sync = resnet.synchronized_bn(global_bn)
        self.dense = keras.layers.Dense(self.start_side ** 2 * widths[0], use_bias=False,
                                        name="dense")
        self.dense_bn = resnet.batch_norm("batch_normalization", batch_norm_decay, sync)
        self.ups = []
        for i, width in enumerate(widths[1:]):
            self.ups.append((
                keras.layers.Conv2DTranspose(width, 4, strides=2, padding="same",
                                             use_bias=False, name=f"up_{i}"),
                resnet.batch_norm(f"batch_normalization_{i + 1}", batch_norm_decay, sync)))
        self.output_conv = keras.layers.Conv2D(channels, 3, padding="same", name="output")

    def call(self, h, training=None):
        x = ops.relu(self.dense_bn(self.dense(h), training=training))
        x = ops.reshape(x, (-1, self.start_side, self.start_side, self.start_width))
        for up, bn in self.ups:
            x = ops.relu(bn(up(x), training=training))
        return ops.sigmoid(self.output_conv(x))


def reconstruction_loss(images, reconstruction, image_channels):
    """Balanced mean squared error of a reconstruction, in float32:

        L = mean_{n,h,w,c < C} (x̂ − x)² + mean_{n,h,w,c ≥ C} (x̂ − x)²,

    C = `image_channels`: the image's channels and the channels appended to
    it (the RandBits planes) are averaged separately and the two means
    added (the second is absent without appended channels). A plain mean
    over all 3 + K channels weighs the K bit planes K/3 times the image, and
    with 10 bits the autoencoder then spends its capacity on the bits and
    drops the digit too (README, "Feature suppression").

    Args:
        images: the targets x, [n, H, W, C + K] in [0, 1].
        reconstruction: x̂, same shape.
        image_channels: C.
    """
    squared = ops.square(ops.cast(reconstruction, "float32") - ops.cast(images, "float32"))
    loss = ops.mean(squared[..., :image_channels])
    if squared.shape[-1] > image_channels:
        loss = loss + ops.mean(squared[..., image_channels:])
    return loss
