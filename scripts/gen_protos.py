"""Regenerate the Python code for protos/ into transmit_hub/v1/.

Usage: python scripts/gen_protos.py [OUTPUT_DIR]

The one way generated code is made; tests/transmit_hub/test_generated.py runs it
into a temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PROTO = "transmit/v1/transmit.proto"
DEFAULT_OUT = ROOT / "transmit_hub" / "v1"
FILES = ("transmit_pb2.py", "transmit_pb2.pyi", "transmit_pb2_grpc.py", "transmit_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    """The path of a protoc plugin installed beside this Python (mypy-protobuf's)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install -e '.[dev]' (mypy-protobuf)")
    return found


def generate(out: Path) -> None:
    """Run protoc and write the generated modules into ``out``."""
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--mypy_grpc_out={tmp}",
            PROTO,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            text = (Path(tmp) / "transmit" / "v1" / name).read_text()
            # The generated modules live in a package of ours: import siblings relatively.
            text = re.sub(
                r"^from transmit\.v1 import (\w+) as (\w+)$",
                r"from . import \1 as \2",
                text,
                flags=re.MULTILINE,
            )
            text = re.sub(
                r"^import transmit\.v1\.(\w+)$", r"from . import \1", text, flags=re.MULTILINE
            )
            text = text.replace("transmit.v1.transmit_pb2.", "transmit_pb2.")
            (out / name).write_text(text)
    init = out / "__init__.py"
    init.write_text(
        '"""Generated protobuf and gRPC code for transmit.v1 (scripts/gen_protos.py)."""\n'
    )


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    generate(out)
    print(f"generated {', '.join(FILES)} into {out}")


if __name__ == "__main__":
    main()
