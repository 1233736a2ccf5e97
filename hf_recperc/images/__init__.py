"""The one home of images: every read, decode, cache key, label encoding, augmentation and loader of the trainer,
the perception report and the experiments (docs/design.md, "Data flow").

Data flow, one direction: :mod:`.sources` (what a user names -> splits or streams) -> :mod:`.decode` (one image ->
pixels; cache keys and files) -> :mod:`.store` (a split decoded once, uint8 and float views) -> :mod:`.datasets`
(torch datasets; the label encoder) -> :mod:`.augment` (normalise, crop, flip on the device) -> :mod:`.pipeline`
(samplers, loaders, the device pipeline of the trainer).
"""

from .augment import normalise_uint8, paper_preprocessing, random_crop_flip, random_resized_crop_flip
from .datasets import LabelEncoder, ProcessedImages, StoredImages, StreamedImages, processor_transform
from .decode import cache_root, decode_image, decode_pixels, unreadable_image
from .sources import (
    DEFAULT_DATASET,
    ImageData,
    ImageSource,
    StreamData,
    load_image_dataset,
    load_stream,
    split_conflict,
)
from .store import decode_uint8, images_to_array

__all__ = [
    "DEFAULT_DATASET",
    "ImageSource",
    "ImageData",
    "StreamData",
    "load_image_dataset",
    "load_stream",
    "split_conflict",
    "decode_image",
    "decode_pixels",
    "unreadable_image",
    "cache_root",
    "decode_uint8",
    "images_to_array",
    "LabelEncoder",
    "StoredImages",
    "ProcessedImages",
    "StreamedImages",
    "processor_transform",
    "normalise_uint8",
    "random_crop_flip",
    "random_resized_crop_flip",
    "paper_preprocessing",
]
