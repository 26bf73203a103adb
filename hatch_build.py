"""Hatchling hooks: the version comes from csrc/ndshm.h, the library from `make lib`."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface


class VersionFromHeader(MetadataHookInterface):
    """Read NDSHM_VERSION_MAJOR/MINOR/PATCH, so the version is written once, in the header."""

    def update(self, metadata: dict) -> None:
        text = (Path(self.root) / "csrc" / "ndshm.h").read_text()
        parts = [re.search(rf"#define NDSHM_VERSION_{p} (\d+)", text).group(1) for p in ("MAJOR", "MINOR", "PATCH")]
        metadata["version"] = ".".join(parts)


class BuildLibrary(BuildHookInterface):
    """Build libndshm.so with the Makefile and tag the wheel for the platform, not the interpreter."""

    def initialize(self, version: str, build_data: dict) -> None:
        subprocess.run(["make", "lib", f"PYTHON={sys.executable}"], cwd=self.root, check=True)
        build_data["pure_python"] = False
        build_data["tag"] = "py3-none-" + sysconfig.get_platform().replace("-", "_").replace(".", "_")
