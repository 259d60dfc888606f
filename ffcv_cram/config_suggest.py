"""Did-you-mean for an unknown 'section.key': the accepted keys closest to what was typed."""
from __future__ import annotations

from difflib import get_close_matches


def _split(dotted: str) -> tuple[str, str]:
    section, _, key = dotted.partition(".")
    return section, key


def close_keys(typed: str, accepted: list[str], limit: int = 3) -> list[str]:
    """Keys of `accepted` ('section.key') that `typed` probably meant, best first.

    A typo within the right section first (training.optimzer -> training.optimizer), then the
    same key in another section (model.flip_tta -> validation.flip_tta), then a misspelt
    section (trainng.epochs -> training.epochs)."""
    section, key = _split(typed)
    by_section: dict[str, list[str]] = {}
    for dotted in accepted:
        s, k = _split(dotted)
        by_section.setdefault(s, []).append(k)
    if section in by_section:
        found = [f"{section}.{k}" for k in get_close_matches(key, by_section[section], limit, 0.6)]
        if found:
            return found
    same_key = [d for d in accepted if _split(d)[0] != section and _split(d)[1] == key]
    if same_key:
        return same_key[:limit]
    for near in get_close_matches(section, [s for s in by_section if s != section], 2, 0.6):
        found = [f"{near}.{k}" for k in get_close_matches(key, by_section[near], limit, 0.6)]
        if found:
            return found
    return get_close_matches(typed, accepted, limit, 0.8)


def hint(typed: str, accepted: list[str], style=lambda key: key, aliases=None) -> str:
    """' (did you mean X?)', or the keys of the section, or the sections: never nothing.
    `aliases` ({other name: our key or None}) are matched too, and shown as our key."""
    aliases = aliases or {}
    found = close_keys(typed, accepted + list(aliases))
    found = list(dict.fromkeys(aliases.get(k) or k for k in found))
    if found:
        return f" (did you mean {' or '.join(style(k) for k in found)}?)"
    section = _split(typed)[0]
    keys = sorted(k for k in accepted if _split(k)[0] == section)
    if keys:
        return f" (keys of section '{section}': {', '.join(_split(k)[1] for k in keys)})"
    return f" (sections: {', '.join(sorted({_split(k)[0] for k in accepted}))})"
