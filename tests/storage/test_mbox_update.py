"""UPDATE on an mbox: the file rewritten without the deleted records, keeping what was
appended since the snapshot, the owner and the mode; refused when the file changed under
us; first retrieval times in the `<mbox>.popbox` sidecar."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from test_mbox_support import (
    MUTT_FROM,
    mbox_path,
    messages_of,
    read_all,
    record,
    run,
    store_at,
    with_drop,
)

from popbox.storage.base import DeleteResult, StoreError
from popbox.storage.mbox import MboxMaildrop
from popbox.storage.mbox_cache import load_retrievals

MESSAGES = [b"Subject: m%d\nMessage-ID: <%d@x>\n\nbody %d\n" % (n, n, n) for n in range(4)]
RECORDS = [record(m) for m in MESSAGES]


def write_mbox(tmp_path: Path, *records: bytes) -> Path:
    path = mbox_path(tmp_path)
    path.write_bytes(b"".join(records or RECORDS))
    return path


def delete_numbers(tmp_path: Path, numbers: list[int]) -> DeleteResult:
    async def body(drop: MboxMaildrop) -> DeleteResult:
        return await drop.delete([drop.listing[n - 1].key for n in numbers])

    return with_drop(tmp_path, body)


def temp_files(tmp_path: Path) -> list[str]:
    return [name for name in os.listdir(tmp_path) if ".popbox-tmp." in name]


def test_delete_rewrites_without_the_records(tmp_path: Path) -> None:
    path = write_mbox(tmp_path)
    inode = path.stat().st_ino
    result = delete_numbers(tmp_path, [1, 3])
    assert len(result.removed) == 2
    assert result.failed == ()
    assert path.read_bytes() == RECORDS[1] + RECORDS[3]
    assert path.stat().st_ino != inode
    assert messages_of(tmp_path) == [MESSAGES[1], MESSAGES[3]]
    assert temp_files(tmp_path) == []
    assert not (tmp_path / "alice.lock").exists()


def test_deleting_everything_leaves_an_empty_file(tmp_path: Path) -> None:
    path = write_mbox(tmp_path)
    delete_numbers(tmp_path, [1, 2, 3, 4])
    assert path.read_bytes() == b""


def test_mail_appended_after_the_snapshot_is_kept(tmp_path: Path) -> None:
    path = write_mbox(tmp_path)
    late = record(b"Subject: late\n\nlate\n", MUTT_FROM)

    async def body(drop: MboxMaildrop) -> DeleteResult:
        with path.open("ab") as writer:  # a delivery that ignored our locks
            writer.write(late)
        return await drop.delete([drop.listing[0].key, drop.listing[3].key])

    assert with_drop(tmp_path, body).failed == ()
    assert path.read_bytes() == RECORDS[1] + RECORDS[2] + late


def test_preamble_and_folder_data_message_are_kept(tmp_path: Path) -> None:
    pseudo = record(b"Subject: DON'T DELETE THIS MESSAGE\nX-IMAP: 1 2\n\ndata\n")
    path = write_mbox(tmp_path, b"junk\n\n", pseudo, *RECORDS)
    delete_numbers(tmp_path, [1])
    assert path.read_bytes() == b"junk\n\n" + pseudo + b"".join(RECORDS[1:])


def test_owner_group_and_mode_are_kept(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the mbox another owner")
    path = write_mbox(tmp_path)
    os.chown(path, 1234, 5678)
    path.chmod(0o660)
    delete_numbers(tmp_path, [2])
    status = path.stat()
    assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (1234, 5678, 0o660)


def test_refused_when_the_owner_cannot_be_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_mbox(tmp_path)
    owner = path.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    result = delete_numbers(tmp_path, [1])
    assert result.removed == ()
    assert len(result.failed) == 1
    assert path.read_bytes() == b"".join(RECORDS)


@pytest.mark.parametrize("change", ["truncate", "replace", "shift"])
def test_nothing_is_removed_when_the_file_changed_underneath(tmp_path: Path, change: str) -> None:
    path = write_mbox(tmp_path)
    changed = {
        "truncate": RECORDS[0],
        "replace": b"".join(RECORDS),
        "shift": b"X" + b"".join(RECORDS),
    }[change]

    async def body(drop: MboxMaildrop) -> DeleteResult:
        if change == "replace":
            path.unlink()
        path.write_bytes(changed)
        return await drop.delete([drop.listing[1].key, drop.listing[2].key])

    result = with_drop(tmp_path, body)
    assert result.removed == ()
    assert len(result.failed) == 2
    assert path.read_bytes() == changed
    assert temp_files(tmp_path) == []


def test_delete_is_once_per_session(tmp_path: Path) -> None:
    write_mbox(tmp_path)

    async def main() -> None:
        drop = await store_at(tmp_path).open("alice")
        keys = [info.key for info in drop.listing]
        assert await drop.delete([]) == DeleteResult(removed=(), failed=())
        assert (await drop.delete([keys[0], keys[0]])).removed == (keys[0],)
        with pytest.raises(StoreError):
            await drop.delete([keys[1]])
        with pytest.raises(StoreError):
            await read_all(drop, keys[1])
        await drop.close()
        with pytest.raises(StoreError):
            await drop.delete([keys[1]])

    run(main())


def test_leftover_temporary_files_are_removed(tmp_path: Path) -> None:
    write_mbox(tmp_path)
    (tmp_path / ".alice.popbox-tmp.abc123").write_bytes(b"half a rewrite")
    (tmp_path / ".bob.popbox-tmp.abc123").write_bytes(b"not ours to remove")
    delete_numbers(tmp_path, [1])
    assert temp_files(tmp_path) == [".bob.popbox-tmp.abc123"]


def test_first_retrieval_times_persist_in_the_sidecar(tmp_path: Path) -> None:
    write_mbox(tmp_path)
    sidecar = tmp_path / "alice.popbox"

    async def first(drop: MboxMaildrop) -> None:
        assert [info.first_retrieved for info in drop.listing] == [None] * 4
        await drop.record_retrievals([drop.listing[0].key, drop.listing[2].key], 1000.5)

    with_drop(tmp_path, first)
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600

    async def second(drop: MboxMaildrop) -> DeleteResult:
        assert [info.first_retrieved for info in drop.listing] == [1000.5, None, 1000.5, None]
        await drop.record_retrievals([drop.listing[0].key, drop.listing[1].key], 2000.0)
        return await drop.delete([drop.listing[0].key])

    with_drop(tmp_path, second)

    async def third(drop: MboxMaildrop) -> list[float | None]:
        return [info.first_retrieved for info in drop.listing]

    assert with_drop(tmp_path, third) == [2000.0, 1000.5, None]
    assert len(load_retrievals(str(mbox_path(tmp_path)))) == 2
    assert temp_files(tmp_path) == []


def test_a_damaged_sidecar_is_ignored(tmp_path: Path) -> None:
    write_mbox(tmp_path)
    sidecar = tmp_path / "alice.popbox"

    async def body(drop: MboxMaildrop) -> list[float | None]:
        return [info.first_retrieved for info in drop.listing]

    sidecar.write_bytes(b"\x00garbage")
    assert with_drop(tmp_path, body) == [None] * 4

    async def uid(drop: MboxMaildrop) -> str:
        return drop.listing[1].unique_id

    line = f"{with_drop(tmp_path, uid)} 77.25\n".encode()
    sidecar.write_bytes(b"popbox-mbox-retrievals 1\nbad line\n" + line + b"x -1\n")
    assert with_drop(tmp_path, body) == [None, 77.25, None, None]
