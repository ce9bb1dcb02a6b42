"""Builds the comfy-service wheel from the tree an image copied: every package there but the simulator.

pyproject.toml lists comfyui_sim among its packages (the simulator is a developer tool); the images
copy everything but comfyui_sim, so this script lists the packages actually present instead, builds
the wheel with pip, and fails if the wheel holds comfyui_sim or misses a package of the tree.
Usage (image build stage): python build_wheel.py SRC_DIR WHEEL_DIR [extra `pip wheel` args...]
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import zipfile

EXCLUDED = "comfyui_sim"
PACKAGES_LIST = re.compile(r"^packages\s*=\s*\[[^\]]*\]", re.MULTILINE)
EXCLUDED_DATA = re.compile(rf"^{EXCLUDED}\s*=.*\n", re.MULTILINE)


def find_packages(src: pathlib.Path) -> list[str]:
    """Dotted names of every package (a folder with __init__.py) under src, comfyui_sim excluded."""
    found = []
    for init in sorted(src.rglob("__init__.py")):
        parts = init.parent.relative_to(src).parts
        if parts and parts[0] != EXCLUDED and all(p.isidentifier() for p in parts):
            found.append(".".join(parts))
    # A subpackage counts only when every folder above it is a package too.
    return [name for name in found if all(name.rsplit(".", depth)[0] in found
                                          for depth in range(1, name.count(".") + 1))]


def rewrite_pyproject(text: str, packages: list[str]) -> str:
    """pyproject.toml text with its packages list replaced by `packages` and comfyui_sim's data dropped."""
    if len(PACKAGES_LIST.findall(text)) != 1:
        raise SystemExit("pyproject.toml: expected exactly one `packages = [...]` list")
    listed = "packages = [" + ", ".join(f'"{name}"' for name in packages) + "]"
    return EXCLUDED_DATA.sub("", PACKAGES_LIST.sub(listed, text))


def check_wheel(wheel: pathlib.Path, packages: list[str]) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    if any(name.split("/")[0] == EXCLUDED for name in names):
        raise SystemExit(f"{wheel.name} carries {EXCLUDED}")
    missing = [p for p in packages if f"{p.replace('.', '/')}/__init__.py" not in names]
    if missing:
        raise SystemExit(f"{wheel.name} misses packages {missing}")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, out, pip_args = pathlib.Path(argv[0]), pathlib.Path(argv[1]), argv[2:]
    if (src / EXCLUDED).exists():
        raise SystemExit(f"{src / EXCLUDED} is in the build tree: the images must not copy it")
    packages = find_packages(src)
    pyproject = src / "pyproject.toml"
    pyproject.write_text(rewrite_pyproject(pyproject.read_text(), packages))
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                    "--wheel-dir", str(out), *pip_args, str(src)], check=True)
    built = sorted(set(out.glob("comfy_service-*.whl")) - before) or sorted(out.glob("comfy_service-*.whl"))
    if len(built) != 1:
        raise SystemExit(f"expected one comfy_service wheel in {out}, found {built}")
    check_wheel(built[0], packages)
    print(f"{built[0].name}: {', '.join(packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
