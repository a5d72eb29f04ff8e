"""Benchmarks: the collector's durable ingest rate and the idle agent's footprint.

``python -m bench`` (``make bench``) prints the figures side by side; see ``__main__``.
Nothing here asserts a time: machines are noisy, so the bench measures and reports.
"""
