"""Why a device message was rejected: the reasons it is counted and quarantined by."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    TOO_LARGE = "too_large"
    BAD_TOPIC = "bad_topic"
    UNKNOWN_DEVICE_TYPE = "unknown_device_type"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    UNREGISTERED_DEVICE = "unregistered_device"
    DEVICE_TYPE_MISMATCH = "device_type_mismatch"
    BAD_TIMESTAMP = "bad_timestamp"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    MISSING_FIELD = "missing_field"
    UNKNOWN_EVENT = "unknown_event"
    BAD_FRAME = "bad_frame"
    BAD_FRAME_HEADER = "bad_frame_header"
    BAD_FRAME_LENGTH = "bad_frame_length"
    BAD_FRAME_TYPE = "bad_frame_type"
    BAD_CRC = "bad_crc"
    # Valid by its profile, yet not storable as line protocol (an integer beyond int64).
    UNENCODABLE = "unencodable"
    # A line the time-series database refused (HTTP 400) after it left the outbox.
    REFUSED_BY_DATABASE = "refused_by_database"
    # The gateway failed on the message: a fault of the gateway's, logged with its
    # traceback. The message is kept, and the batch around it goes on.
    INTERNAL_ERROR = "internal_error"
