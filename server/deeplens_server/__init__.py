"""DeepLens backend: the gRPC API and the domain modules its workers share (imaging, stores, queue, events)."""

import os

# A DeepLens process shares its cores with the others (a worker process per core, Triton, the stores). The
# hashes' small matrix products (lanczos.py) would otherwise start OpenBLAS's thread team, whose threads spin
# on the cores for a while after every call: twice the CPU for the same work. Read when numpy loads, which
# this package's import precedes in the server's and the workers' processes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
