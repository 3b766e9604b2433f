"""Constants shared by every stage: file names of the bundle, image rules, the melanoma flag, the notice.

Training, conversion and the device all read these from here, so a bundle written on the workstation is read the
same way on the Pi.
"""

from __future__ import annotations

# Bundle layout: a folder holding these three files.
MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
META_FILE = "model.json"
BUNDLE_FORMAT = "skinedge-bundle"
BUNDLE_FORMAT_VERSION = 1

# Files packed into the zip archive appended to model.tflite (the TFLite Metadata convention for associated
# files: the flatbuffer ignores trailing bytes, and Python's zipfile finds the archive from the end of the file).
EMBEDDED_LABELS = "labels.txt"
EMBEDDED_SPEC = "skinedge.json"

# File extensions treated as images when walking folders (compared lower-case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
# Refuse images larger than this many pixels before decoding them (decompression bombs). 8000x8000 is far above
# any dermatoscope or phone camera, far below what would exhaust a Pi's memory.
MAX_IMAGE_PIXELS = 64_000_000

# Labels that mean melanoma in the data sets we know (HAM10000 `dx` code, ISIC folder name).
MELANOMA_LABELS = frozenset({"mel", "melanoma"})
# What a bundle's melanoma flag reads P(melanoma) at (`skinedge convert --flag-prior`): "train", the training
# split's class frequencies (the rule stores them; for a model trained class-balanced), or "none", the raw output.
FLAG_PRIORS = ("train", "none")

# Preprocessing modes understood by skinedge.device.preprocess (stored in model.json as input.resize).
RESIZE_CENTER_CROP = "center_crop"

# Test-time augmentation (model.json input.tta, `convert --tta`, `device classify --tta`): the views of an image
# whose class probabilities are averaged, named as the operations applied to the preprocessed pixels. A lesion
# has no orientation of its own, so a mirrored or turned view is as good a look at it as the original.
TTA_VIEWS = {
    "none": ("identity",),
    "hflip": ("identity", "flip_lr"),
    "flips": ("identity", "flip_lr", "flip_ud", "rot180"),
    "dihedral": ("identity", "flip_lr", "flip_ud", "rot180", "transpose", "rot90", "rot270", "transverse"),
}

NOT_A_DIAGNOSIS = (
    "skinedge is a research and triage aid, not a medical device: its output is not a diagnosis. "
    "Any lesion of concern must be examined by a qualified clinician."
)
INTENDED_USE = (
    "Research and education on offline skin-lesion classification of dermoscopy images, and triage support "
    "under clinical supervision. Not for self-diagnosis or as the sole basis for any clinical decision."
)
