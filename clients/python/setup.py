"""Builds the grantmesh-client package (see pyproject.toml): once the
modules are copied into the build directory, the stubs of every
proto/proto/grantmesh/v1/*.proto are generated there with grpc_tools.protoc
(messages, gRPC stubs and .pyi type stubs), as generate.sh does for the
repository's tool venv; the source tree is left as it was."""

import glob
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto", "proto"))


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        import grpc_tools
        from grpc_tools import protoc

        protos = sorted(glob.glob(os.path.join(PROTO_ROOT, "grantmesh", "v1", "*.proto")))
        if not protos:
            raise SystemExit(f"no .proto files under {PROTO_ROOT}/grantmesh/v1: build from the grantmesh repository")
        well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        status = protoc.main([
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={self.build_lib}",
            f"--pyi_out={self.build_lib}",
            f"--grpc_python_out={self.build_lib}",
            *protos,
        ])
        if status != 0:
            raise SystemExit(f"grpc_tools.protoc failed ({status})")
        for package in ("grantmesh", os.path.join("grantmesh", "v1")):
            open(os.path.join(self.build_lib, package, "py.typed"), "a").close()


setup(cmdclass={"build_py": BuildWithStubs})
