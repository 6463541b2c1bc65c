"""The appliance image as the lab sees it: built (or found in the cache) by image/build.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class ImageError(RuntimeError):
    """The image could not be built or is incomplete."""


@dataclass(frozen=True)
class ImageInfo:
    dir: Path
    manifest: dict

    @property
    def qcow2(self) -> Path:
        return self.dir / "appliance.qcow2"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def version(self) -> str:
        return self.manifest["version"]


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def ensure_image(repo: Path | None = None, cache_dir: Path | None = None,
                 timeout: float = 1200.0) -> ImageInfo:
    """Build the image if its inputs changed (image/build.py caches by content hash)."""
    repo = repo or repo_root()
    argv = [sys.executable, str(repo / "image" / "build.py"), "--json"]
    if cache_dir:
        argv += ["--cache-dir", str(cache_dir)]
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, timeout=timeout, check=True, text=True)
    except subprocess.CalledProcessError as err:
        raise ImageError(f"image build failed (exit {err.returncode}); its errors are above") from err
    except subprocess.TimeoutExpired as err:
        raise ImageError(f"image build did not finish within {timeout:.0f} s") from err
    info = json.loads(proc.stdout)
    image = ImageInfo(dir=Path(info["dir"]), manifest=info)
    for path in (image.qcow2, image.kernel, image.initrd):
        if not path.exists():
            raise ImageError(f"image directory {image.dir} lacks {path.name}")
    return image
