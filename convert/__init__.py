"""skinedge.convert: QAT Keras model -> verified full-integer int8 TFLite bundle (TensorFlow).

    skinedge convert RUN_DIR --out BUNDLE_DIR      (skinedge.convert.export.convert_run)

Depends only on skinedge.device (the bundle format, the classifier used to verify the converted model).
"""
