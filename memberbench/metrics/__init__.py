"""Metrics: one file per quantity of SPEC.md (M1..M7) plus detection statistics.

Importing this package is cheap: the metric modules are registered lazily as
``"module:Class"`` entries, so ``torch`` / ``onnxruntime`` / ``open_clip`` load only on use.
"""
