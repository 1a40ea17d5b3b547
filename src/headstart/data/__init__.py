"""Data: labeled datasets from folders, manifests, arrays and built-in sets; splits; input checks."""

from .arrays import from_arrays, load_npz
from .checks import validate_dataset
from .dataset import LabeledDataset, Problem, Splits, TorchDataset
from .domain import UNLABELED, align_classes, is_labeled, load_domain
from .folders import load_image_folder, load_image_splits
from .images import IMAGE_EXTENSIONS, check_image, open_image
from .load import load_dataset, load_splits, register_builtin, register_file_type
from .manifest import load_manifest
from .shapes import SHAPE_NAMES, make_shapes
from .split import stratified_split
from .text import load_text_folder, load_text_splits, load_text_table, read_lines

__all__ = [
    "IMAGE_EXTENSIONS",
    "LabeledDataset",
    "Problem",
    "SHAPE_NAMES",
    "UNLABELED",
    "align_classes",
    "is_labeled",
    "load_domain",
    "Splits",
    "TorchDataset",
    "check_image",
    "from_arrays",
    "load_dataset",
    "load_image_folder",
    "load_image_splits",
    "load_manifest",
    "load_npz",
    "load_text_folder",
    "load_text_splits",
    "load_text_table",
    "read_lines",
    "load_splits",
    "make_shapes",
    "open_image",
    "register_builtin",
    "register_file_type",
    "stratified_split",
    "validate_dataset",
]
