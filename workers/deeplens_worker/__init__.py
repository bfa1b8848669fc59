"""DeepLens arq workers: the hands of the long-running operations."""
