"""The gRPC edge: mutual TLS transport, protobuf conversion, typed client calls."""
