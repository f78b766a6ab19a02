"""The pure parts of refusing bad input: body codings, path checks, log escaping."""

from __future__ import annotations

import gzip
import zlib

import pytest

from proxy.observability.access_log import printable
from proxy.request.body import BodyRefused, content_codings, decode
from proxy.request.upstream import UnsafePath, check_path, names_admin


def test_codings_are_listed_in_the_order_applied_without_identity() -> None:
    assert content_codings(["gzip"]) == ["gzip"]
    assert content_codings(["identity, Deflate", " x-gzip "]) == ["deflate", "x-gzip"]
    assert content_codings(["identity", ""]) == []


@pytest.mark.parametrize("value", ["br", "zstd", "compress", "gzip, br", "gzip, " * 5])
def test_codings_the_proxy_cannot_decode_are_a_415(value: str) -> None:
    with pytest.raises(BodyRefused) as refused:
        content_codings([value])
    assert refused.value.response.status == 415
    assert refused.value.response.headers["Accept-Encoding"] == "gzip, deflate"


def test_decode_undoes_gzip_members_and_both_deflate_forms() -> None:
    text = b"Bienvenido al hotel " * 50
    assert decode(gzip.compress(text), "gzip", 10_000) == text
    assert decode(gzip.compress(text[:7]) + gzip.compress(text[7:]), "x-gzip", 10_000) == text
    assert decode(zlib.compress(text), "deflate", 10_000) == text
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode(raw.compress(text) + raw.flush(), "deflate", 10_000) == text
    assert decode(b"", "gzip", 10) == b""


def test_decode_stops_at_the_limit() -> None:
    bomb = gzip.compress(bytes(10_000_000))
    with pytest.raises(BodyRefused) as refused:
        decode(bomb, "gzip", 1000)
    assert refused.value.response.status == 413
    assert decode(gzip.compress(bytes(1000)), "gzip", 1000) == bytes(1000)  # at it: fine


@pytest.mark.parametrize(
    "body",
    [b"plain", gzip.compress(b"abc")[:-3], zlib.compress(b"abc") + b"junk"],
)
def test_decode_refuses_what_is_not_coded(body: bytes) -> None:
    coding = "deflate" if body.startswith(b"x") else "gzip"
    with pytest.raises(BodyRefused) as refused:
        decode(body, coding, 1000)
    assert refused.value.response.status == 400


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/ADMIN/audio-cache/stats",
        "/admin;x/audio-cache",
        "//admin/x",
        "/./admin",
        "/v1/../admin/x",
        "/%61dmin/x",
        "/%2561dmin",
        "/admin%2Fx",
        "\\admin\\x",
        "/ admin /x",
    ],
)
def test_every_spelling_of_admin_is_a_404(path: str) -> None:
    with pytest.raises(UnsafePath) as refused:
        check_path(path)
    assert refused.value.status == 404


@pytest.mark.parametrize("path", ["/administrator", "/v1/admin", "/x/admin/y", "/admins"])
def test_paths_that_merely_mention_admin_are_not_it(path: str) -> None:
    assert not names_admin(path)
    check_path(path)


@pytest.mark.parametrize(
    "path",
    ["/a%00", "/a%0a", "/a%0D", "/a%1f", "/a%7f", "/a%250a", "/a\x01", "/a\u00e9", "/a\udc80"],
)
def test_control_characters_and_raw_bytes_are_a_400(path: str) -> None:
    with pytest.raises(UnsafePath) as refused:
        check_path(path)
    assert refused.value.status == 400


def test_printable_escapes_what_could_forge_a_line_or_a_field() -> None:
    assert printable("/v1/audio/speech") == "/v1/audio/speech"
    assert printable("/café") == "/café"
    assert printable("/a\nGET /b 200") == "/a%0AGET%20/b%20200"
    assert printable("/a\r\u2028\x85\udcff") == "/a%0D%E2%80%A8%C2%85%ED%B3%BF"
