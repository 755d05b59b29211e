"""The agent's gRPC edge: the servicer, interceptors, authorization, TLS, metrics, the status mapping, request
validation and the process's main. The only layer that imports grpc."""
