"""One atomic writer and one output-folder guard for every file trmcore writes.

Writer (:func:`atomic_write_bytes`, :func:`atomic_write_text`,
:func:`atomic_write_json`, and :func:`atomic_path` for libraries that want a
file name: nibabel, matplotlib): the data goes to a hidden temporary file in
the target's folder (``.trm-tmp-<pid>-<random>-<name>``), is fsync'ed, gets
the mode a plain ``open()`` would give (``0o666`` minus the umask, not
``mkstemp``'s 0600) and is renamed onto the target. A reader never sees a
half-written file and a kill leaves no partial file under the final name.
The target is never written through a symbolic link. With
``overwrite=False`` the final step is a hard link, which fails if the name
appeared meanwhile: of two processes writing the same output, the second
refuses. Temporary files left by a killed process (its pid no longer runs)
are removed the next time this process writes into that folder.

Guard (:func:`prepare_output_folder`, :func:`remove_output_folder`): a
command that creates an output folder writes a marker ``.trm-output.json``
naming the command and the entries it made. ``overwrite=True`` removes only
those entries, and only when the marker names the same command; a folder
without the marker, or an input of the command inside the folder, is refused.

Lock (:func:`folder_lock`): a run folder is owned by one process at a time.
The owner holds ``fcntl.flock`` on ``FOLDER/.trm-lock`` (the lock dies with
the process, even a killed one); a second ``trm train`` on the same folder
stops at once, naming the folder and the holder's pid. The lock file exists
only while a run holds it (a killed run's stale one is locked again) and is
never an entry a command owns: ``--overwrite`` and :func:`visible_entries`
skip it.

Torch-free and NumPy-free so that ``trmcore.infer`` can use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

from trmcore.errors import TrmError, UnsafeOutputError

PathLike = Union[str, "os.PathLike[str]"]

TEMP_PREFIX = ".trm-tmp-"
MARKER_FILE = ".trm-output.json"
LOCK_FILE = ".trm-lock"
# Test hook (tests/cli/test_run_lock.py): the first atomic write of the process writes its temporary file,
# touches the file this variable names and waits there (up to a minute) before committing, so a test can
# start a second command or send SIGINT at a known point instead of racing.
TEST_HOLD_ENV = "TRMCORE_TEST_HOLD_WRITE"
ALL_ENTRIES = "*"  # owned entry meaning: the command made the whole folder

__all__ = ["TEMP_PREFIX", "MARKER_FILE", "LOCK_FILE", "ALL_ENTRIES", "FolderInUseError", "folder_lock",
           "staged_output_folder", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "check_output_file", "check_output_plan", "clean_stale_temps", "prepare_output_folder",
           "remove_output_folder", "read_marker", "refuse_inputs", "visible_entries", "save_figure", "save_image"]

_cleaned_folders: Set[str] = set()


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask swaps it, racing threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_name(target: Path) -> Path:
    # The final name's ending is kept so that writers that pick the format from it (nibabel, matplotlib) work;
    # the pid lets a later run tell a dead process's leftovers from a live writer's file.
    name = target.name[-180:]
    return target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temps(folder: PathLike) -> int:
    """Remove this writer's temporary files (and staged folders) in ``folder`` whose process has ended.

    Returns how many. Only names ``.trm-tmp-<pid>-...`` are touched, never any other file.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        pid_text = entry.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        if entry.is_dir(follow_symlinks=False):  # a staged output folder of a killed command
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed += 1
    return removed


def _clean_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _cleaned_folders:
        _cleaned_folders.add(key)
        clean_stale_temps(folder)


def check_output_file(path: PathLike, *, overwrite: bool, inputs: Iterable[PathLike] = ()) -> Path:
    """Refuse to write ``path`` when it is a symbolic link, one of ``inputs`` (or an existing file inside an
    input folder), not a file, or exists without ``overwrite``. Returns ``Path(path)``."""
    path = Path(path)
    _refuse_file_in_the_way(path.parent, f"cannot write {path}")
    if path.is_symlink():
        raise UnsafeOutputError(f"output {path} is a symbolic link; trmcore never writes through one "
                                "(remove the link or choose another output)")
    target = _resolved(path)
    for item in inputs:
        if item is None:
            continue
        source = _resolved(Path(item))
        if source == target:
            raise UnsafeOutputError(f"output {path} is an input file of this command; choose another output")
        if source.is_dir() and source in target.parents and os.path.lexists(path):
            # An existing file inside an input folder (dataset.json, a label file, ...) may be read by this command.
            raise UnsafeOutputError(f"output {path} is an existing file inside the input folder {item}; "
                                    "choose another output")
    if path.exists():
        if not path.is_file():
            raise FileExistsError(f"output {path} exists and is not a file")
        if not overwrite:
            raise FileExistsError(f"output {path} exists; pass --overwrite to replace it")
    return path


def check_output_plan(planned: Iterable[Tuple[PathLike, str]], *, overwrite: bool,
                      inputs: Iterable[PathLike] = ()) -> List[Path]:
    """Check every file a command will write, before it writes the first one.

    ``planned`` holds ``(path, what)`` pairs, ``what`` saying whose file it is
    (``"the labels of case 'X'"``). Two entries naming one file (after
    resolving links and ``..``) are refused with ValueError naming both, e.g.
    case ``X``'s probabilities and case ``X_probabilities``'s labels; then each
    path goes through :func:`check_output_file` (links, inputs, existing files
    without ``overwrite``). Returns the paths in order.
    """
    inputs = [i for i in inputs if i is not None]
    seen: Dict[Path, str] = {}
    paths = []
    for path, what in planned:
        path = Path(path)
        key = _resolved(path)
        if key in seen:
            raise ValueError(f"outputs collide: {path} would be written both as {seen[key]} and as {what}; "
                             "rename one of the inputs or choose another output")
        seen[key] = what
        paths.append(path)
    for path in paths:
        check_output_file(path, overwrite=overwrite, inputs=inputs)
    return paths


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _refuse_file_in_the_way(folder: Path, doing: str) -> None:
    """NotADirectoryError naming the file when ``folder`` or the nearest existing folder above it is a file.

    ``mkdir(parents=True, exist_ok=True)`` reports that as "File exists" (``folder`` itself a file) or
    "Not a directory" naming ``folder``, not the file that is in the way.
    """
    for candidate in (folder, *folder.parents):
        try:
            is_dir = stat.S_ISDIR(os.stat(candidate).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            continue  # absent (to be created), or below a file: look further up
        except OSError:
            return  # permission denied ...: the operation itself reports it, naming the path
        if not is_dir:
            raise NotADirectoryError(f"{doing}: {candidate} is a file, not a folder")
        return


def make_folder(path: PathLike) -> Path:
    """``mkdir -p path`` whose error names the real cause (a file in the way, permission denied on a parent)."""
    path = Path(path)
    _refuse_file_in_the_way(path, f"cannot create the folder {path}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_readable(path: PathLike) -> Path:
    """Open ``path`` for reading and close it, so that a permission problem is reported as such.

    Libraries hide the cause: nibabel says "Could not read file", safetensors "No such file or directory",
    onnxruntime "system error number 13". An absent file is left to the caller's own message; any other
    OSError (permission denied, too many links ...) propagates naming ``path``. Returns ``Path(path)``.
    """
    path = Path(path)
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # non-blocking: a FIFO must not hang
    except FileNotFoundError:
        return path
    os.close(handle)
    return path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    handle = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        os.fsync(handle)
    finally:
        os.close(handle)
    if path.is_symlink():  # planted while we wrote
        raise UnsafeOutputError(f"output {path} became a symbolic link while writing; not written")
    if overwrite:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)  # atomic create-if-absent: a concurrent writer of the same name loses here
        except FileExistsError:
            raise FileExistsError(f"output {path} exists (another process wrote it meanwhile?); "
                                  "pass --overwrite to replace it") from None
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # A file system without hard links: check, then rename (a small race remains there).
            if os.path.lexists(path):
                raise FileExistsError(f"output {path} exists; pass --overwrite to replace it") from None
            os.replace(tmp, path)
        else:
            os.unlink(tmp)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, overwrite: bool, inputs: Iterable[PathLike] = ()) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on normal exit it becomes ``path`` atomically.

    For writers that need a file name (``nib.save``, ``fig.savefig``): the name
    keeps ``path``'s ending so the format is chosen from it. On an exception
    the temporary file is removed and ``path`` is untouched.

    Example:
        >>> with atomic_path(out / "case.nii.gz", overwrite=False) as tmp:  # doctest: +SKIP
        ...     nib.save(image, tmp)
    """
    path = check_output_file(path, overwrite=overwrite, inputs=inputs)
    make_folder(path.parent)
    _clean_once(path.parent)
    tmp = _temp_name(path)
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    os.close(handle)
    try:
        yield str(tmp)
        _test_hold(tmp)
        _commit(tmp, path, overwrite)
    except BaseException:  # Ctrl-C (KeyboardInterrupt) too: no temporary file is left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_held = False


def _test_hold(tmp: Path) -> None:
    global _held
    ready = os.environ.get(TEST_HOLD_ENV)
    if not ready or _held:
        return
    _held = True
    with open(ready, "w", encoding="utf-8") as note:  # test-only note, not an output of the command
        note.write(f"{os.getpid()} {tmp}\n")
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        time.sleep(0.05)


def atomic_write_bytes(path: PathLike, data: bytes, *, overwrite: bool, inputs: Iterable[PathLike] = ()) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns ``Path(path)``."""
    with atomic_path(path, overwrite=overwrite, inputs=inputs) as tmp:
        with open(tmp, "wb") as out:
            out.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, *, overwrite: bool, inputs: Iterable[PathLike] = (),
                      encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding), overwrite=overwrite, inputs=inputs)


def atomic_write_json(path: PathLike, payload: Any, *, overwrite: bool, inputs: Iterable[PathLike] = (),
                      indent: Optional[int] = 2) -> Path:
    """``json.dumps(payload, indent=indent)`` plus a newline, written atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=indent) + "\n", overwrite=overwrite, inputs=inputs)


# ------------------------------------------------------------------ output folders
def visible_entries(folder: PathLike) -> list:
    """Entries of ``folder`` other than the marker, the lock file and this writer's temporary files (sorted)."""
    try:
        names = os.listdir(folder)
    except NotADirectoryError:  # name the file in the way ("Not a directory" would name the folder)
        _refuse_file_in_the_way(Path(folder), f"cannot use the folder {folder}")
        raise
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n not in (MARKER_FILE, LOCK_FILE) and not n.startswith(TEMP_PREFIX))


def read_marker(folder: PathLike) -> Optional[dict]:
    """The marker a trmcore command wrote into ``folder``, or None (absent, a link, or unreadable)."""
    from trmcore.schema import List, Object, Str, read_json  # schema imports errors only; lazily all the same

    path = Path(folder) / MARKER_FILE
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return read_json(path, Object({"command": Str(), "owned": List(Str())}, required=("command",), extra="keep"))
    except (OSError, ValueError):
        return None


def refuse_inputs(root: PathLike, inputs: Iterable[PathLike], what: str = "output folder") -> None:
    """UnsafeOutputError when an input is ``root`` or lies inside it (replacing ``root`` could delete it)."""
    root_path = _resolved(Path(root))
    for item in inputs:
        if item is None:
            continue
        source = _resolved(Path(item))
        if source == root_path or root_path in source.parents:
            raise UnsafeOutputError(f"{what} {root} holds the input {item}; choose an output outside the inputs")


def prepare_output_folder(root: PathLike, command: str, owned: Sequence[str], *, overwrite: bool = False,
                          inputs: Iterable[PathLike] = ()) -> Path:
    """Make ``root`` ready for ``command`` to write ``owned`` entries into, and mark it as its output.

    * ``root`` absent or empty: created, marker written.
    * not empty, ``overwrite`` False: FileExistsError.
    * not empty, ``overwrite`` True: only if ``root`` holds a marker of the same
      ``command``; then the entries that marker lists are removed (the
      command's earlier output), anything else in the folder is kept.
    Inputs inside ``root`` (or ``root`` inside an input) are always refused.
    ``owned`` lists top-level names, or ``[ALL_ENTRIES]`` when the command owns the whole folder.
    """
    root = Path(root)
    inputs = [i for i in inputs if i is not None]
    _refuse_file_in_the_way(root.parent, f"cannot create the output folder {root}")
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"output folder {root} exists and is not a folder")
    refuse_inputs(root, inputs)
    existing = visible_entries(root)
    if existing:
        if not overwrite:
            raise FileExistsError(f"{root} exists and is not empty; pass --overwrite to replace an earlier "
                                  f"`trm {command}` output there, or choose another folder")
        _remove_marked(root, command)
    make_folder(root)
    _clean_once(root)
    record = {"command": command, "owned": list(owned), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "note": "written by trmcore; `--overwrite` replaces only the entries listed here"}
    atomic_write_json(root / MARKER_FILE, record, overwrite=True)
    return root


@contextlib.contextmanager
def staged_output_folder(root: PathLike, command: str, owned: Sequence[str], *, overwrite: bool = False,
                         inputs: Iterable[PathLike] = ()) -> Iterator[Path]:
    """Build ``command``'s output folder ``root`` out of sight; move it into place only when complete.

    Yields a hidden folder beside ``root`` (``.trm-tmp-<pid>-<random>-<name>``,
    already marked as ``command``'s output); the block writes everything there.
    On normal exit it becomes ``root``: renamed onto an absent or empty
    ``root`` in one step; with ``overwrite``, the earlier output's entries (by
    its marker, as :func:`prepare_output_folder`) are removed and the new ones
    moved in. On an error or Ctrl-C only the staged folder is removed, so a
    failed command leaves no half-written ``root``. The refusals of
    :func:`prepare_output_folder` (a file, a foreign or non-empty folder, an
    input inside) happen before the block runs.
    """
    root = Path(root)
    inputs = [i for i in inputs if i is not None]
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"output folder {root} exists and is not a folder")
    refuse_inputs(root, inputs)
    if visible_entries(root):
        if not overwrite:
            raise FileExistsError(f"{root} exists and is not empty; pass --overwrite to replace an earlier "
                                  f"`trm {command}` output there, or choose another folder")
        _check_marker(root, command)
    parent = _resolved(root.absolute().parent)
    parent.mkdir(parents=True, exist_ok=True)
    _clean_once(parent)
    stage = parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{root.name[-180:]}"
    stage.mkdir()
    try:
        prepare_output_folder(stage, command, owned)
        yield stage
        _move_into_place(stage, root, command, overwrite)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _move_into_place(stage: Path, root: Path, command: str, overwrite: bool) -> None:
    if not os.path.lexists(root):
        try:
            os.rename(stage, root)
            _fsync_dir(stage.parent)
            return
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if visible_entries(root):  # an earlier output (checked before the work), or one that appeared meanwhile
        if not overwrite:
            raise FileExistsError(f"{root} appeared while `trm {command}` ran; its output was not moved there")
        _remove_marked(root, command)
    for name in sorted(os.listdir(stage), key=lambda n: n == MARKER_FILE):  # the marker last
        target = root / name
        if name != MARKER_FILE and os.path.lexists(target):
            raise FileExistsError(f"{target} appeared while `trm {command}` ran; the new output was not moved there")
        os.replace(stage / name, target)
    os.rmdir(stage)
    _fsync_dir(root)


def _check_marker(root: Path, command: str) -> dict:
    marker = read_marker(root)
    if marker is None:
        raise UnsafeOutputError(f"{root} was not made by `trm {command}` (no {MARKER_FILE} marker); "
                                "refusing to replace it: remove it yourself or choose another folder")
    if marker["command"] != command:
        raise UnsafeOutputError(f"{root} was made by `trm {marker['command']}`, not `trm {command}`; "
                                "refusing to replace it")
    return marker


def remove_output_folder(root: PathLike, command: str) -> None:
    """Remove what ``command`` made in ``root`` (by its marker), and ``root`` itself if that leaves it empty.

    UnsafeOutputError when ``root`` is not empty and was not made by ``command``.
    """
    root = Path(root)
    if not root.exists():
        return
    if visible_entries(root):
        _remove_marked(root, command)
    else:  # empty but for a marker or a killed run's temporary files (cut short while being created)
        clean_stale_temps(root)
        with contextlib.suppress(FileNotFoundError):
            (root / MARKER_FILE).unlink()
    with contextlib.suppress(FileNotFoundError):
        (root / LOCK_FILE).unlink()  # the run that held it has ended: the caller removes its folder
    with contextlib.suppress(OSError):
        root.rmdir()


def _remove_marked(root: Path, command: str) -> None:
    marker = _check_marker(root, command)
    owned = [str(n) for n in marker.get("owned", [])]
    names = visible_entries(root) if ALL_ENTRIES in owned else owned
    for name in names:
        if name in ("", ".", "..") or "/" in name or os.sep in name:
            continue  # a hand-edited marker cannot reach outside the folder
        entry = root / name
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        elif entry.is_dir():
            shutil.rmtree(entry)
    (root / MARKER_FILE).unlink()


def save_figure(fig: Any, path: PathLike, *, overwrite: bool, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` through the atomic writer (the format comes from ``path``'s ending)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return Path(path)


def save_image(image: Any, path: PathLike, *, overwrite: bool, inputs: Iterable[PathLike] = ()) -> Path:
    """A nibabel image's ``to_filename`` through the atomic writer (``.nii.gz`` / ``.nii`` from ``path``)."""
    with atomic_path(path, overwrite=overwrite, inputs=inputs) as tmp:
        image.to_filename(tmp)
    return Path(path)


# ------------------------------------------------------------------ ownership of a folder
class FolderInUseError(TrmError):
    """Another process holds the folder's lock (``trm train`` twice on one ``-o``)."""


def _lock_holder(handle: int) -> str:
    try:
        text = os.pread(handle, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return "pid unknown"
    return f"pid {text[0]}" if text and text[0].isdigit() else "pid unknown"


@contextlib.contextmanager
def folder_lock(folder: PathLike, command: str) -> Iterator[Path]:
    """Own ``folder`` (created if absent) for ``command`` while the block runs; yields ``Path(folder)``.

    Takes ``fcntl.flock`` on ``folder/.trm-lock`` without waiting: held by a
    live process, FolderInUseError names the folder and the holder's pid (which
    the holder writes into the lock file). The kernel drops the lock when the
    process ends, however it ends, so a killed run never blocks the next (its
    stale lock file is simply locked again). On release the lock file is
    removed while still locked (a locker that opened the old file sees that it
    was unlinked and retries), and so is the folder if this call created it and
    nothing else was written there. Where the file system cannot lock (some
    network mounts) the block runs unlocked.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        yield folder
        return
    path = folder / LOCK_FILE
    handle, locked = _take_lock(fcntl, folder, path, command)
    try:
        yield folder
    finally:
        if locked:
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(handle)  # releases the lock
        if created and not os.listdir(folder):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _take_lock(fcntl: Any, folder: Path, path: Path, command: str) -> Tuple[int, bool]:
    for _ in range(100):
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                             0o666 & ~_umask())
        except OSError as err:
            raise OSError(err.errno, f"cannot open the lock file of {folder}: {err.strerror}", str(path)) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(handle)
            os.close(handle)
            raise FolderInUseError(f"{folder} is in use by another `trm` process ({holder}); "
                                   "wait for it to end or choose another folder") from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                os.close(handle)
                raise
            return handle, False
        try:
            same = os.fstat(handle).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(handle, 0)
            os.pwrite(handle, f"{os.getpid()} {command}\n".encode(), 0)
            return handle, True
        os.close(handle)  # the file was unlinked by its last owner after we opened it: lock the new one
    raise OSError(errno.EAGAIN, f"cannot take the lock of {folder}", str(path))
