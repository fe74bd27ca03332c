"""The GS2 header shared by SCRAM (RFC 5802 section 7) and OAUTHBEARER (RFC 7628 3.1).

    gs2-header     = gs2-cbind-flag "," [ authzid ] ","
    gs2-cbind-flag = ("p=" cb-name) / "n" / "y"
    authzid        = "a=" saslname
    saslname       = 1*(value-safe-char / "=2C" / "=3D")

RFC 5801 section 4 also allows a leading "F," (non-standard GSS-API mechanism); neither
SCRAM nor OAUTHBEARER uses it, so it is malformed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from popbox.sasl.common import MalformedMessage

__all__ = ["Gs2Header", "parse_gs2_header", "parse_saslname"]

# RFC 5056 section 7: cb-name = 1*(ALPHA / DIGIT / "." / "-")
_CB_NAME = re.compile(r"[A-Za-z0-9.-]+")


@dataclass(frozen=True, slots=True)
class Gs2Header:
    # "n": client does not support channel binding; "y": it does but thinks the server
    # does not; "p": it requires binding of type cb_name (RFC 5802 section 5.1).
    cbind_flag: str
    cb_name: str | None
    authzid: str | None
    # The header exactly as sent, through its second comma: SCRAM's cbind-input starts with
    # these octets (RFC 5802 section 7, "c=").
    raw: str


def parse_saslname(value: str, what: str) -> str:
    """Unescape a saslname: "=2C" is ",", "=3D" is "=", any other "=" is malformed."""
    if not value or "\x00" in value or "," in value:
        raise MalformedMessage(f"malformed {what}")
    pieces = value.split("=")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if piece.startswith("2C"):
            out.append("," + piece[2:])
        elif piece.startswith("3D"):
            out.append("=" + piece[2:])
        else:
            raise MalformedMessage(f"malformed {what}")
    return "".join(out)


def parse_gs2_header(text: str) -> tuple[Gs2Header, str]:
    """Split `text` into its GS2 header and the rest; raises MalformedMessage."""
    fields = text.split(",", 2)
    if len(fields) != 3:
        raise MalformedMessage("malformed GS2 header")
    flag, authzid_field, rest = fields
    cb_name: str | None = None
    if flag.startswith("p="):
        cb_name = flag[2:]
        if not _CB_NAME.fullmatch(cb_name):
            raise MalformedMessage("malformed channel binding name")
        flag = "p"
    elif flag not in ("n", "y"):
        raise MalformedMessage("malformed GS2 channel binding flag")
    authzid: str | None = None
    if authzid_field:
        if not authzid_field.startswith("a="):
            raise MalformedMessage("malformed GS2 authzid")
        authzid = parse_saslname(authzid_field[2:], "authzid")
    raw = text[: len(text) - len(rest)]
    return Gs2Header(flag, cb_name, authzid, raw), rest
