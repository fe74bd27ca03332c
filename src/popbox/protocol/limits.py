"""Every bound of the protocol core, named, with the rule it comes from."""

from __future__ import annotations

# RFC 2449 section 4: "The maximum length of a command is increased from 47 characters
# (4 character command, single space, 40 character argument, CRLF) to 255 octets,
# including the terminating CRLF."
MAX_COMMAND_LINE = 255

# RFC 1939 section 3: "Responses may be up to 512 characters long, including the
# terminating CRLF." (RFC 2449 section 4 keeps this for response lines.)
MAX_REPLY_LINE = 512

# RFC 1939 section 3: "Each argument may be up to 40 characters long."
MAX_ARGUMENT = 40

# RFC 1939 section 3: "Keywords are three or four characters long."
MIN_KEYWORD, MAX_KEYWORD = 3, 4

# Consecutive client errors before the server gives up on the session (Dovecot's
# CLIENT_MAX_BAD_COMMANDS is 20; aiosmtpd's BOGUS_LIMIT is 5). Configurable.
DEFAULT_MAX_BAD_COMMANDS = 10

# RFC 5034 section 4 sets no limit on SASL response lines; OAuth bearer tokens run to
# several KiB, so accept at least 16 KiB of base64 (plus CRLF) while a challenge is open.
MAX_SASL_RESPONSE_LINE = 16 * 1024 + 2

# RFC 1939 section 7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
MAX_UNIQUE_ID = 70
