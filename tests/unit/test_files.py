"""Files written whole or not at all: the part beside the target, its bytes synced before it
takes the target's name, the directory synced after, the part removed on failure, and a name
that is never replaced where replacing is refused (mutation testing, mt39). The syncs are seen
by recording ``os.fsync``: only a power cut would show a missing one otherwise."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest

from enforcement.files import new_part, put_in_place, replace_durably
from tests.unit.open_files import files_open_here

Synced = tuple[str, int, int | None, bytes]


def record_syncs(monkeypatch: pytest.MonkeyPatch, target: Path) -> list[Synced]:
    """Each ``os.fsync`` from now on: a file's or a directory's, its inode, a file's size, and
    what ``target`` held at that instant."""
    synced: list[Synced] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        status = os.fstat(fd)
        is_directory = stat.S_ISDIR(status.st_mode)
        synced.append(
            (
                "directory" if is_directory else "file",
                status.st_ino,
                None if is_directory else status.st_size,
                target.read_bytes(),
            )
        )
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return synced


def test_a_file_is_synced_whole_before_its_name_and_its_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "notices"
    directory.mkdir()
    target = directory / "evt_1.eml"
    target.write_bytes(b"old")
    synced = record_syncs(monkeypatch, target)

    replace_durably(target, [b"new ", b"bytes"], 0o640)

    assert target.read_bytes() == b"new bytes"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in directory.iterdir()) == ["evt_1.eml"]  # no part left
    assert synced == [
        ("file", target.stat().st_ino, 9, b"old"),  # the part, all its bytes, not yet named
        ("directory", directory.stat().st_ino, None, b"new bytes"),  # then the new name
    ]


def test_a_write_that_fails_leaves_the_target_as_it_was_and_no_part(tmp_path: Path) -> None:
    target = tmp_path / "export.jsonl"
    target.write_bytes(b"old")

    def chunks() -> list[bytes]:
        raise ConnectionError("the database went away")

    with pytest.raises(ConnectionError, match="went away"):
        replace_durably(target, (chunk for chunk in chunks()), 0o600)

    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.jsonl"]


def test_a_directory_that_cannot_be_synced_is_the_error_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part has its name by then: removing it finds nothing, and the sync's error, not a
    missing part's, reaches the caller."""
    target = tmp_path / "evt_1.eml"
    fsync = os.fsync

    def failing_on_directories(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_on_directories)
    with pytest.raises(OSError) as raised:
        replace_durably(target, [b"bytes"], 0o600)

    assert raised.value.errno == errno.EIO
    assert target.read_bytes() == b"bytes"


def test_a_new_part_is_hidden_beside_its_target_with_the_mode_asked(tmp_path: Path) -> None:
    fd, part = new_part(tmp_path / "backup.db", 0o640)
    try:
        assert part.parent == tmp_path
        assert part.name.startswith(".backup.db.") and part.name.endswith(".part"), part.name
        assert os.path.samefile(f"/proc/self/fd/{fd}", part)
        assert stat.S_IMODE(part.stat().st_mode) == 0o640
        assert part.read_bytes() == b""
    finally:
        os.close(fd)


def test_a_part_whose_mode_cannot_be_set_is_closed_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[int] = []
    mkstemp = tempfile.mkstemp

    def recording(**kwargs: str | Path) -> tuple[int, str]:
        fd, name = mkstemp(**kwargs)  # type: ignore[call-overload]
        made.append(fd)
        return fd, name

    def refuse(fd: int, mode: int) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(tempfile, "mkstemp", recording)
    monkeypatch.setattr(os, "fchmod", refuse)
    with pytest.raises(PermissionError):
        new_part(tmp_path / "backup.db", 0o640)

    assert list(tmp_path.iterdir()) == []
    [fd] = made
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF


def test_a_part_put_in_place_without_replacing_never_takes_a_name_that_exists(
    tmp_path: Path,
) -> None:
    part, taken = tmp_path / ".b.part", tmp_path / "taken.db"
    part.write_bytes(b"new")
    taken.write_bytes(b"old")

    with pytest.raises(FileExistsError):
        put_in_place(part, taken, replace=False)
    assert (part.read_bytes(), taken.read_bytes()) == (b"new", b"old")  # both left as they were

    put_in_place(part, tmp_path / "b.db", replace=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db", "taken.db"]
    assert (tmp_path / "b.db").read_bytes() == b"new"
    assert files_open_here(tmp_path) == []  # the directory synced is closed again


def test_a_hard_link_that_fails_for_another_reason_is_the_error_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a file system without hard links falls back to a rename; any other failure of the
    link (an I/O error) is not a reason to try the name another way."""

    def failing(*_: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "link", failing)
    part = tmp_path / ".b.part"
    part.write_bytes(b"new")

    with pytest.raises(OSError) as raised:
        put_in_place(part, tmp_path / "b.db", replace=False)

    assert raised.value.errno == errno.EIO
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.part"]
