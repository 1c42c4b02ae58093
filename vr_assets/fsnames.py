"""File names as Linux gives them: bytes. Python shows bytes that are not UTF-8 as surrogate escapes in a str.

Such a str opens the file again (os functions encode it back), but it cannot be encoded as UTF-8: pydantic's JSON,
`json.dumps(..., ensure_ascii=False)`, UTF-8 log files and parquet raise on it. `shown` is the text a person reads
(each undecodable byte as `\\xff`), `fs_bytes` the exact bytes, and `FsText` a pydantic str that stores such a name
in JSON losslessly (base64 of the bytes, next to the shown text) and plain names as plain strings, as before.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

ESCAPED_KEY = "fs_b64"


def fs_bytes(text: str) -> bytes:
    """The bytes the OS sees for `text` (os.fsencode); a lone surrogate no file name produced (a JSONL's `\\ud800`
    escape) is kept as its own UTF-8 bytes instead of raising."""
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def is_clean(text: str) -> bool:
    """Valid Unicode that encodes as UTF-8 (every name that was valid UTF-8 on disk)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """`text` for logs, messages and metadata: unchanged when clean, else undecodable bytes as `\\xff` escapes."""
    return text if is_clean(text) else fs_bytes(text).decode("utf-8", "backslashreplace")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """`shown(text)` on one line, for messages and log lines: control characters (a newline in a file name) as
    escapes such as `\\n`."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), shown(text))


def _to_json(text: str) -> str | dict[str, str]:
    if is_clean(text):
        return text
    return {ESCAPED_KEY: base64.b64encode(fs_bytes(text)).decode("ascii"), "shown": shown(text)}


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get(ESCAPED_KEY), str):
        return os.fsdecode(base64.b64decode(value[ESCAPED_KEY], validate=True))
    return value


# A str field holding a file name or path: in Python the name as os functions take it; in JSON a plain string
# when it is valid UTF-8, else {"fs_b64": <base64 of the bytes>, "shown": <readable form>}.
FsText = Annotated[str, BeforeValidator(_from_json), PlainSerializer(_to_json, when_used="json")]
