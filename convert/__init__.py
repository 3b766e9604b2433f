"""skinedge.convert: QAT Keras model -> verified full-integer int8 TFLite bundle (TensorFlow).

    skinedge convert RUN_DIR --out BUNDLE_DIR      (skinedge.convert.export.convert_run)

Owns the network factories and their QAT twin (model), the metrics (metrics) and the reader of training run dirs
(rundir), which training uses too. Depends only on skinedge.device (the bundle format, the classifier used to
verify the converted model).
"""
