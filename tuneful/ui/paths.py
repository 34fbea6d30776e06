"""The UI's root folder: every file or folder a page opens or writes must lie inside it.

Given at start (``tuneful ui --root DIR``, default the current directory). A relative path is read
from the root; a path outside it (``/etc/passwd``, ``../x``, a link out) is refused with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

HUB_PREFIX = "hf:"  # how a page names a Hugging Face id
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class OutsideRoot(ValueError):
    """A path the UI was asked to open lies outside its root folder."""


class RootFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"root folder {root} does not exist")

    def path(self, text: str | Path, *, must_exist: bool = False) -> Path:
        """``text`` as an absolute path inside the root (links resolved), or OutsideRoot."""
        candidate = Path(str(text).strip()).expanduser()
        resolved = (candidate if candidate.is_absolute() else self.root / candidate).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise OutsideRoot(f"{text}: outside the UI's root folder {self.root}, refused; "
                              "start `tuneful ui --root DIR` with a folder that holds it")
        if must_exist and not resolved.exists():
            raise FileNotFoundError(f"{text}: no such file or folder under {self.root} (a Hugging Face id is typed "
                                    f"as hf:owner/name)")
        return resolved

    def source(self, text: str | None, *, names: tuple[str, ...] = (), must_exist: bool = True) -> str | None:
        """A data or model source typed on a page: "" → None (the page's default); one of ``names`` (e.g.
        ``sandbox``) as is; a Hugging Face id only when typed as one, ``hf:owner/name``; everything else a path
        inside the root (that exists, unless ``must_exist`` is False). A bare ``owner/name`` is never guessed to be
        an id: the readers look for a local path first, relative to the UI process's working folder — outside the
        root."""
        text = (text or "").strip()
        if not text:
            return None
        if text in names:
            return text
        if text.startswith(HUB_PREFIX):
            hub_id = text[len(HUB_PREFIX):]
            if not _HUB_ID.fullmatch(hub_id) or ".." in hub_id:
                raise ValueError(f"{text}: not a Hugging Face id (hf:owner/name)")
            if Path(hub_id).expanduser().exists():
                raise OutsideRoot(f"{text}: {hub_id} is also a path in the UI process's working folder {Path.cwd()}, "
                                  "outside the root; the readers would take the file, so it is refused")
            return hub_id
        return str(self.path(text, must_exist=must_exist))

    def relative(self, path: str | Path) -> str:
        """How a page shows a path: relative to the root."""
        resolved = Path(path).resolve()
        return str(resolved.relative_to(self.root)) if resolved != self.root else "."
