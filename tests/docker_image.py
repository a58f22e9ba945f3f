"""A small local image for the docker tests of ``hygieia run``, built offline with ``docker import``.

No registry is reachable on our machines, so the competition's image (docker/Dockerfile) cannot be built
there. This one has its layout: this machine's Python in ``/usr/local`` (as ``python:3.11-slim``), the
packages the two programs import on the tabular sample (no torch: 4 GB that the tests do not need), the
shared libraries those need (found by ``ldd``), ``sh`` and ``sleep``. It is tagged by a hash of its
recipe, so a later session reuses it and a changed recipe builds a new one.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import numpy

REPOSITORY = "hygieia-tests/python-no-torch"   # not a bundle's docker_image: tests choose it explicitly
RECIPE = 3                                     # bump when the layout below changes
# What ingestion, scoring (figures included) and the tabular sample import, with their wheels' libraries.
PACKAGES = ("numpy", "numpy.libs", "pandas", "dateutil", "scipy", "scipy.libs", "sklearn",
            "scikit_learn.libs", "joblib", "threadpoolctl.py", "matplotlib", "mpl_toolkits", "contourpy",
            "cycler", "kiwisolver", "fontTools", "pyparsing", "packaging", "PIL", "pillow.libs", "narwhals",
            "psutil", "tqdm", "yaml", "_yaml", "cloudpickle")
STDLIB_LEFT_OUT = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages")
BINARIES = ("/usr/bin/sleep",)
# fontTools' compiled modules are optional speed-ups of modules it ships as Python: it goes in the zip.
ZIPPED = ("fontTools",)
ON_DISK = ("mpl_toolkits",)   # a namespace package, which zipimport does not import
SKIPPED_FOLDERS = ("tests", "__pycache__", "sample_data", "images")   # images: matplotlib's GUI icons
SKIPPED_SUFFIXES = (".pyi", ".pxd", ".pxi", ".pyx", ".h", ".hpp", ".c", ".cpp", ".f", ".f90")
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"


def image_tag() -> str:
    recipe = repr((RECIPE, sys.version, PACKAGES, STDLIB_LEFT_OUT, BINARIES, ZIPPED, ON_DISK, SKIPPED_FOLDERS,
                   SKIPPED_SUFFIXES)).encode()
    return f"{REPOSITORY}:{hashlib.sha256(recipe).hexdigest()[:12]}"


def docker_problem() -> str | None:
    """Why no docker test can run here, or None."""
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=30)
    except FileNotFoundError:
        return "the docker command is not installed"
    except subprocess.TimeoutExpired:
        return "the Docker daemon did not answer `docker info` within 30 s"
    if info.returncode != 0:
        return "no Docker daemon answers: " + (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
    return None


def ensure_image() -> tuple[str, float | None]:
    """The test image's tag, built if it is not present; with the build's seconds (None: reused)."""
    tag = image_tag()
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag, None
    start = time.monotonic()
    build_image(tag)
    return tag, time.monotonic() - start


def build_image(tag: str) -> None:
    changes = ["ENV PATH=/usr/local/bin:/usr/bin:/bin", "ENV LANG=C.UTF-8", "ENV MPLBACKEND=Agg",
               "WORKDIR /app/program", 'CMD ["python3", "--version"]']
    argv = ["docker", "import"] + [arg for change in changes for arg in ("--change", change)] + ["-", tag]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with _Rootfs.open(fileobj=proc.stdin, mode="w|") as tar:
            write_rootfs(tar)
    finally:
        proc.stdin.close()
        error = proc.stderr.read().decode(errors="replace")
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"docker import {tag} failed: {error.strip()}")


def write_rootfs(tar: tarfile.TarFile) -> None:
    """With Docker's vfs storage every container copies the image file by file (about 1.4 ms a file
    here), so the image holds few files: the pure-Python stdlib and pure packages as zips of compiled
    modules, the other packages without tests, stubs or sources beside their compiled modules."""
    base = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix, "installed_base": sys.base_prefix})
                  ["stdlib"])
    site_packages = Path(numpy.__file__).parents[1]
    local = f"usr/local/lib/{PYTHON}"
    for name in ("bin", "lib", "lib64", "sbin"):
        _symlink(tar, name, f"usr/{name}")
    for folder, mode in (("tmp", 0o1777), ("root", 0o700), ("etc", 0o755), ("app", 0o755)):
        _directory(tar, folder, mode)
    _text(tar, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    _text(tar, "etc/group", "root:x:0:\n")
    stdlib_parts = [e for e in sorted(stdlib.iterdir()) if e.name not in STDLIB_LEFT_OUT
                    and not e.name.startswith("config-") and e.name != "lib-dynload"]
    _bytes(tar, f"usr/local/lib/python{sys.version_info.major}{sys.version_info.minor}.zip",
           _zip_of(stdlib_parts))
    tar.add(stdlib / "os.py", f"{local}/os.py", filter=_root_owned)   # the landmark of sys.prefix
    tar.add(stdlib / "lib-dynload", f"{local}/lib-dynload", filter=_root_owned)
    packages = [site_packages / name for name in PACKAGES]
    pure = [p for p in packages if p.name in ZIPPED or p.name not in ON_DISK
            and not (p.is_dir() and any(p.rglob("*.so*")))]
    _bytes(tar, f"{local}/site-packages/pure.zip", _zip_of(pure))
    _text(tar, f"{local}/site-packages/pure.pth", "pure.zip\n")
    for package in packages:
        if package not in pure:
            for path, name in compiled_files(package):
                tar.add(path, f"{local}/site-packages/{name}", filter=_root_owned)
    tar.add(Path(base, "bin", PYTHON).resolve(), f"usr/local/bin/{PYTHON}", filter=_root_owned)
    for alias in ("python3", "python"):
        _symlink(tar, f"usr/local/bin/{alias}", PYTHON)
    for binary in BINARIES:
        tar.add(Path(binary).resolve(), binary.lstrip("/"), filter=_root_owned)
    for library, arcname in shared_libraries([Path(base, "bin", PYTHON)] + [Path(b) for b in BINARIES],
                                             [stdlib / "lib-dynload"] + packages):
        tar.add(library, arcname, filter=_root_owned)


def compiled_files(top: Path) -> list[tuple[Path, str]]:
    """(file, name under site-packages) for a module or package: each module's compiled ``.pyc`` in
    place of its source (Python imports it sourceless), no tests, type stubs or C sources."""
    files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    chosen = []
    for path in files:
        relative = path.relative_to(top.parent)
        if set(SKIPPED_FOLDERS) & set(relative.parts) or path.suffix in SKIPPED_SUFFIXES:
            continue
        cached = path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.pyc"
        if path.suffix == ".py" and cached.is_file():
            chosen.append((cached, str(relative.with_suffix(".pyc"))))
        else:
            chosen.append((path, str(relative)))
    return chosen


def _zip_of(tops: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for top in tops:
            for path, name in compiled_files(top):
                if ".so" not in path.suffixes:
                    archive.write(path, name)
    return buffer.getvalue()


def shared_libraries(binaries: list[Path], trees: list[Path]) -> list[tuple[Path, str]]:
    """The system libraries (and libpython) that the binaries and every extension module link to, as
    (file, path in the image): the loader where the binaries look for it, the rest in the multiarch
    folder, which the loader searches without an ld.so.cache."""
    objects = [str(b) for b in binaries]
    for tree in trees:
        if tree.is_dir():
            objects += [str(p) for p in tree.rglob("*.so*") if p.is_file()]
        elif tree.suffix == ".so":
            objects.append(str(tree))
    inside = [tree.resolve() for tree in trees if tree.is_dir()]
    found: dict[str, Path] = {}
    multiarch = None
    for chunk in range(0, len(objects), 200):
        out = subprocess.run(["ldd", *objects[chunk:chunk + 200]], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 4 and parts[2].startswith("/"):
                path = Path(parts[2])
            elif parts and parts[0].startswith("/") and "ld-linux" in parts[0]:
                path = Path(parts[0])
            else:
                continue
            if any(path.resolve().is_relative_to(tree) for tree in inside):
                continue   # a wheel's own .libs, already in the image
            if path.name.startswith("libc.so"):
                multiarch = path.resolve().parent
            found[str(path)] = path
    libraries = []
    for name, path in sorted(found.items()):
        if "ld-linux" in path.name:
            arcname = str(Path(path.parent.resolve(), path.name)).lstrip("/")
        else:
            arcname = f"{str(multiarch).lstrip('/')}/{path.name}"
        libraries.append((path.resolve(), arcname))
    return sorted(set(libraries), key=lambda pair: pair[1])


class _Rootfs(tarfile.TarFile):
    """A tar whose every folder has its own entry: folders the unpacking would create for a file are
    not searchable without the capabilities that compute_worker.py drops."""

    def addfile(self, tarinfo, fileobj=None):
        known = self.__dict__.setdefault("_folders", set())
        parts = tarinfo.name.split("/")[:-1]
        for end in range(1, len(parts) + 1):
            folder = "/".join(parts[:end])
            if folder not in known:
                known.add(folder)
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                super().addfile(info)
        if tarinfo.isdir():
            known.add(tarinfo.name)
        super().addfile(tarinfo, fileobj)


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode |= 0o444 if info.isfile() else 0o555   # readable by any --user
    return info


def _symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    tar.addfile(info)


def _directory(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def _text(tar: tarfile.TarFile, name: str, text: str) -> None:
    _bytes(tar, name, text.encode())


def _bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
