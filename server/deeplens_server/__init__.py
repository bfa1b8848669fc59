"""DeepLens backend: the gRPC API and the domain modules its workers share (imaging, stores, queue, events)."""
