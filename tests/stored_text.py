"""What InfluxDB keeps of the text it is sent in line protocol, for tests of the encoding.

Names and keys cannot carry everything (see gateway.store.line_protocol): these say
what is stored instead, and the integration tests check them against a real InfluxDB.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st

# Text as registry places and devices' string fields may hold it: the characters line
# protocol escapes or cannot carry, among letters, digits, Chinese, control characters
# and a character outside the Basic Multilingual Plane.
HOSTILE_TEXT = st.text(
    st.sampled_from(
        [*',= "\\\n\r\t', *"ab1_-.#", *"湖光苑号楼", "\x00", "\x01", "\x0b", "\x7f", "😀"]
    ),
    min_size=1,
    max_size=8,
)
MEASUREMENTS = HOSTILE_TEXT.filter(lambda text: text[0] != "#" and "\\" not in text)


def as_stored_measurement(text: str) -> str:
    """A measurement (which holds no backslash) as InfluxDB keeps it: no newline, and a
    space for a tab at its start."""
    text = text.replace("\n", " ").replace("\r", " ")
    return " " + text[1:] if text[0] in "\t\0" else text


def as_stored_name(text: str) -> str:
    """A tag as InfluxDB keeps it: no newline, no trailing backslash, and of an odd run
    of backslashes before a space, the last a space."""
    text = text.replace("\n", " ").replace("\r", " ")
    text = text[:-1] + " " if text.endswith("\\") else text
    return re.sub(r"(?<!\\)((?:\\\\)*)\\(?= )", r"\1 ", text)


def as_stored_field_key(key: str) -> str:
    """A field key as InfluxDB keeps it: no newline, a space for a tab at its start, no
    trailing backslash, and of an odd run of backslashes before a comma, equals sign,
    space or double quote, the last a space."""
    key = key.replace("\n", " ").replace("\r", " ")
    key = " " + key[1:] if key[0] in "\t\0" else key
    key = key[:-1] + " " if key.endswith("\\") else key
    return re.sub(r'(?<!\\)((?:\\\\)*)\\(?=[,= "])', r"\1 ", key)
