"""The gateway's error hierarchy.

Stages raise these and only these; each says whether trying again can help.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    retryable: bool = False


class ConfigError(GatewayError):
    """A config, profile, rule or registry file is wrong.

    The message names the file, the field and what was expected.
    """

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")


class DecodeError(GatewayError):
    """A device message cannot be accepted; it is quarantined with `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class StoreError(GatewayError):
    """The outbox or the time-series database failed."""

    def __init__(self, message: str, *, retryable: bool, retry_after_s: float | None = None):
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        super().__init__(message)


class DamagedStoreError(StoreError):
    """A SQLite file the gateway keeps is damaged: trying again cannot help. The gateway
    stops, and its next start moves the file aside and begins a new one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class NotifyError(GatewayError):
    """A notification could not be delivered.

    `rate_limited`: the provider (or our own count of its limit) refuses more for now;
    `retry_after_s` says for how long, when known. `account_wide`: the limit is the
    account's or the application's, not the number's: no send by the channel, to any
    number, gets through meanwhile.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        rate_limited: bool = False,
        retry_after_s: float | None = None,
        account_wide: bool = False,
    ) -> None:
        self.retryable = retryable
        self.rate_limited = rate_limited
        self.retry_after_s = retry_after_s
        self.account_wide = account_wide
        super().__init__(message)
