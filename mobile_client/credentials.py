"""Where the CLI keeps a login: peers, CA bundle and bearer token, in one 0600 file.

``$POCKETGRID_HOME/credentials.json`` (default ``~/.pocketgrid``).  The file
is written to a temporary name created with mode 0600 and renamed over the
old one, so it is never readable by others and never half-written.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ENV_HOME = "POCKETGRID_HOME"


def home() -> Path:
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".pocketgrid")


@dataclass
class Credentials:
    peers: list[str] = field(default_factory=list)
    ca: str | None = None
    token: str | None = None
    token_id: str | None = None
    dn: str | None = None
    kind: str | None = None
    expires_at: float | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> "Credentials":
        path = path or home() / "credentials.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: Path | None = None) -> Path:
        path = path or home() / "credentials.json"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".credentials.")  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(asdict(self), fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return path

    def forget_token(self) -> None:
        self.token = self.token_id = self.kind = self.expires_at = None
