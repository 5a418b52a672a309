"""Generated protobuf modules (`make protos` from protos/*.proto); not edited by hand."""
