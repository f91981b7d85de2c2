"""The bearer token: where it comes from, and who needs it.

Writes (any method but GET, HEAD and OPTIONS) always need ``Authorization: Bearer
<token>``: 401 without it, 403 with a wrong one. Reads follow a policy: ``loopback``
(the default) lets peers on 127.0.0.1/::1 read freely and asks others for the token;
``open`` lets everyone read; ``token`` asks everyone. A read may also carry the token
in the ``cas_token`` cookie, which the page sets when a read is refused: a browser
cannot put a header on a download link. Writes never accept the cookie, so another
site's form cannot write through a user's browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import platformdirs

import cas

READ_POLICIES = ("loopback", "open", "token")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE = "cas_token"


def token_dir() -> Path:
    """Where a generated token is written: cas's cache folder (``CAS_CACHE_DIR``)."""
    return Path(os.environ.get("CAS_CACHE_DIR") or platformdirs.user_cache_dir("cas")) / "serve"


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path`` (surrounding whitespace removed); refuses an empty file."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise cas.CasError(f"cannot read the token file {path}: {exc}") from exc
    if not text or any(c.isspace() for c in text):
        raise cas.CasError(f"token file {path} must hold one token (no spaces), got none")
    return text


def new_token_file(host: str, port: int) -> tuple[str, Path]:
    """Generate a token and write it, mode 0600, to a file of its own; return both.

    A fresh token every start: a token that leaked dies with the server. The file is
    created by the atomic rename of a temporary file opened with mode 0600, so it is
    never readable by others, not even for an instant.
    """
    token = secrets.token_urlsafe(32)
    folder = token_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    safe_host = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    path = folder / f"token-{safe_host}-{port}"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token, path


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a request is refused: an HTTP status and a message (None: allowed)."""

    status: int
    message: str


@dataclass(frozen=True, slots=True)
class Auth:
    """The token and the read policy of one server."""

    token: str
    reads: str = "loopback"

    def __post_init__(self) -> None:
        if self.reads not in READ_POLICIES:
            raise cas.CasError(
                f"reads must be one of {', '.join(READ_POLICIES)}, got {self.reads!r}"
            )
        if not self.token:
            raise cas.CasError("the server's token cannot be empty")

    def check(
        self, method: str, authorization: str | None, cookie: str | None, peer: str | None
    ) -> Verdict | None:
        """None if the request may go on, else why not."""
        if method in READ_METHODS:
            if self.reads == "open" or (self.reads == "loopback" and is_loopback(peer)):
                return None
            if cookie is not None and self._matches(cookie):
                return None
            return self._bearer(authorization, "reading")
        return self._bearer(authorization, "writing")

    def _bearer(self, authorization: str | None, doing: str) -> Verdict | None:
        if not authorization:
            return Verdict(401, f"{doing} needs 'Authorization: Bearer <token>' (the token "
                                "file 'cas serve' printed at start)")  # fmt: skip
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return Verdict(401, "the Authorization header must be 'Bearer <token>'")
        if not self._matches(value.strip()):
            return Verdict(403, "wrong token")
        return None

    def _matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())
