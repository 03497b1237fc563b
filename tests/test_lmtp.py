"""lmtp.data_stream: CRLF, dot-stuffing and folding, wherever the chunks fall."""

import random

import pytest

from mm_handler.lmtp import LINE_LIMIT, data_stream


def whole(chunks, header=b""):
    return b"".join(data_stream(header, chunks))


@pytest.mark.parametrize("message,expected", [
    (b"", b".\r\n"),
    (b"a\n", b"a\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),                             # unterminated last line
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),               # CRLF stays CRLF
    (b".\n..\n.x\nx.\n", b"..\r\n...\r\n..x\r\nx.\r\n.\r\n"),
    (b"From me\n", b"From me\r\n.\r\n"),               # no From_ escaping
    (b"a\rb\n", b"a\rb\r\n.\r\n"),                     # bare CR passes
    (b"\xff\x00\n", b"\xff\x00\r\n.\r\n"),             # 8-bit and NUL untouched
    (b"x" * LINE_LIMIT + b"\n", b"x" * LINE_LIMIT + b"\r\n.\r\n"),
    (b"x" * (LINE_LIMIT + 1), b"x" * (LINE_LIMIT - 1) + b"!\r\nxx\r\n.\r\n"),
])
def test_examples(message, expected):
    assert whole([message]) == expected
    assert whole([message[i:i + 1] for i in range(len(message))]) == expected


def test_header_comes_first():
    assert whole([b"Subject: x\n\nbody\n"], b"X-H: 1") == \
        b"X-H: 1\r\nSubject: x\r\n\r\nbody\r\n.\r\n"


def reference(message):
    """The same transformation done on the whole message at once."""
    body = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if body.endswith(b"\r\n"):
        body = body[:-2]
    out = []
    for line in body.split(b"\r\n") if message else []:
        while len(line) > LINE_LIMIT:
            out.append(line[:LINE_LIMIT - 1] + b"!")
            line = line[LINE_LIMIT - 1:]
        out.append(line)
    return b"".join((b"." + l if l[:1] == b"." else l) + b"\r\n" for l in out) + b".\r\n"


def test_any_chunking_gives_the_whole_message_result():
    rng = random.Random(2026)
    pieces = [b"\n", b"\r\n", b".", b"x", b"\r\n.", b"From "]
    for _ in range(3000):
        message = b"".join(rng.choice(pieces + [b"a" * rng.randint(0, 2500)])
                           for _ in range(rng.randint(0, 12)))
        cuts = sorted(rng.sample(range(len(message) + 1),
                                 min(len(message) + 1, rng.randint(0, 6))))
        chunks = [message[a:b] for a, b in zip([0] + cuts, cuts + [len(message)])]
        out = whole(chunks)
        assert out == reference(message)
        assert max(map(len, out.split(b"\r\n"))) < 1000   # Mailman's limit
