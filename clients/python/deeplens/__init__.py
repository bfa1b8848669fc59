"""DeepLens Python client. Generated gRPC code lives in ``deeplens.v1``; ``deeplens.client`` wraps it."""
