"""Data: readers (formats), polygon repair, image decoding, targets, augmentation, dataset and cache."""
