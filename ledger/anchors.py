"""Anchors: the chain's head written, authenticated, to a witness outside the ledger file.

The hash chain proves that no row was changed *in place*; it cannot tell a log from
the same log with its last rows deleted, with a row appended by someone who
recomputed its hash, or with every hash after an edit recomputed. An anchor pins
the head as it was: ``{position, hash, at}`` of one ledger, authenticated with
HMAC-SHA256 under a key kept outside the database, appended as one JSON line to a
witness file. ``Witness.check`` then says whether the ledger still holds every
anchored row with its anchored hash: a truncation below an anchor and a rewrite
below an anchor are found and named; rows after the last anchor are covered by the
chain alone (a forged append there is not detectable until it is anchored over).

Where the files live is the caller's choice (the gateway uses ``$HERMES_HOME/
ledger.key`` and ``$HERMES_HOME/ledger.anchors``); one witness serves several
ledgers, each line naming its ledger by ``EventLog.identity`` (``ledger_identity``):
the resolved path of a SQLite file, ``postgresql://host:port/dbname`` for a
PostgreSQL log (never a user or a password). Either backend is read through what
both offer, ``head_row`` and ``hash_at`` (and ``verify`` from the last anchor).
Each line's MAC also covers the previous line's MAC, so an
edited, removed or reordered line is found; the last lines of the witness, or the
whole file, can be deleted without trace, which docs/ledger.md says.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from hermes_ledger.ledger.backend import EventLog, is_dsn
from hermes_ledger.ledger.clock import format_utc, system_clock
from hermes_ledger.ledger.errors import LedgerError

__all__ = [
    "KEY_NAME",
    "WITNESS_NAME",
    "Anchor",
    "AnchorReport",
    "Witness",
    "ledger_identity",
]

KEY_NAME = "ledger.key"
WITNESS_NAME = "ledger.anchors"
FORMAT = 1


def ledger_identity(target: str | os.PathLike[str] | EventLog) -> str:
    """The name a ledger's anchors carry: the resolved absolute path of its file, or
    ``postgresql://host:port/dbname`` of a connection URI (``EventLog.identity``).

    Taken from outside the log on purpose: anything stored inside it (an id, the
    first row's hash) is what an attacker who edits the log would change."""
    if isinstance(target, EventLog):
        return target.identity
    if is_dsn(target):
        from hermes_ledger.ledger.postgres.log import describe_dsn

        return "postgresql://" + describe_dsn(str(target), user=False)
    return str(Path(target).expanduser().resolve())


@dataclass(frozen=True, slots=True)
class Anchor:
    """One witness line: ``ledger``'s head was ``position`` with ``hash`` at ``at``.
    ``prev`` is the MAC of the witness line before it ("" for the first line)."""

    ledger: str
    position: int
    hash: str
    at: str
    prev: str
    mac: str
    line: int = 0

    def body(self) -> dict[str, Any]:
        return {
            "v": FORMAT,
            "ledger": self.ledger,
            "position": self.position,
            "hash": self.hash,
            "at": self.at,
            "prev": self.prev,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "mac": self.mac}


def _mac(key: bytes, body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AnchorReport:
    """What the witness says about one ledger.

    ``anchors`` are this ledger's valid anchors (witness order); ``problems`` name
    truncations, rewrites and witness lines that fail their MAC or the chain of
    lines; ``head`` is the ledger's last position, ``unanchored`` how many rows lie
    after the last anchor (covered by the hash chain alone)."""

    witness: str
    ledger: str
    head: int
    anchors: tuple[Anchor, ...] = ()
    problems: tuple[str, ...] = ()
    witness_lines: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def last(self) -> Anchor | None:
        return max(self.anchors, key=lambda a: a.position) if self.anchors else None

    @property
    def unanchored(self) -> int:
        last = self.last
        return max(0, self.head - (last.position if last else 0))

    def text(self) -> str:
        if self.problems:
            return "FAILED: " + "; ".join(self.problems)
        last = self.last
        if last is None:
            return (
                f"none for this ledger in {self.witness}: truncation and rewrites with"
                " recomputed hashes are not detectable (run `hermes-ledger anchor`)"
            )
        text = (
            f"ok: {len(self.anchors)} anchor{' holds' if len(self.anchors) == 1 else 's hold'},"
            f" the last at position {last.position} ({last.at})"
        )
        if self.unanchored:
            text += (
                f"; positions {last.position + 1}..{self.head} are after the last anchor:"
                " the chain alone covers them (a forged append there is not detectable)"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        last = self.last
        return {
            "ok": self.ok,
            "witness": self.witness,
            "ledger": self.ledger,
            "anchors": len(self.anchors),
            "last_anchor": last.to_dict() if last else None,
            "unanchored_after": last.position if last else 0,
            "unanchored": self.unanchored,
            "problems": list(self.problems),
        }


class Witness:
    """An append-only JSON-lines file of anchors and the key that authenticates them.

    The key (32 random bytes, hex) is created owner-only (0600) on the first anchor;
    a key file that another user may read or write, or that someone else owns, is
    refused, for anchoring and for checking alike.
    """

    def __init__(self, key_path: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
        self.key_path = Path(key_path)
        self.path = Path(path)

    @classmethod
    def in_directory(cls, directory: str | os.PathLike[str]) -> Witness:
        """``<directory>/ledger.key`` and ``<directory>/ledger.anchors``."""
        root = Path(directory)
        return cls(root / KEY_NAME, root / WITNESS_NAME)

    # -- the key -------------------------------------------------------------

    def _key(self, *, create: bool) -> bytes | None:
        path = self.key_path
        if create and not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                pass  # another process created it first: read theirs
            except OSError as exc:
                raise LedgerError(
                    f"cannot create the anchor key {path}: {exc.strerror}",
                    hint=f"check that you may write to {path.parent}",
                ) from None
            else:
                try:
                    os.write(fd, (secrets.token_hex(32) + "\n").encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise LedgerError(
                f"the anchor key {path} is not a regular file",
                hint=f"remove it and restore the key file from your backup (mode 0600) at {path}",
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077 or st.st_uid != os.getuid():
            raise LedgerError(
                f"the anchor key {path} can be read or written by other users (mode {mode:04o})"
                if mode & 0o077
                else f"the anchor key {path} belongs to another user (uid {st.st_uid})",
                hint=f"chmod 600 {path} (and chown it to yourself); if others could read it, "
                "anchors made with it prove nothing: check the ledger, then start a new key",
            )
        text = path.read_text("ascii", errors="replace").strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) < 16:
            raise LedgerError(
                f"the anchor key {path} is not a key hermes-ledger wrote (64 hex digits)",
                hint="restore it from your backup; anchors cannot be checked with another key",
            )
        return key

    # -- reading the witness ---------------------------------------------------

    def _lines(self, key: bytes | None, text: str) -> tuple[list[Anchor], list[str]]:
        """Every valid anchor, and a problem for each line that is not one."""
        anchors: list[Anchor] = []
        problems: list[str] = []
        previous = ""
        for number, raw in enumerate(text.splitlines(), start=1):
            where = f"witness line {number}"
            item: Any = None
            try:
                item = json.loads(raw)
                anchor = Anchor(
                    ledger=str(item["ledger"]),
                    position=int(item["position"]),
                    hash=str(item["hash"]),
                    at=str(item["at"]),
                    prev=str(item["prev"]),
                    mac=str(item["mac"]),
                    line=number,
                )
                if item.get("v") != FORMAT:
                    raise ValueError(f"format {item.get('v')!r}")
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{where} is not an anchor ({exc}): the witness was edited")
                previous = str(item.get("mac", "")) if isinstance(item, dict) else ""
                continue
            if key is not None and not hmac.compare_digest(_mac(key, anchor.body()), anchor.mac):
                problems.append(
                    f"{where} (position {anchor.position}) fails its MAC: it was edited, or"
                    " written without the key"
                )
            elif anchor.prev != previous:
                after = "the start of the file" if number == 1 else f"line {number - 1}"
                problems.append(
                    f"{where} does not follow {after}: witness lines were removed or reordered"
                )
            else:
                anchors.append(anchor)
            previous = anchor.mac
        return anchors, problems

    def _read(self) -> str:
        try:
            return self.path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise LedgerError(
                f"cannot read the witness {self.path}: {exc.strerror}",
                hint=f"check the permissions of {self.path}",
            ) from None

    # -- anchoring -------------------------------------------------------------

    def anchor(self, ledger: EventLog, *, at: datetime | None = None) -> Anchor:
        """Append the ledger's head to the witness, after checking that the chain
        still verifies from this ledger's last anchor (from the first row if it has
        none) and that the last anchor still holds: an anchor never blesses a
        truncated or rewritten log. LedgerError, with nothing written, otherwise."""
        key = self._key(create=True)
        assert key is not None
        identity = ledger.identity
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise LedgerError(
                f"cannot open the witness {self.path}: {exc.strerror or exc}",
                hint=f"check that you may write to {self.path}",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one anchor at a time: the lines form a chain
            text = _read_all(fd)
            anchors, problems = self._lines(key, text)
            if problems:
                raise LedgerError(
                    f"the witness {self.path} does not check out: {problems[0]}; not anchoring",
                    hint="run `hermes-ledger verify`; keep the damaged witness as evidence and"
                    " move it aside to start a new one",
                )
            mine = [a for a in anchors if a.ledger == identity]
            position, digest = ledger.head_row()
            if not position:
                raise LedgerError(
                    f"{identity} has no events: there is no head to anchor",
                    hint="anchor once the ledger has events",
                )
            start = (0, "0" * 64)
            if mine:
                last = max(mine, key=lambda a: a.position)
                held = ledger.hash_at(last.position)
                if held != last.hash:
                    what = "no longer holds" if held is None else "holds another hash at"
                    raise LedgerError(
                        f"{identity} {what} position {last.position}, anchored at {last.at};"
                        " not anchoring",
                        hint="run `hermes-ledger verify` to see what changed",
                    )
                start = (last.position, last.hash)
            chain = ledger.verify(after=start)
            if not chain.ok or chain.head != position:
                raise LedgerError(
                    f"{identity}: the chain does not verify after position {start[0]}:"
                    f" {chain}; not anchoring",
                    hint="run `hermes-ledger verify`",
                )
            previous = ""
            if text.strip():
                last_line = text.rstrip("\n").rsplit("\n", 1)[-1]
                previous = str(json.loads(last_line)["mac"])
            draft = Anchor(identity, int(position), str(digest),
                           format_utc(at or system_clock()), previous, "")  # fmt: skip
            anchor = replace(draft, mac=_mac(key, draft.body()))
            line = json.dumps(anchor.to_dict(), ensure_ascii=False, separators=(",", ":"))
            prefix = "" if not text or text.endswith("\n") else "\n"
            os.write(fd, (prefix + line + "\n").encode())
            os.fsync(fd)
            return replace(anchor, line=len(text.splitlines()) + 1)
        finally:
            os.close(fd)

    def last(self, ledger: str | os.PathLike[str] | EventLog) -> Anchor | None:
        """The ledger's highest valid anchor (None if it has none, or no key yet);
        ``ledger`` is a log, a SQLite file's path or a connection URI."""
        key = self._key(create=False)
        if key is None:
            return None
        identity = ledger_identity(ledger)
        anchors, _ = self._lines(key, self._read())
        mine = [a for a in anchors if a.ledger == identity]
        return max(mine, key=lambda a: a.position) if mine else None

    # -- checking --------------------------------------------------------------

    def check(self, ledger: EventLog) -> AnchorReport:
        """Every anchor of ``ledger`` against the rows it holds now."""
        identity = ledger.identity
        text = self._read()
        lines = len(text.splitlines())
        key = self._key(create=False)  # a key others can read is refused (raises)
        try:
            head = int(ledger.head_row()[0])
        except LedgerError as exc:
            return AnchorReport(str(self.path), identity, 0, witness_lines=lines,
                                problems=(f"the log could not be read: {exc}",))  # fmt: skip
        if key is None:
            missing = (
                (
                    f"the key {self.key_path} is missing: the {lines} witness lines in"
                    f" {self.path} cannot be checked",
                )
                if lines
                else ()
            )
            return AnchorReport(str(self.path), identity, head, problems=missing,
                                witness_lines=lines)  # fmt: skip
        anchors, problems = self._lines(key, text)
        mine = tuple(a for a in anchors if a.ledger == identity)
        try:
            problems += _against_log(ledger, mine, head)
        except LedgerError as exc:
            problems.append(f"the anchored rows could not be read: {exc}")
        return AnchorReport(
            str(self.path), identity, head, anchors=mine, problems=tuple(problems),
            witness_lines=lines,
        )  # fmt: skip


def _read_all(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _against_log(ledger: EventLog, anchors: Sequence[Anchor], head: int) -> list[str]:
    """Truncation (an anchored position beyond the head) and rewrites (an anchored
    position whose hash changed), each named once, with the range it lies in."""
    problems: list[str] = []
    by_position: dict[int, Anchor] = {}
    for anchor in anchors:
        by_position.setdefault(anchor.position, anchor)
    beyond = [a for p, a in sorted(by_position.items()) if p > head]
    if beyond:
        top = beyond[-1]
        problems.append(
            f"truncated: the log ends at position {head}, but position {top.position} was"
            f" anchored at {top.at}: events {head + 1}..{top.position} (at least) were deleted"
        )
    matching_below = 0
    for position, anchor in sorted(by_position.items()):
        if position > head:
            break
        if ledger.hash_at(position) == anchor.hash:
            matching_below = position
            continue
        since = (
            f" and after position {matching_below} (whose anchor still holds)"
            if matching_below
            else ""
        )
        problems.append(
            f"rewritten: position {position} no longer has the hash anchored at {anchor.at}:"
            f" the log was changed at or before position {position}{since}"
        )
        break
    return problems
