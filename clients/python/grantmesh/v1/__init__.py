"""Generated protobuf/gRPC stubs for package ``grantmesh.v1``.

Run ``clients/python/generate.sh`` (or ``scripts/python-env``) to create the
``*_pb2.py`` and ``*_pb2_grpc.py`` modules next to this file.
"""
