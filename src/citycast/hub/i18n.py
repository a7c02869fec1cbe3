"""The hub's languages and its server messages in them: what an operator reads in the console's notices when the
API refuses something (a wrong password, a missing field, a role they lack).

The API's messages are written in English in the code (that is what logs and API clients get). For a user whose
language is not English, `translate_detail` looks the English sentence up in `SERVER_MESSAGES` (patterns over
the sentence; their named parts are carried into the translation) and `validation_message` words a validation
error from its pydantic type. A sentence without an entry stays English: a half-translated sentence would be
worse than an English one.

The console's own strings are in the console's catalogues (console/static/i18n/<language>.json).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

DEFAULT_LANGUAGE = "en"
# Every language the console, the server messages and the telephone prompts exist in (docs/console.md "Languages").
Language = Literal["en", "ur"]
LANGUAGES: tuple[str, ...] = get_args(Language)
DEFAULT_TIME_ZONE = "Asia/Karachi"


def supported(language: str | None) -> str | None:
    """The supported language a tag names ("ur-PK" → "ur"), or None."""
    if not language:
        return None
    base = language.strip().lower().replace("_", "-").split("-", 1)[0]
    return base if base in LANGUAGES else None


def pick_language(accept_language: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """The best supported language of an Accept-Language header (RFC 9110 §12.5.4: tags with q-values; q=0 means
    "not this one"); `default` if none is supported or the header is malformed."""
    best: tuple[float, int, str] | None = None
    for i, item in enumerate((accept_language or "")[:1000].split(",")):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        match = re.fullmatch(r"\s*q\s*=\s*([01](?:\.\d{0,3})?)\s*", params) if params else None
        if params and match is None:
            continue
        if match is not None:
            q = float(match.group(1))
        language = supported(tag)
        if language is None or q <= 0:
            continue
        # Highest q first; among equals, the one listed first.
        if best is None or (q, -i) > (best[0], -best[1]):
            best = (q, i, language)
    return best[2] if best is not None else default


@dataclass(frozen=True)
class Message:
    pattern: re.Pattern[str]
    translations: Mapping[str, str]  # language -> template over the pattern's named groups


def _m(pattern: str, **translations: str) -> Message:
    return Message(re.compile(pattern), translations)


# The API's common refusals. Patterns match the whole English sentence.
SERVER_MESSAGES: tuple[Message, ...] = (
    _m(r"wrong username or password", ur="صارف کا نام یا پاس ورڈ غلط ہے۔"),
    _m(r"not logged in \(or the session expired\)", ur="آپ سائن اِن نہیں ہیں (یا آپ کا سیشن ختم ہو گیا ہے)۔"),
    _m(
        r"this needs the (?P<role>\w+) role \(you are (?P<you>\w+)\)",
        ur="اس کے لیے {role} کا کردار درکار ہے (آپ {you} ہیں)۔",
    ),
    _m(r"(?P<what>[\w ]+) (?P<id>\S+) does not exist", ur="{what} {id} موجود نہیں۔"),
    _m(
        r"too many failed attempts from (?P<who>.+): try again in (?P<s>\d+) s",
        ur="{who} سے بہت سی ناکام کوششیں: {s} سیکنڈ بعد دوبارہ کوشش کریں۔",
    ),
    _m(
        r"too many failed logins to (?P<who>.+) lately: try again in (?P<s>\d+) s",
        ur="{who} میں حال ہی میں بہت سی ناکام سائن اِن کوششیں: {s} سیکنڈ بعد دوبارہ کوشش کریں۔",
    ),
    _m(
        r"the hub is busy checking (?:logins|passwords): try again(?: in a second)?",
        ur="ہب ابھی مصروف ہے: ایک لمحے بعد دوبارہ کوشش کریں۔",
    ),
    _m(r"user (?P<name>.+) already exists", ur="صارف {name} پہلے سے موجود ہے۔"),
    _m(r"this is the last active admin: keep at least one", ur="یہ آخری فعال ایڈمن ہے: کم از کم ایک رکھیں۔"),
    _m(r"you cannot delete your own account", ur="آپ اپنا اکاؤنٹ خود حذف نہیں کر سکتے۔"),
    _m(r"invalid request", ur="غلط درخواست۔"),
)

# Validation errors by pydantic error type; {field} is where the error is, the rest comes from its ctx.
VALIDATION_MESSAGES: Mapping[str, Mapping[str, str]] = {
    "ur": {
        "missing": "{field}: یہ ضروری ہے",
        "string_too_short": "{field}: کم از کم {min_length} حروف ہونے چاہییں",
        "string_too_long": "{field}: زیادہ سے زیادہ {max_length} حروف ہو سکتے ہیں",
        "string_pattern_mismatch": "{field}: درست شکل میں نہیں",
        "greater_than_equal": "{field}: کم از کم {ge} ہونا چاہیے",
        "less_than_equal": "{field}: زیادہ سے زیادہ {le} ہو سکتا ہے",
        "greater_than": "{field}: {gt} سے زیادہ ہونا چاہیے",
        "less_than": "{field}: {lt} سے کم ہونا چاہیے",
        "int_parsing": "{field}: پورا عدد ہونا چاہیے",
        "int_type": "{field}: پورا عدد ہونا چاہیے",
        "float_parsing": "{field}: عدد ہونا چاہیے",
        "enum": "{field}: ان میں سے ایک ہونا چاہیے: {expected}",
        "literal_error": "{field}: ان میں سے ایک ہونا چاہیے: {expected}",
        "extra_forbidden": "{field}: یہ خانہ قبول نہیں",
        "string_type": "{field}: متن ہونا چاہیے",
        "bool_parsing": "{field}: ہاں یا نہیں ہونا چاہیے",
        "json_invalid": "{field}: JSON پڑھا نہیں جا سکا",
        "model_attributes_type": "{field}: غلط شکل",
        "dict_type": "{field}: غلط شکل",
    },
}


def translate_detail(detail: str, language: str) -> str:
    """`detail` in `language` if the catalogue has it, else `detail` as it is."""
    if language == DEFAULT_LANGUAGE:
        return detail
    for message in SERVER_MESSAGES:
        match = message.pattern.fullmatch(detail)
        template = message.translations.get(language)
        if match is not None and template is not None:
            return template.format(**match.groupdict())
    return detail


def validation_message(error: Mapping[str, Any], where: str, language: str) -> str:
    """One pydantic error as the operator reads it: "<where>: <what is wrong>" in `language`, English as pydantic
    words it when the catalogue has no entry for its type."""
    template = VALIDATION_MESSAGES.get(language, {}).get(str(error.get("type", "")))
    if template is not None:
        values = {str(k): v for k, v in (error.get("ctx") or {}).items()}
        try:
            return template.format(field=where, **values)
        except (KeyError, IndexError, ValueError):
            pass  # a ctx without the part the template names: the English words below
    return f"{where}: {error.get('msg', 'invalid')}"
