"""Printing safely: message text escaped for terminals, passwords in URLs masked."""

from __future__ import annotations

import pytest

from shared.display import mask_url, terminal_safe


def test_printable_text_is_unchanged() -> None:
    assert terminal_safe("lib-7 family sram µm ∑ 日本") == "lib-7 family sram µm ∑ 日本"
    assert terminal_safe(42) == "42"


def test_control_characters_become_visible_escapes() -> None:
    assert terminal_safe("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert terminal_safe("one\ntwo\r\tthree") == "one\\ntwo\\r\\tthree"
    assert terminal_safe("\x00\x07\x7f\x9b\x85") == "\\x00\\x07\\x7f\\x9b\\x85"  # C0, DEL, C1 (CSI, NEL)
    assert terminal_safe("abc\u202edef\u2028") == "abc\\u202edef\\u2028"  # bidi override, line separator
    assert terminal_safe("\ud800") == "\\ud800"  # a lone surrogate cannot even be encoded for printing


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://app:p%40ss@redis.example:6380/1", "rediss://app:***@redis.example:6380/1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://app@host:6379/0", "redis://app@host:6379/0"),
        ("unix:///run/redis.sock?db=0&password=s3cret", "unix:///run/redis.sock?db=0&password=***"),
        ("redis://host:notaport/0", "***"),
    ],
)
def test_passwords_in_urls_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url) and "p%40ss" not in mask_url(url)
