"""What may be printed: text from messages made safe for a terminal, secrets in URLs masked.

A message field printed raw can carry terminal escape sequences (clear the screen, rewrite earlier
lines, set the window title) or newlines that forge extra output lines: :func:`terminal_safe`
shows every character Python does not consider printable (C0 and C1 controls, ESC, DEL, line
separators, bidirectional overrides, lone surrogates) as a visible escape. :func:`mask_url`
hides the password of a URL (``redis://:secret@host`` prints as ``redis://:***@host``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}
_SECRET_QUERY_KEYS = frozenset({"password", "pass", "pwd", "secret", "token", "auth"})


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_safe(text: object) -> str:
    """``str(text)`` with every non-printable character replaced by a visible escape (``\\x1b``)."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(char if char.isprintable() else _escape(char) for char in value)


def mask_url(url: str) -> str:
    """``url`` with its password (and any ``password=`` query parameter) replaced by ``***``.

    A URL that cannot be parsed is masked whole: it may still hold a secret."""
    try:
        parts = urlsplit(url)
        password = parts.password
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return MASK
    masked = url
    if password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        username = userinfo.split(":", 1)[0]
        masked = masked.replace(f"//{parts.netloc}", f"//{username}:{MASK}@{hostinfo}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
            query = urlencode(
                [(key, MASK if key.lower() in _SECRET_QUERY_KEYS else value) for key, value in pairs],
                safe="*",
            )
            masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked
