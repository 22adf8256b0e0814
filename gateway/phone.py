"""Phone numbers, read where people write them (the device registry, the notification
policy) and kept in one form, E.164 (`+8613800138000`, `+8637166123456`): one number is
then one number to the router, to the providers' limits and to the providers, however
community staff typed it (`138 0013 8000`, `0086 138…`, `0371-66123456`).

Parsed and checked against libphonenumber's numbering plans, a number written without a
country code taken for a mainland Chinese one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult
from pydantic import BeforeValidator

# Where a number written without its country code is.
DEFAULT_REGION = "CN"
EXPECTED = (
    "a phone number such as 13800138000, 0371-66123456 (a landline with its area code) "
    "or +852 9123 4567"
)
_WHY = {
    ValidationResult.TOO_SHORT: "too short (a landline needs its area code)",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "too short (a landline needs its area code)",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "no number there has that many digits",
    ValidationResult.INVALID_COUNTRY_CODE: "no country has that code",
}
_NO_SUCH_NUMBER = (
    "no such number: a digit missing or one too many, or a landline without its area code?"
)


def normalise_phone(written: str | int) -> str:
    """A number as people write it, in E.164; ValueError saying what was expected when
    it is not one that can be dialled. An int is a number YAML read from digits written
    without quotes."""
    if isinstance(written, int):
        try:
            return normalise_phone(str(written))
        except ValueError as exc:
            # A landline's leading 0 is lost that way, and digits 0-7 alone are read as
            # an octal number: another number altogether.
            raise ValueError(f"{exc} (YAML read it as a number: write it in quotes)") from None
    number = _parsed(written)
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def _parsed(text: str) -> phonenumbers.PhoneNumber:
    # libphonenumber reads letters as a keypad's digits (1-800-FLOWERS): a typo such as
    # an O for a 0 would be taken for another, valid, number.
    if any(c.isalpha() for c in text):
        raise ValueError(f"expected {EXPECTED}, got {text!r}: letters in it")
    try:
        number = phonenumbers.parse(text, DEFAULT_REGION)
    except NumberParseException:
        raise ValueError(f"expected {EXPECTED}, got {text!r}") from None
    if number.extension:
        raise ValueError(
            f"expected {EXPECTED}, got {text!r}: an extension, which neither an SMS nor a "
            "call can reach"
        )
    if not phonenumbers.is_valid_number(number):
        why = _WHY.get(phonenumbers.is_possible_number_with_reason(number), _NO_SUCH_NUMBER)
        raise ValueError(f"expected {EXPECTED}, got {text!r}: {why}")
    return number


def _phone(value: object) -> object:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return normalise_phone(value)
    return value  # not a number at all: pydantic's own check of a string says so


# A phone number in a registry or policy file, checked and kept in E.164.
Phone = Annotated[str, BeforeValidator(_phone)]


@lru_cache(maxsize=4096)
def e164(phone: str) -> str:
    """A number a notification or a link carries, in E.164: the files' numbers are so
    already, but one stored by an earlier version is as the registry then had it
    (13987654321). One that is no number, as it is: it is sent as written, for the
    provider to refuse."""
    try:
        return normalise_phone(phone)
    except ValueError:
        return phone


@lru_cache(maxsize=4096)
def dialled_in_mainland(phone: str) -> str:
    """A number as dialled within mainland China, the form Aliyun's APIs and the group
    robots' mentions take: a mobile's 11 digits (13800138000), a landline with its
    area code and trunk 0 (037166123456), another country's with its code
    (+85291234567). One that is no number, as it is."""
    try:
        number = _parsed(phone)
    except ValueError:
        return phone
    dialled = phonenumbers.format_number_for_mobile_dialing(
        number, DEFAULT_REGION, with_formatting=False
    )
    # Empty for a number that cannot be dialled from a mobile in the mainland.
    return dialled or phonenumbers.format_number(number, PhoneNumberFormat.E164)
