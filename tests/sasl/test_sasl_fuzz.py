"""Whatever the client sends, a mechanism answers with a Step: never an exception.

Arbitrary bytes rarely get past the first parser, so a second pass builds messages from
the grammars' own characters, and a third feeds arbitrary client-finals after a valid
SCRAM client-first.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popbox.sasl.base import (
    Challenge,
    Failure,
    MechanismContext,
    NeedScramCredentials,
    ScramCredentials,
    Step,
)
from popbox.sasl.registry import CAPA_ORDER, create
from popbox.sasl.scram import derive_credentials

SALT = b"popbox-salt-0123"
CONTEXTS = [
    MechanismContext(hostname="mail.example.org", nonce="SNONCE"),
    MechanismContext(
        hostname="mail.example.org", nonce="SNONCE", channel_binding=("tls-exporter", b"k" * 32)
    ),
]
VERIFIERS = {
    "SCRAM-SHA-1": derive_credentials("SCRAM-SHA-1", "pencil", SALT, 4096),
    "SCRAM-SHA-256": derive_credentials("SCRAM-SHA-256", "pencil", SALT, 4096),
    "SCRAM-SHA-256-PLUS": derive_credentials("SCRAM-SHA-256-PLUS", "pencil", SALT, 4096),
}
# Characters the grammars care about, so generated messages reach the deeper parsers.
GRAMMAR = st.text(
    alphabet=st.sampled_from(list("npyacrmvsix=,\x00\x01 23CD-_./+AZaz09:@<>\u00e9\uff10\ud800")),
    max_size=60,
).map(lambda text: text.encode("utf-8", "surrogatepass"))
MESSAGES = st.one_of(st.binary(max_size=200), GRAMMAR)


def check_step(step: Step) -> None:
    assert isinstance(step, Step)
    if isinstance(step, Failure):
        assert step.reason.isascii()
        assert step.reason.isprintable()
        assert 0 < len(step.reason) <= 80


def drive(
    name: str, context: MechanismContext, initial: bytes | None, responses: list[bytes], known: bool
) -> None:
    mechanism = create(name, context)
    step = mechanism.start(initial)
    check_step(step)
    pending = list(responses)
    while True:
        if isinstance(step, NeedScramCredentials):
            found: ScramCredentials | None = VERIFIERS[name] if known else None
            step = mechanism.provide(found)
        elif isinstance(step, Challenge) and pending:
            step = mechanism.step(pending.pop(0))
        else:
            return
        check_step(step)


@pytest.mark.parametrize("name", CAPA_ORDER)
@settings(max_examples=200, deadline=None)
@given(
    context=st.sampled_from(CONTEXTS),
    initial=st.none() | MESSAGES,
    responses=st.lists(MESSAGES, max_size=4),
    known=st.booleans(),
)
def test_arbitrary_input_only_yields_steps(
    name: str,
    context: MechanismContext,
    initial: bytes | None,
    responses: list[bytes],
    known: bool,
) -> None:
    drive(name, context, initial, responses, known)


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])
@settings(max_examples=300, deadline=None)
@given(
    context=st.sampled_from(CONTEXTS),
    header=st.sampled_from([b"n,,", b"y,,", b"p=tls-exporter,,", b"n,a=user,"]),
    final=st.one_of(
        MESSAGES,
        st.builds(
            lambda c, rest: b"c=" + c + b",r=abcSNONCE" + rest,
            st.sampled_from([b"biws", b"eSws", b"", b"!"]),
            MESSAGES,
        ),
    ),
    known=st.booleans(),
)
def test_arbitrary_client_final_only_yields_steps(
    name: str, context: MechanismContext, header: bytes, final: bytes, known: bool
) -> None:
    drive(name, context, header + b"n=user,r=abc", [final], known)
