"""Generated protobuf and gRPC code for transmit.v1 (scripts/gen_protos.py)."""
