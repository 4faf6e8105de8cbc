"""Hypothesis strategies that spoil a compact JWS the ways a hostile or broken client does:
a flipped character, a non-canonical last character, padding, whitespace, an empty or a
missing part. The differential tests feed them to certbound's readers and to PyJWT alike."""

from __future__ import annotations

from hypothesis import strategies as st

from proxy.tokens import signature


@st.composite
def mutations(draw: st.DrawFn, token: str) -> str:
    parts = token.split(".")
    kind = draw(
        st.sampled_from(
            ["none"] * 6 + ["flip", "tail", "tail", "pad", "space", "newline", "empty", "drop"]
        )
    )
    index = draw(st.integers(0, 2))
    part = parts[index]
    if kind == "flip" and part:
        at = draw(st.integers(0, len(part) - 1))
        swapped = "A" if part[at] != "A" else "B"
        parts[index] = part[:at] + swapped + part[at + 1 :]
    elif kind == "tail" and part:
        # Another last character with the same leading bits: the same bytes, spelled otherwise.
        last = signature._VALUE[part[-1]]
        parts[index] = part[:-1] + signature._ALPHABET[last ^ draw(st.integers(1, 3))]
    elif kind == "pad":
        parts[index] = part + "=" * draw(st.integers(1, 2))
    elif kind == "space":
        parts[index] = part + " "
    elif kind == "newline":
        parts[index] = "\n" + part
    elif kind == "empty":
        parts[index] = ""
    elif kind == "drop":
        del parts[index]
    return ".".join(parts)
