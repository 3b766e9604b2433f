"""skinedge: train a QAT skin-lesion classifier, convert it to a full-integer int8 TFLite bundle, run it offline.

Stages (dependencies point one way, device <- convert <- train):
    skinedge.device   runs on the Raspberry Pi without TensorFlow; owns preprocessing, labels and the bundle format
    skinedge.convert  QAT Keras model -> verified int8 TFLite bundle
    skinedge.train    data, QAT training and the float-vs-int8 comparison
"""

__version__ = "0.1.0"
