"""The embedded DeepLens stack: PostgreSQL, Redis, Milvus Lite, Triton, the gRPC server and a worker, all from
PyPI packages, bound to 127.0.0.1, with every byte of state under one data directory."""

from deeplens_stack.stack import Stack, StackConfig

__all__ = ["Stack", "StackConfig"]
