"""A TensorFlow Serving-compatible model server (REST and gRPC), its clients and deployment files."""
