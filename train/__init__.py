"""skinedge.train: the workstation stage (TensorFlow): data, QAT training and the float-vs-int8 comparison.

    skinedge train DATA --out RUN_DIR        (skinedge.train.fit.train)
    skinedge compare [DATA] --run RUN_DIR --bundle BUNDLE --out REPORT_DIR   (skinedge.train.compare.run_compare)

Depends on skinedge.convert (TensorFlow set-up, network factories, metrics, the run-dir reader, the PTQ baseline)
and skinedge.device (preprocessing, labels).
"""
