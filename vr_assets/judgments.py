"""Item judgments kept between dataset builds, so a rebuild runs the item rules only on items it has not seen.

The item rules are ~0.2 ms an item (regular expressions over question, answer and reasoning): at 100 000 videos
(about 2 M items) a dataset refresh spent minutes re-judging items that had not changed since the last build. An
item's verdict depends only on the item as written (the placed options and renamed letters included), its task,
the video's mode and duration, the rules' code and the prompt pack's examples; the first four are the key of an
entry, the last two the file's fingerprint. A file with another fingerprint (a rule changed, another pack) is
not used, so a verdict is never older than the rules.

The file keeps the entries the last build used and nothing else: an item that left the dataset leaves the file.
The rules that compare a video's items with each other (`quality.video_problems`) are cheap and always run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from vr_assets.records import Record, TaskItem
from vr_assets.storage import atomic_write_text

if TYPE_CHECKING:
    from upath import UPath

JUDGMENTS_FILE = "item_judgments.json"

Problems = tuple[tuple[str, str], ...]  # (rule, problem) for each rule an item breaks


class JudgmentsFile(Record):
    """The file as stored: the rules' fingerprint, the keys of the items that break no rule (most of them), and the
    rules each other item breaks."""

    fingerprint: str
    clean: list[str]
    problems: dict[str, list[tuple[str, str]]]


def item_key(task: str, item: TaskItem, duration: float, mode: str | None) -> str:
    """What an item's verdict depends on besides the rules, hashed: 96 bits, so among 10^9 items the odds of a
    collision are about 10^-11."""
    text = f"{task}\0{mode}\0{duration!r}\0{item.model_dump_json()}"
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


class ItemJudgments:
    """The item rules' verdicts of one dataset build: those of the last build reused, the others computed once."""

    def __init__(self, fingerprint: str, known: dict[str, Problems] | None = None) -> None:
        self.fingerprint = fingerprint
        self._known = known or {}
        self._used: dict[str, Problems] = {}
        self.reused = 0  # items whose verdict came from the last build
        self.judged = 0  # items the rules ran on in this build
        self.note = ""  # why the last build's verdicts were not taken (see `load`)
        self.damaged = False

    def problems(
        self, task: str, item: TaskItem, duration: float, mode: str | None, rules: Callable[[], list[tuple[str, str]]]
    ) -> list[tuple[str, str]]:
        """The item's (rule, problem) list: the known verdict, else `rules()`, remembered."""
        key = item_key(task, item, duration, mode)
        found = self._used.get(key)
        if found is None:
            found = self._known.pop(key, None)  # moved, not copied: at 2 M items each map is ~200 MB
            if found is None:
                found = tuple(rules())
                self.judged += 1
            else:
                self.reused += 1
            self._used[key] = found
        return list(found)

    @classmethod
    def load(cls, path: Path | UPath, fingerprint: str) -> ItemJudgments:
        """The verdicts stored at `path` under `fingerprint`; when none are taken, `note` says why (and `damaged`
        whether the file was unreadable), except for the first build, which has no file."""
        try:
            stored = JudgmentsFile.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return cls(fingerprint)
        except (OSError, ValidationError) as err:
            cause = err.errors()[0]["msg"] if isinstance(err, ValidationError) and err.errors() else str(err)
            empty = cls(fingerprint)
            empty.note, empty.damaged = f"item judgments at {path} unreadable ({cause}): every item is judged", True
            return empty
        if stored.fingerprint != fingerprint:
            empty = cls(fingerprint)
            empty.note = "the item rules or the prompt examples changed since the last build: every item is judged"
            return empty
        known: dict[str, Problems] = dict.fromkeys(stored.clean, ())
        known.update((k, tuple(v)) for k, v in stored.problems.items())  # pydantic made each (rule, problem) a tuple
        return cls(fingerprint, known)

    def changed(self) -> bool:
        """The build judged an item, did not use one the file holds, or could not use the file: it is out of date."""
        return self.judged > 0 or bool(self._known) or bool(self.note)

    def save(self, path: Path | UPath) -> None:
        """The verdicts this build used, replacing the file whole (one object on an object store)."""
        body = JudgmentsFile(fingerprint=self.fingerprint, clean=[k for k, v in self._used.items() if not v],
                             problems={k: list(v) for k, v in self._used.items() if v})
        atomic_write_text(path, body.model_dump_json())
