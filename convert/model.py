"""Model factories: the float network, its quantization-aware twin, and which layers train in each phase.

    model = build_model("mobilenetv2", num_classes=7, img_size=128, alpha=1.0, weights_path=None)
    qat = quantize_model(model)      # tfmot QAT; Rescaling stays float (tfmot rejects it), the rest is annotated

Every network takes raw RGB pixels in [0, 255] (float32 here, uint8 once converted) and scales them itself, so the
device hands camera pixels straight to the model.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from skinedge.convert.tfcompat import keras, tf, tfmot

log = logging.getLogger(__name__)

HEAD_PREFIX = "head_"  # names of the layers added on top of the backbone
RESCALE = "rescale"  # name of the layer that scales raw pixels to the network's range
# Smallest per-channel weight range fake-quantized (and so converted). ImageNet MobileNetV2 has channels whose
# weights are all zero and whose folded bias is not: with a range near 0 the int32 bias scale (input scale x
# weight scale) is so small that the converter saturates the bias at the int32 limit, and the int8 model then
# outputs 0.92 where the QAT model outputs 2.28 for every image. Below 1e-3 a channel is dead anyway.
MIN_WEIGHT_RANGE = 1e-3


def _cnn(x, num_classes: int):
    """A compact from-scratch CNN like the notebooks' baseline, with batch norm."""
    x = keras.layers.Rescaling(1 / 255.0, name=RESCALE)(x)
    for i, filters in enumerate((32, 64, 128, 256)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    return x


def build_model(
    arch: str, num_classes: int, img_size: Union[int, tuple[int, int]], alpha: float = 1.0,
    weights_path: Optional[str] = None, dropout: float = 0.2,
) -> keras.Model:
    """The float model: raw pixels in, class probabilities out. All layers sit in one flat functional graph
    (the backbone is not nested) so tfmot can annotate them one by one. `img_size` is N (square) or (height, width):
    the network is fully convolutional up to its global pooling, so ImageNet weights fit any input shape."""
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    inputs = keras.Input((height, width, 3), name="image")
    if arch == "cnn":
        x = _cnn(inputs, num_classes)
    elif arch == "mobilenetv2":
        # (p - 128) / 127.5 rather than MobileNetV2's p / 127.5 - 1 (0.4 % of a grey level apart): every uint8
        # pixel then lands exactly on the int8 grid of the converted model's input (scale 1/127.5, zero point
        # 128), so int8 sees the very pixels QAT saw; with -1 each pixel sat half a step between two int8 values
        x = keras.layers.Rescaling(1 / 127.5, offset=-128 / 127.5, name=RESCALE)(inputs)
        backbone = keras.applications.MobileNetV2(
            input_tensor=x, include_top=False, alpha=alpha, weights=weights_path,
            input_shape=(height, width, 3),
        )
        x = backbone.output
    else:
        raise ValueError(f"unknown arch {arch!r}")
    x = keras.layers.GlobalAveragePooling2D(name=HEAD_PREFIX + "pool")(x)
    x = keras.layers.Dropout(dropout, name=HEAD_PREFIX + "dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=HEAD_PREFIX + "probs")(x)
    return keras.Model(inputs, outputs, name=f"skinedge_{arch}")


def rescale_layer(model: keras.Model) -> Optional[keras.layers.Rescaling]:
    """The model's rescale layer, or None for a model that takes raw pixels."""
    try:
        return model.get_layer(RESCALE)
    except ValueError:
        return None


def input_normalization(model: keras.Model) -> tuple[float, float]:
    """(mean, std) such that the network proper sees (pixel - mean) / std: read from the model's rescale layer."""
    layer = rescale_layer(model)
    if layer is None:
        return 0.0, 1.0
    scale, offset = float(layer.scale), float(layer.offset)
    return round(-offset / scale, 6), round(1 / scale, 6)


def _annotate(layer: keras.layers.Layer) -> keras.layers.Layer:
    # tfmot has no quantize config for Rescaling (nor the input layer): leave them float. The converter still
    # quantizes the rescale, calibrated by the representative data set.
    if isinstance(layer, (keras.layers.Rescaling, keras.layers.InputLayer)):
        return layer
    return tfmot.quantization.keras.quantize_annotate_layer(layer)


def _inbound(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    inbound = layer.inbound_nodes[0].inbound_layers
    return inbound if isinstance(inbound, list) else [inbound]


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """The same function with every conv -> batch-norm pair merged into one conv with a bias (exact in inference).

    The TFLite converter folds batch norm into the preceding conv and quantizes the folded kernel per channel,
    while tfmot simulates the unfolded pair; where batch-norm scales differ a lot across channels (they do in
    MobileNetV2) the QAT model then mispredicts what the int8 model computes. Folding first makes QAT simulate
    exactly the kernels that get converted. Batch norm is frozen in the phases that follow, so nothing is lost.
    """
    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    fold: dict[str, keras.layers.BatchNormalization] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            (src,) = _inbound(layer)
            if isinstance(src, convs) and len(src.outbound_nodes) == 1:
                fold[src.name] = layer
    folded_bn = {bn.name for bn in fold.values()}
    outputs: dict[str, Any] = {}
    inputs = None
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            inputs = keras.Input(batch_shape=layer.get_config()["batch_input_shape"], name=layer.name)
            outputs[layer.name] = inputs
            continue
        args = [outputs[src.name] for src in _inbound(layer)]
        arg = args[0] if len(args) == 1 else args
        if layer.name in folded_bn:
            outputs[layer.name] = arg  # merged into the conv before it
            continue
        config = layer.get_config()
        if layer.name in fold:
            config["use_bias"] = True
        clone = layer.__class__.from_config(config)
        outputs[layer.name] = clone(arg)
        weights = layer.get_weights()
        if layer.name in fold:
            bn = fold[layer.name]
            gamma = bn.gamma.numpy() if bn.scale else 1.0
            beta = bn.beta.numpy() if bn.center else 0.0
            scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
            kernel = weights[0]
            bias = weights[1] if layer.use_bias else np.zeros(scale.shape[0], np.float32)
            if isinstance(layer, keras.layers.DepthwiseConv2D):  # kernel (h, w, in, multiplier)
                kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
            else:  # kernel (h, w, in, out)
                kernel = kernel * scale
            weights = [kernel, (bias - bn.moving_mean.numpy()) * scale + beta]
        clone.set_weights(weights)
    return keras.Model(inputs, outputs[model.layers[-1].name], name=model.name)


class PerChannelWeights(tfmot.quantization.keras.quantizers.Quantizer):
    """Symmetric per-channel int8 fake quantization of a conv kernel, as the TFLite converter quantizes it:
    scale = max(max|w|, MIN_WEIGHT_RANGE) / 127 for each output channel (the last axis of a Conv2D kernel; for a
    DepthwiseConv2D kernel (h, w, in, multiplier) every in x multiplier channel). No variables: the range is read
    from the weights at every step, so checkpoints are the same with and without it."""

    def build(self, tensor_shape: Any, name: str, layer: Any) -> dict:
        # tfmot passes the QuantizeWrapper here, not the layer it wraps
        self.conv = not isinstance(getattr(layer, "layer", layer), keras.layers.DepthwiseConv2D)
        return {}

    def __call__(self, inputs: Any, training: Any, weights: dict, **kwargs: Any) -> Any:
        h, w, c_in, c_out = inputs.shape  # static: kernels have known shapes
        # a 4-D tensor with the channels last, as the per-channel op wants (depthwise: in x multiplier channels)
        flat = inputs if self.conv else tf.reshape(inputs, (h, w, 1, c_in * c_out))
        bound = tf.maximum(tf.stop_gradient(tf.reduce_max(tf.abs(flat), axis=[0, 1, 2])), MIN_WEIGHT_RANGE)
        fq = tf.quantization.fake_quant_with_min_max_vars_per_channel(flat, -bound, bound, num_bits=8,
                                                                     narrow_range=True)
        return tf.reshape(fq, (h, w, c_in, c_out))

    def get_config(self) -> dict:
        return {}


class ConvBeforeReLU(tfmot.quantization.keras.QuantizeConfig):
    """A conv whose output goes straight into a ReLU: fake-quantize its kernel; its output stays float, because
    the converter fuses conv and ReLU and quantizes once, after the ReLU (whose own config does that)."""

    def get_weights_and_quantizers(self, layer: Any) -> list:
        attr = "depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D) else "kernel"
        return [(getattr(layer, attr), PerChannelWeights())]

    def get_activations_and_quantizers(self, layer: Any) -> list:
        return []

    def set_quantize_weights(self, layer: Any, quantize_weights: list) -> None:
        attr = "depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D) else "kernel"
        setattr(layer, attr, quantize_weights[0])

    def set_quantize_activations(self, layer: Any, quantize_activations: list) -> None:
        pass

    def get_output_quantizers(self, layer: Any) -> list:
        return []

    def get_config(self) -> dict:
        return {}


# Subclasses under other names: tfmot's LayerReLUQuantize transform matches the class names Conv2D and
# DepthwiseConv2D followed by a ReLU and gives the conv a no-op config, dropping its *weight* quantization too.
# After batch-norm folding that is every conv but the projections, so QAT would train float weights that the
# converter then rounds to int8 unseen. Renamed, the pattern does not match and ConvBeforeReLU applies.
class ReLUConv2D(keras.layers.Conv2D):
    pass


class ReLUDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    pass


QAT_OBJECTS = {"PerChannelWeights": PerChannelWeights, "ConvBeforeReLU": ConvBeforeReLU,
               "ReLUConv2D": ReLUConv2D, "ReLUDepthwiseConv2D": ReLUDepthwiseConv2D}


def quantize_model(model: keras.Model, relu_conv_weights: bool = True) -> keras.Model:
    """The quantization-aware version of a float model (batch norm folded first; weights carried over).

    `relu_conv_weights=False` builds the layout of runs made before convs followed by a ReLU had their weights
    fake-quantized (tfmot's no-op config there), so their QAT checkpoints still load."""
    model = fold_batchnorm(model)
    before_relu = set() if not relu_conv_weights else {
        layer.name for layer in model.layers
        if type(layer) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D) and len(layer.outbound_nodes) == 1
        and isinstance(layer.outbound_nodes[0].outbound_layer, keras.layers.ReLU)
    }

    def annotate(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in before_relu:
            cls = ReLUDepthwiseConv2D if isinstance(layer, keras.layers.DepthwiseConv2D) else ReLUConv2D
            return tfmot.quantization.keras.quantize_annotate_layer(cls.from_config(layer.get_config()),
                                                                    quantize_config=ConvBeforeReLU())
        return _annotate(layer)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    with tfmot.quantization.keras.quantize_scope(QAT_OBJECTS):
        return tfmot.quantization.keras.quantize_apply(annotated)


@contextlib.contextmanager
def _ema_decay(decay: Callable[[], float]):
    """Temporarily override the EMA decay of tfmot's moving-average activation quantizers (hard-coded 0.999)."""
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original = quant_ops.MovingAvgQuantize

    def patched(*args, **kwargs):
        kwargs["ema_decay"] = decay()
        return original(*args, **kwargs)

    quant_ops.MovingAvgQuantize = patched
    try:
        yield
    finally:
        quant_ops.MovingAvgQuantize = original


def _variable(layer: keras.layers.Layer, *names: str) -> Optional[np.ndarray]:
    for v in layer.weights:
        if v.name.split("/")[-1].split(":")[0] in names:
            return v.numpy()
    return None


def _activation_scale(model: keras.Model, layer: keras.layers.Layer) -> Optional[float]:
    """The int8 scale of `layer`'s output in the converted model: its output quantizer's range / 255, or, through
    layers that pass int8 values on unchanged (padding, dropout), the scale of what feeds them."""
    while True:
        if layer.name == RESCALE or isinstance(layer, keras.layers.InputLayer):
            return 1 / input_normalization(model)[1]  # the input's fixed quantization (to_int8_tflite)
        lo, hi = _variable(layer, "output_min", "post_activation_min"), _variable(layer, "output_max",
                                                                                    "post_activation_max")
        if lo is not None and hi is not None:
            return float(hi - lo) / 255
        if not isinstance(getattr(layer, "layer", layer), (keras.layers.ZeroPadding2D, keras.layers.Dropout)):
            return None
        layer = _inbound(layer)[0]


def _weight_scales(layer: keras.layers.Layer) -> np.ndarray:
    """Per-output-channel (or per-tensor) int8 weight scales, as the converter stores them (narrow range, +-127)."""
    lo, hi = _variable(layer, "kernel_min"), _variable(layer, "kernel_max")
    if lo is not None and hi is not None:  # tfmot's own weight quantizer: its last range
        return np.maximum(hi - lo, 1e-8) / 254
    depthwise = isinstance(layer.layer, keras.layers.DepthwiseConv2D)
    kernel = _variable(layer, "depthwise_kernel" if depthwise else "kernel")
    channels = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
    return np.maximum(np.abs(kernel.reshape(-1, channels)).max(0), MIN_WEIGHT_RANGE) / 127  # PerChannelWeights


@contextlib.contextmanager
def int32_biases(qat: keras.Model) -> Iterator[None]:
    """The QAT model with every conv and dense bias rounded to the int32 grid the converter stores it on (scale:
    input scale x weight scale of each channel), restored afterwards.

    tfmot leaves biases float. The rounding is tiny, but it moves some outputs across a rounding step of the
    next quantizer, and MobileNetV2 amplifies such one-step differences: on the trained HAM10000 model it is
    most of what separated the QAT model from its int8 conversion (top-1 agreement 95.5 % -> 97.9 % with it)."""
    saved = []
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is None or getattr(inner, "bias", None) is None:
            continue
        s_in = _activation_scale(qat, _inbound(layer)[0])
        if not s_in:  # no quantizer upstream, or a range never calibrated: nothing to mirror
            continue
        scale = s_in * _weight_scales(layer)
        bias = inner.bias.numpy()
        saved.append((inner.bias, bias))
        inner.bias.assign((np.round(bias / scale) * scale).astype(bias.dtype))
    try:
        yield
    finally:
        for var, bias in saved:
            var.assign(bias)


def calibrate_qat_ranges(qat: keras.Model, images: np.ndarray, batch_size: int = 64) -> None:
    """Set the QAT model's activation ranges from data before training it.

    tfmot starts every activation range at [-6, 6] and moves it by an EMA with decay 0.999, so a short QAT run
    quantizes with ranges that clip MobileNetV2's linear bottlenecks and residual sums: the QAT model then
    disagrees with its own float weights and QAT starts from a broken model. Here the first batch sets each range
    outright (decay 0) and later batches average in (decay i/(i+1)), like the converter's calibration. Weights are
    not touched; batch-norm layers must already be frozen (set_phase("qat")) so they use their float statistics.
    """
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    step = {"i": 0}
    with _ema_decay(lambda: step["i"] / (step["i"] + 1)):
        for batch in batches:
            qat(tf.constant(batch, tf.float32), training=True)
            step["i"] += 1
    log.info("calibrated QAT activation ranges on %d images", len(images))


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [
        layer for layer in model.layers
        # QAT wraps layers as "quant_<name>"
        if not layer.name.removeprefix("quant_").startswith(HEAD_PREFIX)
        and not isinstance(layer, keras.layers.InputLayer)
    ]


def set_phase(model: keras.Model, phase: str, arch: str, finetune_from: float) -> None:
    """Freeze and unfreeze layers for a training phase.

    head: backbone frozen. finetune: the upper `1 - finetune_from` of the backbone trains (everything for the
    from-scratch CNN). settle and qat: like finetune. Batch-norm layers are frozen as explained below.
    """
    layers = backbone_layers(model)
    model.trainable = True
    for layer in model.layers:
        layer.trainable = True
    if phase == "head":
        for layer in layers:
            layer.trainable = False
    elif phase in ("finetune", "settle", "qat") and arch == "mobilenetv2":
        cut = int(len(layers) * finetune_from)
        for layer in layers[:cut]:
            layer.trainable = False
    # Batch norm stays in inference mode whenever a pretrained backbone is fine-tuned (its statistics would lag
    # the weights: Keras' MobileNetV2 uses momentum 0.999) and during QAT (fake-quantized activations at small
    # batch sizes would disturb the statistics learned in the float phase).
    if phase == "qat" or (phase in ("finetune", "settle") and arch == "mobilenetv2"):
        for layer in model.layers:
            inner = getattr(layer, "layer", layer)  # QuantizeWrapper keeps the original in .layer
            if isinstance(inner, keras.layers.BatchNormalization):
                layer.trainable = False
    n_train = sum(int(keras.backend.count_params(w)) for w in model.trainable_weights)
    log.info("phase %s: %d trainable parameters", phase, n_train)


def load_float_model(arch: str, num_classes: int, img_size: Union[int, tuple[int, int]], alpha: float,
                     weights_file: str) -> keras.Model:
    model = build_model(arch, num_classes, img_size, alpha, weights_path=None)
    model.load_weights(weights_file)
    return model


def load_qat_model(arch: str, num_classes: int, img_size: Union[int, tuple[int, int]], alpha: float,
                   weights_file: str) -> keras.Model:
    """Rebuild the QAT graph from code and load its weights (no deserialised code: safe by construction)."""
    qat = quantize_model(build_model(arch, num_classes, img_size, alpha, weights_path=None))
    try:
        qat.load_weights(weights_file)
    except ValueError as exc:
        if "variables during loading" not in str(exc):
            raise
        # a run trained before ReLU-fed convs had their weights fake-quantized: its checkpoint lists each such
        # layer's variables once fewer; rebuild that layout (the same weights, float kernels in those layers)
        log.warning("%s: QAT weights of an earlier layout (conv weights before ReLUs not fake-quantized)",
                    weights_file)
        qat = quantize_model(build_model(arch, num_classes, img_size, alpha, weights_path=None), False)
        qat.load_weights(weights_file)
    return qat
