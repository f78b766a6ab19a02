"""The Lua scripts as files: headed by what they take, loaded with the shared helpers, and
their errors' line numbers mapped back to the right file (pure)."""

from __future__ import annotations

from importlib import resources

from redis.exceptions import OutOfMemoryError, ResponseError

from proxy.store.lua import PRELUDE, read, source

SCRIPTS = sorted(
    p.name.removesuffix(".lua")
    for p in resources.files("proxy.store").joinpath("scripts").iterdir()
    if p.name.endswith(".lua")
)


def test_every_script_is_headed_by_what_it_takes() -> None:
    assert len(SCRIPTS) >= 10
    for name in SCRIPTS:
        head = [line for line in read(name).splitlines() if line.startswith("--")]
        text = "\n".join(head)
        assert "KEYS[1] - " in text, name
        if name != PRELUDE:
            assert "ARGV[1] - " in text and "Returns" in text, name


def test_a_script_with_the_helpers_runs_them_first_and_maps_lines_back() -> None:
    put = source("put", prelude=True)
    shared, own = read(PRELUDE), read("put")
    assert put.text == shared + own
    assert put.prelude_lines == shared.count("\n")
    assert put.where(1) == ("prelude.lua", 1)
    assert put.where(put.prelude_lines) == ("prelude.lua", put.prelude_lines)
    assert put.where(put.prelude_lines + 1) == ("put.lua", 1)
    # Every line of the joined text is the line of a file that says the same.
    joined = put.text.splitlines()
    for number, line in enumerate(joined, start=1):
        file, at = put.where(number)
        assert read(file.removesuffix(".lua")).splitlines()[at - 1] == line


def test_a_script_alone_keeps_its_own_numbers() -> None:
    touch = source("touch")
    assert touch.text == read("touch") and touch.prelude_lines == 0
    assert touch.where(7) == ("touch.lua", 7)


def test_an_error_names_its_file_and_line_and_keeps_its_class() -> None:
    put = source("put", prelude=True)
    line = put.prelude_lines + 9
    error = OutOfMemoryError(f"user_script:{line}: OOM command not allowed on @user_script:{line}.")
    located = put.located(error)
    assert type(located) is OutOfMemoryError
    assert str(located) == "put.lua:9: OOM command not allowed on @put.lua:9."
    assert str(put.located(ResponseError("user_script:3: boom"))) == "prelude.lua:3: boom"
    plain = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert put.located(plain) is plain
