"""Baomi's wire protocol: generated protobuf code (``baomi.v1``) and the chain rule."""
