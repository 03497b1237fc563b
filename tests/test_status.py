"""The one status table: LMTP replies -> exit codes, and several recipients."""

import pytest

from mm_handler.status import (EX_DATAERR, EX_IOERR, EX_NOUSER, EX_OK, EX_OSERR, EX_TEMPFAIL,
                               EX_UNAVAILABLE, Outcome, combine, enhanced,
                               exit_for_reply, is_temporary)


@pytest.mark.parametrize("stage, reply, expected", [
    # 2xx: delivered
    ("rcpt", 250, EX_OK), ("rcpt", 251, EX_OK), ("dot", 250, EX_OK),
    ("greeting", 220, EX_OK), ("lhlo", 250, EX_OK), ("mail", 250, EX_OK),
    # 4xx: keep the mail
    ("greeting", 421, EX_TEMPFAIL), ("lhlo", 421, EX_TEMPFAIL),
    ("mail", 451, EX_TEMPFAIL), ("mail", 452, EX_TEMPFAIL),
    ("rcpt", 450, EX_TEMPFAIL), ("rcpt", 451, EX_TEMPFAIL), ("rcpt", 452, EX_TEMPFAIL),
    ("data", 451, EX_TEMPFAIL), ("dot", 451, EX_TEMPFAIL), ("dot", 452, EX_TEMPFAIL),
    ("dot", 421, EX_TEMPFAIL),
    # 550/551/553: no such list (or mailbox), whatever the stage
    ("rcpt", 550, EX_NOUSER), ("rcpt", 551, EX_NOUSER), ("rcpt", 553, EX_NOUSER),
    ("mail", 550, EX_NOUSER), ("mail", 553, EX_NOUSER),
    ("dot", 550, EX_NOUSER), ("dot", 553, EX_NOUSER),
    # 501 after the final dot: Mailman 3's "message has defects"
    ("dot", 501, EX_DATAERR),
    # every other 5xx: service unavailable
    ("rcpt", 501, EX_UNAVAILABLE), ("rcpt", 552, EX_UNAVAILABLE),
    ("rcpt", 554, EX_UNAVAILABLE), ("rcpt", 500, EX_UNAVAILABLE),
    ("greeting", 554, EX_UNAVAILABLE), ("lhlo", 500, EX_UNAVAILABLE),
    ("mail", 501, EX_UNAVAILABLE), ("mail", 552, EX_UNAVAILABLE),
    ("data", 503, EX_UNAVAILABLE), ("data", 554, EX_UNAVAILABLE),
    ("dot", 552, EX_UNAVAILABLE), ("dot", 554, EX_UNAVAILABLE),
    # anything else is garbled: keep the mail
    ("dot", 354, EX_TEMPFAIL), ("rcpt", 100, EX_TEMPFAIL), ("dot", 600, EX_TEMPFAIL),
    ("dot", 999, EX_TEMPFAIL), ("rcpt", 0, EX_TEMPFAIL), ("greeting", 354, EX_TEMPFAIL),
])
def test_exit_for_reply(stage, reply, expected):
    assert exit_for_reply(stage, reply) == expected


@pytest.mark.parametrize("codes, expected", [
    ([EX_OK], EX_OK),
    ([EX_OK, EX_OK, EX_OK], EX_OK),
    ([EX_OK, EX_NOUSER], EX_NOUSER),
    ([EX_NOUSER, EX_OK], EX_NOUSER),
    ([EX_OK, EX_TEMPFAIL], EX_TEMPFAIL),
    ([EX_NOUSER, EX_TEMPFAIL], EX_TEMPFAIL),          # a transient fault wins
    ([EX_TEMPFAIL, EX_DATAERR, EX_OK], EX_TEMPFAIL),
    ([EX_UNAVAILABLE, EX_NOUSER], EX_UNAVAILABLE),    # then the first permanent one
    ([EX_NOUSER, EX_UNAVAILABLE], EX_NOUSER),
    ([EX_OSERR, EX_OK], EX_TEMPFAIL),                 # 71 is temporary too
    ([EX_DATAERR, EX_DATAERR], EX_DATAERR),
])
def test_combine(codes, expected):
    assert combine(codes) == expected


def test_combine_takes_any_iterable():
    assert combine(iter([EX_OK, EX_TEMPFAIL])) == EX_TEMPFAIL


@pytest.mark.parametrize("code, status, temporary", [
    (EX_OK, "2.0.0", False),
    (EX_TEMPFAIL, "4.3.0", True),
    (EX_OSERR, "4.3.0", True),
    (EX_NOUSER, "5.1.1", False),
    (EX_DATAERR, "5.6.0", False),
    (EX_UNAVAILABLE, "5.3.0", False),
    (78, "5.3.5", False),
    (1, "5.3.0", False),        # unknown codes: the software-error entry
    (255, "5.3.0", False),
])
def test_enhanced_and_temporary(code, status, temporary):
    assert enhanced(code) == status
    assert is_temporary(code) is temporary


def test_the_codes_sendmail_retries_are_the_temporary_ones():
    # Sendmail keeps the message for 71, 74 and 75 (shared/docs, observed)
    assert [c for c in range(256) if is_temporary(c)] == [EX_OSERR, EX_IOERR,
                                                          EX_TEMPFAIL]


def test_outcome_fields():
    o = Outcome(EX_NOUSER, "no list", "550 5.1.1 no", "rcpt")
    assert (o.code, o.reason, o.reply, o.stage) == (67, "no list", "550 5.1.1 no", "rcpt")
    assert repr(o) == "Outcome(67, 'no list', '550 5.1.1 no', 'rcpt')"
    assert Outcome(EX_OK, "ok").reply == "" and Outcome(EX_OK, "ok").stage == ""
