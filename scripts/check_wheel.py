"""Check that trmcore wheels install on any manylinux_2_28 system without a compiler.

Usage: python scripts/check_wheel.py [--max-glibc 2.28] [--cuda ON|OFF] WHEEL...

For each wheel, with `auditwheel show` (auditwheel must be importable or on
PATH) and binutils' readelf:
- auditwheel's platform tag is manylinux_2_X_x86_64 with X <= the glibc limit,
  and auditwheel lists no external shared library (nothing outside the policy);
- every shared object needs only libraries of the manylinux policy, references
  no glibc symbol version above the limit and no libstdc++ (GLIBCXX/CXXABI:
  the C++ runtime is linked in);
- no undefined global symbol is left unversioned except Python's C API: such a
  symbol would be looked up at import and fail on the user's machine;
- with --cuda ON the extension holds CUDA device code (a .nv_fatbin section).

Prints one line per wheel (tag, size, glibc needed) and exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# The libraries every manylinux policy allows (PEP 600's "system" libraries).
POLICY_LIBRARIES = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "ld-linux-x86-64.so.2",
    "libgcc_s.so.1", "libstdc++.so.6", "libnsl.so.1", "libutil.so.1", "libresolv.so.2",
}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def auditwheel_show(wheel: Path) -> str:
    command = [sys.executable, "-m", "auditwheel"] if _has_module("auditwheel") else ["auditwheel"]
    result = subprocess.run([*command, "show", str(wheel)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"auditwheel show failed: {result.stderr.strip() or result.stdout.strip()}")
    return " ".join(result.stdout.split())


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def check_shared_object(path: Path, max_glibc: tuple[int, ...]) -> tuple[list[str], tuple[int, ...]]:
    """Problems of one .so and the highest GLIBC version it references."""
    problems = []
    dynamic = subprocess.run(["readelf", "-d", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    for needed in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic):
        if needed not in POLICY_LIBRARIES:
            problems.append(f"needs {needed}, which is not a manylinux system library")
    symbols = subprocess.run(["readelf", "--dyn-syms", "-W", str(path)], capture_output=True, text=True,
                             check=True).stdout
    highest: tuple[int, ...] = (0,)
    for line in symbols.splitlines():
        fields = line.split()
        if len(fields) < 8 or not fields[0].rstrip(":").isdigit():
            continue
        binding, section, name = fields[4], fields[6], fields[7]
        for version in re.findall(r"@@?GLIBC_([0-9.]+)", name):
            highest = max(highest, _version(version))
        if re.search(r"@@?(GLIBCXX|CXXABI)_", name):
            problems.append(f"references libstdc++ ({name})")
        if section == "UND" and binding == "GLOBAL" and "@" not in name and not re.match(r"_?Py", name):
            problems.append(f"undefined symbol {name} (no library provides it at import)")
    if highest > max_glibc:
        problems.append(f"needs glibc {'.'.join(map(str, highest))} > {'.'.join(map(str, max_glibc))}")
    return problems, highest


def check_wheel(wheel: Path, max_glibc: tuple[int, ...], cuda: str | None) -> list[str]:
    problems = []
    text = auditwheel_show(wheel)
    tag = re.search(r'consistent with the following platform tag: "([^"]+)"', text)
    if not tag:
        problems.append(f"auditwheel gives no platform tag: {text[:300]}")
    else:
        match = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", tag.group(1))
        if not match or (int(match.group(1)), int(match.group(2))) > max_glibc:
            problems.append(f"auditwheel tag {tag.group(1)} is newer than manylinux_2_{max_glibc[1]}")
    if "external shared libraries are required" in text:
        problems.append(f"auditwheel lists external libraries: {text[text.index('external shared'):][:300]}")
    highest: tuple[int, ...] = (0,)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as archive:
        objects = [name for name in archive.namelist() if re.search(r"\.so(\.\d+)*$", name)]
        if not any(re.match(r"trmcore/_C\.", name) for name in objects):
            problems.append("no compiled extension trmcore/_C*.so in the wheel")
        for name in objects:
            path = Path(archive.extract(name, tmp))
            found, version = check_shared_object(path, max_glibc)
            problems += [f"{name}: {problem}" for problem in found]
            highest = max(highest, version)
            if cuda and name.startswith("trmcore/_C"):
                sections = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True,
                                          check=True).stdout
                has_cuda = ".nv_fatbin" in sections
                if has_cuda != (cuda.upper() == "ON"):
                    problems.append(f"{name}: CUDA device code {'present' if has_cuda else 'missing'}, "
                                    f"expected CUDA {cuda}")
    size = wheel.stat().st_size / 2**20
    print(f"{wheel.name}: {tag.group(1) if tag else '?'}, {size:.1f} MiB, "
          f"glibc >= {'.'.join(map(str, highest))}, {'OK' if not problems else 'FAILED'}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", nargs="+", type=Path)
    parser.add_argument("--max-glibc", default="2.28", help="newest glibc the wheels may need (default 2.28)")
    parser.add_argument("--cuda", choices=["ON", "OFF", "on", "off"], help="require (ON) or forbid (OFF) CUDA code")
    args = parser.parse_args(argv)
    if not shutil.which("readelf"):
        print("check_wheel: readelf (binutils) is needed", file=sys.stderr)
        return 2
    failed = False
    for wheel in args.wheels:
        for problem in check_wheel(wheel, _version(args.max_glibc), args.cuda):
            print(f"  {problem}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
