"""Regenerate the Python code for the protobuf contract: ``python proto/generate.py``.

The generated modules live in ``gateway/pb`` and are never edited by hand. protoc writes
imports as ``from settlement.v1 import ...`` (the proto package path); they are rewritten to
``gateway.pb.settlement.v1`` so the generated package needs no sys.path tricks.
``--check`` compares instead of writing, so a test can fail when the committed code is stale.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
OUT_ROOT = PROTO_ROOT.parent / "gateway" / "pb"
PROTOS = ["settlement/v1/gateway.proto"]
IMPORT_FROM = "from settlement.v1 import"
IMPORT_TO = "from gateway.pb.settlement.v1 import"
PACKAGE_INITS = ["settlement/__init__.py", "settlement/v1/__init__.py"]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (with grpc and mypy stubs) into ``out_dir``; return the files written."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = Path(protoc.__file__).resolve().parent / "_proto"
    scripts = Path(sys.executable).parent  # mypy-protobuf's plugins live beside the interpreter
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(PROTO_ROOT / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for path in sorted(out_dir.rglob("*.py*")):
        text = path.read_text(encoding="utf-8").replace(IMPORT_FROM, IMPORT_TO)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for init in PACKAGE_INITS:
        path = out_dir / init
        path.write_text('"""Generated from proto/; regenerate with python proto/generate.py."""\n')
        written.append(path)
    return written


def stale_files(target: Path = OUT_ROOT) -> list[str]:
    """Generated files that differ from (or are missing in) ``target``."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        stale = []
        for path in generate(fresh):
            rel = path.relative_to(fresh)
            committed = target / rel
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(str(rel))
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if gateway/pb is stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated code: " + ", ".join(stale), file=sys.stderr)
            print("run: python proto/generate.py", file=sys.stderr)
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        target = OUT_ROOT / "settlement"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(fresh / "settlement", target)
    print(f"generated into {OUT_ROOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
