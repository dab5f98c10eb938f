"""Fail when poetry.lock would install one package at two versions on linux/x86_64.

Poetry's universal lock can split a package into two entries whose markers it cannot prove
disjoint (torch's CUDA wheels do this to nvidia-cublas and nvidia-cuda-nvrtc). On a real Linux
machine both entries then apply, both get installed into one folder, and `import torch` can
segfault. This check reads the lock, evaluates every entry's markers for the machine we ship
to, and lists each package that would be installed twice.

Usage: python tools/check_lock.py [poetry.lock]
"""

import sys
import tomllib
from collections import defaultdict
from pathlib import Path

from packaging.markers import Marker

LINUX_X86_64 = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "extra": "",
}


def marker_holds(markers: object) -> bool:
    """True when any of an entry's markers (one string, or one per dependency group) holds."""
    if markers is None:
        return True
    texts = [markers] if isinstance(markers, str) else list(dict(markers).values())  # type: ignore[call-overload]
    return any(Marker(text).evaluate(LINUX_X86_64) for text in texts)


def duplicated_packages(lock_path: Path) -> dict[str, list[str]]:
    lock = tomllib.loads(lock_path.read_text())
    versions: dict[str, list[str]] = defaultdict(list)
    for package in lock.get("package", []):
        if marker_holds(package.get("markers")):
            versions[package["name"]].append(package["version"])
    return {name: found for name, found in versions.items() if len(found) > 1}


def main() -> int:
    lock_path = Path(sys.argv[1] if len(sys.argv) > 1 else "poetry.lock")
    duplicates = duplicated_packages(lock_path)
    for name, found in sorted(duplicates.items()):
        print(
            f"{lock_path}: {name} is locked at {len(found)} versions that all apply on "
            f"linux/x86_64: {', '.join(found)}. Pin one in the cuda-pins group of pyproject.toml."
        )
    if not duplicates:
        print(f"{lock_path}: every package is locked at one version on linux/x86_64")
    return 1 if duplicates else 0


if __name__ == "__main__":
    sys.exit(main())
