"""Route rules: which requests are speech, and where their text and sound parameters live.

Pure logic. A rule turns a request (method, path, query, headers, body) into a
``SpeechRequest`` or says why it cannot be cached. Anything no rule matches is passed
through to the upstream untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

from .json_audio import UNKNOWN_ENCODING, ExpectedAudio, JsonAudio
from .keys import DEFAULT_NORMALIZATION, normalization
from .media import base_type
from .policy import DEFAULT_REPLAY_HEADERS, never_replayed
from .request_json import BadJSON, load_object
from .segments import MODES as SEGMENT_MODES
from .segments import SegmentMode

Source = Literal["json", "query", "path", "header", "form", "body"]
SOURCES: tuple[Source, ...] = ("json", "query", "path", "header", "form", "body")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SURROGATE = re.compile("[\ud800-\udfff]")


class RuleError(ValueError):
    """A route rule in the configuration is malformed."""


class InvalidSpeechRequest(ValueError):
    """A request on a cacheable route is malformed; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class FieldRef:
    """Where one value lives in a request, written ``source:name`` (e.g. ``json:input``).

    A JSON name may be a dotted path into nested objects (``json:input.text``). ``body``
    alone is the whole request body as text (an SSML document).
    """

    source: Source
    name: str

    @classmethod
    def parse(cls, text: str) -> FieldRef:
        if text == "body":
            return cls("body", "")
        source, sep, name = text.partition(":")
        if not sep or not name or source not in SOURCES:
            raise RuleError(
                f"field reference {text!r} must be 'SOURCE:NAME' with SOURCE one of "
                + ", ".join(SOURCES)
            )
        return cls(source, name.lower() if source == "header" else name)

    def __str__(self) -> str:
        return "body" if self.source == "body" else f"{self.source}:{self.name}"

    def placed(self, document: Mapping[str, Any], value: Any) -> dict[str, Any]:
        """A copy of ``document`` (a request's JSON object, query or form) holding ``value``
        where this reference reads it: a dotted JSON name nests as a client's request does
        (``json:input.text`` is ``{"input": {"text": ...}}``). Raises ValueError naming the
        dotted part of the path that holds something other than an object."""
        out = dict(document)
        parts = self.name.split(".") if self.source == "json" else [self.name]
        parent = out
        for depth, part in enumerate(parts[:-1]):
            child = parent.get(part, {})
            if not isinstance(child, Mapping):
                raise ValueError(".".join(parts[: depth + 1]))
            parent[part] = child = dict(child)
            parent = child
        parent[parts[-1]] = value
        return out

    def holds(self, document: Mapping[str, Any]) -> bool:
        """Whether ``document`` has a value where this reference reads it."""
        value: Any = document
        for part in self.name.split(".") if self.source == "json" else [self.name]:
            if not isinstance(value, Mapping) or part not in value:
                return False
            value = value[part]
        return True


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    """A cacheable request, reduced to what determines its audio."""

    route: str
    text: str
    params: Mapping[str, Any]
    voice: str
    model: str
    # The route's text normalization, for the key (see proxy.core.keys.normalize_text).
    normalize: tuple[str, ...] = DEFAULT_NORMALIZATION
    # Asked for as speech events (OpenAI's stream_format "sse"): the same entry as the
    # plain request, answered in another form.
    sse: bool = False


# The values of a rule's ``sse`` field: the events, and the plain file by name.
SSE_VALUE = "sse"
PLAIN_VALUE = "audio"


@dataclass(frozen=True)
class RouteRule:
    """One cacheable endpoint of the upstream."""

    name: str
    method: str
    path: str
    text: FieldRef
    voice: FieldRef | None = None
    model: FieldRef | None = None
    # Fields known not to change the audio. Every other body and query field counts:
    # a wrong hit is far worse than a miss.
    ignore: frozenset[FieldRef] = frozenset()
    # Request headers that change the audio (most APIs have none).
    headers: tuple[str, ...] = ()
    # Field values that make an answer uncacheable.
    bypass: Mapping[FieldRef, frozenset[str]] = field(default_factory=dict)
    # The field that asks for the answer as speech events (value "sse") or as the file
    # ("audio"). Either value is left out of the key: both are one sound, one entry.
    sse: FieldRef | None = None
    # How the text is normalized for the key; only what leaves the sound unchanged.
    normalize: tuple[str, ...] = DEFAULT_NORMALIZATION
    # Upstream headers a hit replays (names, or prefixes ending in '*').
    replay_headers: tuple[str, ...] = DEFAULT_REPLAY_HEADERS
    # Media types this upstream uses for headerless PCM, e.g. application/octet-stream.
    pcm_types: frozenset[str] = frozenset()
    # Where the request holds SSML when it sends that instead of ``text`` (Google's
    # input.ssml). SSML is keyed whole, never normalized, and apart from the same
    # characters sent as text (which would be read out, tags and all).
    ssml: FieldRef | None = None
    # Where a JSON answer holds its base64 audio; such answers are validated by decoding it.
    json_audio: JsonAudio | None = None
    # Segment caching on this route (None: the tenant's or the cache's choice).
    segments: SegmentMode | None = None
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise RuleError(f"route {self.name!r}: path must start with '/'")
        try:
            object.__setattr__(self, "normalize", normalization(self.normalize))
        except ValueError as exc:
            raise RuleError(f"route {self.name!r}: {exc}") from None
        replay = tuple(dict.fromkeys(h.lower() for h in self.replay_headers))
        refused = [h for h in replay if never_replayed(h.rstrip("*"))]
        if refused:
            raise RuleError(
                f"route {self.name!r}: replay_headers {refused} are per caller or per call "
                "(cookies, request ids, timings, rate limits, balances...) and never replayed"
            )
        object.__setattr__(self, "replay_headers", replay)
        pcm = frozenset(base_type(t) for t in self.pcm_types)
        if not all(re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+-]+", t) for t in pcm):
            raise RuleError(f"route {self.name!r}: pcm_types must be media types like audio/pcm")
        object.__setattr__(self, "pcm_types", pcm)
        regex = ""
        last = 0
        for m in _PLACEHOLDER.finditer(self.path):
            regex += re.escape(self.path[last : m.start()]) + f"(?P<{m.group(1)}>[^/]+)"
            last = m.end()
        regex += re.escape(self.path[last:])
        object.__setattr__(self, "_pattern", re.compile(f"^{regex}$"))
        placeholders = set(_PLACEHOLDER.findall(self.path))
        for ref in (self.text, self.voice, self.model, self.ssml):
            if ref is not None and ref.source == "path" and ref.name not in placeholders:
                raise RuleError(f"route {self.name!r}: no {{{ref.name}}} in path {self.path!r}")
            if ref is not None and ref.source == "body" and ref is not self.text:
                raise RuleError(f"route {self.name!r}: only 'text' may be the whole body")
        if self.text.source == "body" and self.ssml is not None:
            raise RuleError(f"route {self.name!r}: a whole-body text has no 'ssml' field")

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """Path parameters when this rule serves ``method path``, else None."""
        if method != self.method and not (method == "HEAD" and self.method == "GET"):
            return None
        m = self._pattern.match(path)
        return m.groupdict() if m else None

    def describe(
        self,
        *,
        path_params: Mapping[str, str],
        query: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> SpeechRequest | None:
        """The speech request, or None when a bypass value says not to cache it.

        Raises InvalidSpeechRequest for malformed input.
        """
        fields: dict[str, Any] = {}
        for name, value in path_params.items():
            fields[f"path:{name}"] = value
        for qname, qvalue in _multi(parse_qsl(query, keep_blank_values=True)).items():
            fields[f"query:{qname}"] = qvalue
        for name in self.headers:
            said = _keyed_header(name, headers.get(name))
            if said is not None:
                fields[f"header:{name}"] = said
        if self.text.source == "body":
            fields["body"] = _body_text(body)
        elif self.method != "GET" and body:
            fields.update(_body_fields(body, headers.get("content-type", "")))
        _reject_surrogates(fields)

        for ref, values in self.bypass.items():
            if str(_lookup(fields, ref)) in values:
                return None

        sse = False
        if self.sse is not None and _lookup(fields, self.sse) in (SSE_VALUE, PLAIN_VALUE):
            sse = _take(fields, self.sse) == SSE_VALUE
        text_ref, normalize = self.text, self.normalize
        text = _take(fields, self.text)
        if text is None and self.ssml is not None:
            text = _take(fields, self.ssml)
            if text is not None:
                text_ref, normalize = self.ssml, ()
                # No request field is named without a source, so this cannot collide.
                fields["text_field"] = str(self.ssml)
        if not isinstance(text, str):
            problem = "is required" if text is None else "must be a string"
            if text is None and self.ssml is not None:
                problem += f" (or {self.ssml.name!r})"
            raise InvalidSpeechRequest(str(text_ref), f"{text_ref.name or 'body'!r} {problem}")
        if not text.strip():
            raise InvalidSpeechRequest(
                str(text_ref), f"{text_ref.name or 'body'!r} must not be empty"
            )
        for ref in self.ignore:
            _take(fields, ref)
        return SpeechRequest(
            route=self.name,
            text=text,
            params=fields,
            voice=_label(fields, self.voice),
            model=_label(fields, self.model),
            normalize=normalize,
            sse=sse,
        )

    def expected_audio(self, query: str, body: bytes) -> ExpectedAudio | None:
        """For a ``json_audio`` route, what the answer to this request must hold; None on
        other routes. The type field is read again from the request as sent upstream."""
        spec = self.json_audio
        if spec is None:
            return None
        value = None
        if spec.type_from is not None:
            ref = FieldRef.parse(spec.type_from)
            fields: dict[str, Any] = {}
            if ref.source == "query":
                fields.update(
                    (f"query:{k}", v) for k, v in parse_qsl(query, keep_blank_values=True)
                )
            elif ref.source == "json" and body:
                try:
                    document = load_object(body.decode("utf-8"))
                except (BadJSON, UnicodeDecodeError):
                    document = {}
                fields.update((f"json:{k}", v) for k, v in document.items())
            value = _lookup(fields, ref)
        return ExpectedAudio(spec.field, spec.media_type_for(value))


def _keyed_header(name: str, value: str | None) -> str | None:
    """A keyed header's value, or None where it says nothing: no ``Accept`` and
    ``Accept: */*`` ask for the same answer (RFC 9110 §12.5.1)."""
    if value is None:
        return None
    value = value.strip()
    if name == "accept" and value in ("", "*/*"):
        return None
    return value


def _label(fields: Mapping[str, Any], ref: FieldRef | None) -> str:
    value = _lookup(fields, ref) if ref is not None else None
    return value if isinstance(value, str) else ""


def _lookup(fields: Mapping[str, Any], ref: FieldRef) -> Any:
    """The value ``ref`` names among a request's fields, or None; JSON paths walk into
    nested objects (a top-level name holding a dot is taken as it is first)."""
    name = str(ref)
    if name in fields or ref.source != "json" or "." not in ref.name:
        return fields.get(name)
    top, *rest = ref.name.split(".")
    value = fields.get(f"json:{top}")
    for part in rest:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _take(fields: dict[str, Any], ref: FieldRef) -> Any:
    """Remove and return the value ``ref`` names; a nested one is taken out of copies of
    its parents, so the rest of them is still keyed."""
    name = str(ref)
    if name in fields or ref.source != "json" or "." not in ref.name:
        return fields.pop(name, None)
    top, *rest = ref.name.split(".")
    parent = fields.get(f"json:{top}")
    if not isinstance(parent, dict):
        return None
    root = parent = dict(parent)
    for part in rest[:-1]:
        child = parent.get(part)
        if not isinstance(child, dict):
            return None
        parent[part] = child = dict(child)
        parent = child
    if rest[-1] not in parent:
        return None
    value = parent.pop(rest[-1])
    fields[f"json:{top}"] = root
    return value


def _body_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSpeechRequest("body", "request body is not valid UTF-8") from exc


def _multi(pairs: Iterable[tuple[str, str]]) -> dict[str, str | list[str]]:
    out: dict[str, str | list[str]] = {}
    for name, value in pairs:
        old = out.get(name)
        if old is None:
            out[name] = value
        elif isinstance(old, list):
            old.append(value)
        else:
            out[name] = [old, value]
    return out


def _body_fields(body: bytes, content_type: str) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSpeechRequest("body", "request body is not valid UTF-8") from exc
    if "application/x-www-form-urlencoded" in content_type:
        return {f"form:{k}": v for k, v in _multi(parse_qsl(text, keep_blank_values=True)).items()}
    try:
        document = load_object(text)
    except BadJSON as exc:
        raise InvalidSpeechRequest(exc.field, exc.message) from exc
    return {f"json:{k}": v for k, v in document.items()}


def _reject_surrogates(fields: Mapping[str, Any]) -> None:
    """Refuse path, query, form and header values holding lone surrogates (aiohttp decodes
    undecodable header bytes that way), which no key can encode. JSON checks its own."""
    for name, value in fields.items():
        values = value if isinstance(value, list) else [value]
        if not name.startswith("json:") and any(
            isinstance(v, str) and _SURROGATE.search(v) for v in values
        ):
            raise InvalidSpeechRequest(name, f"{name!r} is not valid UTF-8 text")


def _refs(items: Iterable[str]) -> frozenset[FieldRef]:
    return frozenset(FieldRef.parse(i) for i in items)


# None of these APIs picks the audio format by Accept (the body or query does), and SDKs
# send different Accepts for the same request (the openai SDK application/octet-stream,
# curl */*): keying it would split one sound into an entry per client. An upstream that
# does negotiate by Accept says so with Vary, and such answers are stored only when the
# rule keys the header (headers: [accept]).
_NEGOTIATED: tuple[str, ...] = ()


def _rule(
    name: str,
    path: str,
    text: str,
    voice: str | None = None,
    model: str | None = None,
    *,
    method: str = "POST",
    headers: tuple[str, ...] = _NEGOTIATED,
    **more: Any,
) -> RouteRule:
    """A preset's rule, its field references written as a configured rule writes them."""
    return RouteRule(
        name=name,
        method=method,
        path=path,
        text=FieldRef.parse(text),
        voice=FieldRef.parse(voice) if voice else None,
        model=FieldRef.parse(model) if model else None,
        headers=headers,
        **more,
    )


def _openai() -> list[RouteRule]:
    return [
        _rule(
            "openai",
            "/v1/audio/speech",
            "json:input",
            "json:voice",
            "json:model",
            sse=FieldRef("json", "stream_format"),
        )
    ]


def _elevenlabs() -> list[RouteRule]:
    sound = ("json:text", "path:voice_id", "json:model_id")
    ignore = _refs(["query:enable_logging"])
    timestamps = JsonAudio(
        field="audio_base64",
        media_type="audio/mpeg",  # the documented default, mp3_44100_128
        type_from="query:output_format",
        types=_ELEVENLABS_FORMATS,
    )
    base = "/v1/text-to-speech/{voice_id}"
    return [
        _rule("elevenlabs", base, *sound, ignore=ignore),
        _rule("elevenlabs-stream", base + "/stream", *sound, ignore=ignore),
        _rule(
            "elevenlabs-timestamps",
            base + "/with-timestamps",
            *sound,
            ignore=ignore,
            json_audio=timestamps,
        ),
    ]


_ELEVENLABS_FORMATS = {
    "mp3_*": "audio/mpeg",
    "pcm_*": "audio/pcm",
    "ulaw_*": "audio/mulaw",
    "alaw_*": "audio/alaw",
    "opus_*": "audio/ogg",
}


def _get() -> list[RouteRule]:
    return [
        _rule(
            "marytts", "/process", "query:INPUT_TEXT", "query:VOICE", "query:LOCALE",
            method="GET",
        ),
        _rule("marytts-form", "/process", "form:INPUT_TEXT", "form:VOICE", "form:LOCALE"),
        _rule(
            "coqui", "/api/tts", "query:text", "query:speaker_id", "query:language_id",
            method="GET",
        ),
    ]  # fmt: skip


# Google's audioEncoding values. LINEAR16 (and, in practice, MULAW and ALAW) come with a
# WAV header; the raw types accept a header too, so only LINEAR16 is held to it.
_GOOGLE_ENCODINGS = {
    "LINEAR16": "audio/wav",
    "MP3": "audio/mpeg",
    "MP3_64_KBPS": "audio/mpeg",
    "OGG_OPUS": "audio/ogg",
    "MULAW": "audio/mulaw",
    "ALAW": "audio/alaw",
    "PCM": "audio/pcm",
    "M4A": "audio/mp4",
}


def _google() -> list[RouteRule]:
    common: dict[str, Any] = dict(
        ssml=FieldRef("json", "input.ssml"),
        # Google's API answers carry "Vary: Origin, X-Origin, Referer" (for CORS): keyed, so
        # those answers can be stored. Server-side clients send none of them.
        headers=("origin", "x-origin", "referer"),
        json_audio=JsonAudio(
            field="audioContent",
            type_from="json:audioConfig.audioEncoding",
            types=_GOOGLE_ENCODINGS,
        ),
    )
    sound = ("json:input.text", "json:voice.name", "json:voice.languageCode")
    return [
        _rule("google", "/v1/text:synthesize", *sound, **common),
        _rule("google-beta", "/v1beta1/text:synthesize", *sound, **common),
    ]


def _azure() -> list[RouteRule]:
    # The body is the SSML document; the voice, language and prosody are inside it, so it
    # is keyed whole and never normalized.
    return [
        _rule(
            "azure",
            "/cognitiveservices/v1",
            "body",
            headers=("x-microsoft-outputformat",),
            normalize=(),
        )
    ]


def _deepgram() -> list[RouteRule]:
    # model, encoding, container, sample_rate and bit_rate are query fields: all keyed.
    return [_rule("deepgram", "/v1/speak", "json:text", "query:model", "query:model")]


def _cartesia() -> list[RouteRule]:
    return [
        _rule(
            "cartesia",
            "/tts/bytes",
            "json:transcript",
            "json:voice.id",
            "json:model_id",
            headers=("cartesia-version",),
            # Raw PCM comes as application/octet-stream when output_format.container is raw.
            pcm_types=frozenset({"application/octet-stream"}),
        )
    ]


def _polly() -> list[RouteRule]:
    # Speech marks (OutputFormat json) are not audio: passed through.
    return [
        _rule(
            "polly",
            "/v1/speech",
            "json:Text",
            "json:VoiceId",
            "json:Engine",
            bypass={FieldRef("json", "OutputFormat"): frozenset({"json"})},
        )
    ]


PRESETS = {
    "openai": _openai,
    "elevenlabs": _elevenlabs,
    "get": _get,
    "google": _google,
    "azure": _azure,
    "deepgram": _deepgram,
    "cartesia": _cartesia,
    "polly": _polly,
}


def rule_from_mapping(raw: Mapping[str, Any]) -> RouteRule:
    """A rule from its YAML form; raises RuleError naming the bad field."""
    allowed = {
        "name", "method", "path", "text", "voice", "model", "ignore", "headers", "bypass",
        "normalize", "replay_headers", "pcm_types", "ssml", "json_audio", "segments",
    }  # fmt: skip
    unknown = set(raw) - allowed
    if unknown:
        raise RuleError(f"unknown route field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for required in ("name", "method", "path", "text"):
        if not isinstance(raw.get(required), str) or not raw[required]:
            raise RuleError(f"route field {required!r} is required and must be a string")
    bypass_raw = raw.get("bypass") or {}
    if not isinstance(bypass_raw, Mapping):
        raise RuleError("route field 'bypass' must map a field reference to a list of values")
    segments = raw.get("segments")
    if segments is not None and segments not in SEGMENT_MODES:
        raise RuleError(f"route field 'segments' must be one of {list(SEGMENT_MODES)}")
    steps = DEFAULT_NORMALIZATION
    if raw.get("normalize") is not None:
        try:
            steps = normalization(_strings(raw["normalize"], "normalize"))
        except ValueError as exc:
            raise RuleError(f"route field 'normalize': {exc}") from None
    return RouteRule(
        name=raw["name"],
        method=raw["method"].upper(),
        path=raw["path"],
        text=FieldRef.parse(raw["text"]),
        voice=FieldRef.parse(raw["voice"]) if raw.get("voice") else None,
        model=FieldRef.parse(raw["model"]) if raw.get("model") else None,
        ignore=_refs(_strings(raw.get("ignore"), "ignore")),
        headers=tuple(h.lower() for h in _strings(raw.get("headers"), "headers")),
        bypass={
            FieldRef.parse(k): frozenset(str(v) for v in _strings(vs, "bypass"))
            for k, vs in bypass_raw.items()
        },
        normalize=steps,
        replay_headers=DEFAULT_REPLAY_HEADERS
        + tuple(_strings(raw.get("replay_headers"), "replay_headers")),
        pcm_types=frozenset(_strings(raw.get("pcm_types"), "pcm_types")),
        ssml=FieldRef.parse(raw["ssml"]) if raw.get("ssml") else None,
        json_audio=_json_audio(raw.get("json_audio")),
        segments=segments,
    )


def _json_audio(raw: Any) -> JsonAudio | None:
    """``json_audio: {field, media_type, type_from, types}`` of a YAML rule."""
    if raw is None:
        return None
    allowed = {"field", "media_type", "type_from", "types"}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("field"), str) or not raw["field"]:
        raise RuleError("route field 'json_audio' must be a mapping with a 'field' string")
    unknown = set(raw) - allowed
    if unknown:
        raise RuleError(
            f"unknown json_audio field(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    types = raw.get("types") or {}
    if not isinstance(types, Mapping) or not all(isinstance(v, str) for v in types.values()):
        raise RuleError("json_audio 'types' must map request values to media types")
    type_from = raw.get("type_from")
    if type_from is not None and (
        not isinstance(type_from, str) or FieldRef.parse(type_from).source not in ("json", "query")
    ):
        raise RuleError("json_audio 'type_from' must be a json: or query: field reference")
    media_type = raw.get("media_type", UNKNOWN_ENCODING)
    if not isinstance(media_type, str):
        raise RuleError("json_audio 'media_type' must be a media type")
    return JsonAudio(
        field=raw["field"],
        media_type=base_type(media_type),
        type_from=type_from,
        types={str(k): base_type(v) for k, v in types.items()},
    )


def _strings(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise RuleError(f"route field {name!r} must be a list of strings")
    return [str(v) for v in value]


def build_rules(spec: Sequence[str | Mapping[str, Any]]) -> tuple[RouteRule, ...]:
    """Presets by name and custom rules, in order; first match wins."""
    rules: list[RouteRule] = []
    for item in spec:
        if isinstance(item, str):
            if item not in PRESETS:
                raise RuleError(f"unknown route preset {item!r}; presets: {sorted(PRESETS)}")
            rules.extend(PRESETS[item]())
        elif isinstance(item, Mapping):
            rules.append(rule_from_mapping(item))
        else:
            raise RuleError("each route is a preset name or a mapping")
    names = [r.name for r in rules]
    if len(names) != len(set(names)):
        raise RuleError(f"route names must be unique: {names}")
    return tuple(rules)


def find_rule(
    rules: Sequence[RouteRule], method: str, path: str
) -> tuple[RouteRule, dict[str, str]] | None:
    """The first rule serving ``method path`` and its path parameters."""
    for rule in rules:
        params = rule.match(method, path)
        if params is not None:
            return rule, params
    return None
