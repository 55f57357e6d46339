"""Inference and evaluation: post-processing, the ICDAR2015 metric and the Detector."""
