"""Datasets: image decoding, buckets, packing to parquet, streaming reader, prompt templates, demo data.

Nothing is imported here, so ``python -m u1lib pack`` stays free of torch (only ``reader`` needs it).
"""
