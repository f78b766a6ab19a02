"""Splitting texts into sentences and clauses, and which pieces may be stored."""

from __future__ import annotations

import random

import pytest

from proxy.core.segments import (
    compile_patterns,
    is_ssml,
    parse_mode,
    parts,
    split,
    storable,
)

SENTENCES = [
    # es
    (
        "Bienvenido al Hotel Miramar. Su habitación está lista. El desayuno es de siete a diez.",
        ["Bienvenido al Hotel Miramar. ", "Su habitación está lista. ",
         "El desayuno es de siete a diez."],
    ),
    (
        "¿Desea reservar una mesa? ¡Con mucho gusto le ayudo! Dígame la hora, por favor.",
        ["¿Desea reservar una mesa? ", "¡Con mucho gusto le ayudo! ",
         "Dígame la hora, por favor."],
    ),
    (
        "El Sr. García y la Dra. López le esperan en recepción. Gracias por su paciencia.",
        ["El Sr. García y la Dra. López le esperan en recepción. ",
         "Gracias por su paciencia."],
    ),
    (
        "Hay opciones, p. ej. la suite junior. También tenemos habitaciones dobles.",
        ["Hay opciones, p. ej. la suite junior. ", "También tenemos habitaciones dobles."],
    ),
    (
        "La cena cuesta 1.200 pesos y empieza a las 10:30 en punto. Le esperamos allí mismo.",
        ["La cena cuesta 1.200 pesos y empieza a las 10:30 en punto. ",
         "Le esperamos allí mismo."],
    ),
    (
        "El check-out es a las 12 p.m. Puede dejar su equipaje en consigna sin coste alguno.",
        ["El check-out es a las 12 p.m. ",
         "Puede dejar su equipaje en consigna sin coste alguno."],
    ),
    (
        "Tenemos piscina, gimnasio, spa, etc. Todo incluido en su tarifa de hoy.",
        ["Tenemos piscina, gimnasio, spa, etc. ", "Todo incluido en su tarifa de hoy."],
    ),
    (
        "Ella dijo «Todo perfecto. Volveremos.» y se fue contenta. Fue un placer atenderla.",
        ["Ella dijo «Todo perfecto. Volveremos.» y se fue contenta. ",
         "Fue un placer atenderla."],
    ),
    (
        "Mi nombre es Ana... y estaré encantada de ayudarle hoy. ¿En qué puedo servirle?",
        ["Mi nombre es Ana... y estaré encantada de ayudarle hoy. ", "¿En qué puedo servirle?"],
    ),
    # en
    (
        "Welcome to Hotel Miramar. Your room is ready. Breakfast is served from seven to ten.",
        ["Welcome to Hotel Miramar. ", "Your room is ready. ",
         "Breakfast is served from seven to ten."],
    ),
    (
        "Mr. Smith and Dr. Jones will meet you at 10:30 a.m. in the lobby. Enjoy your stay!",
        ["Mr. Smith and Dr. Jones will meet you at 10:30 a.m. in the lobby. ",
         "Enjoy your stay!"],
    ),
    (
        "The spa costs 3.5 dollars per minute, e.g. a massage. We also have a gym downstairs.",
        ["The spa costs 3.5 dollars per minute, e.g. a massage. ",
         "We also have a gym downstairs."],
    ),
    (
        "Visit www.hotel-miramar.com/rooms?id=3. Our team will confirm your booking soon.",
        ["Visit www.hotel-miramar.com/rooms?id=3. ",
         "Our team will confirm your booking soon."],
    ),
    (
        "Write to bookings@hotel.example.com. We answer every message within the hour.",
        ["Write to bookings@hotel.example.com. ",
         "We answer every message within the hour."],
    ),
    (
        'He said "The view is great. Really." and smiled. We were happy to hear that.',
        ['He said "The view is great. Really." and smiled. ', "We were happy to hear that."],
    ),
    (
        "The novel by J. K. Rowling is in the library. Ask the front desk for it anytime.",
        ["The novel by J. K. Rowling is in the library. ",
         "Ask the front desk for it anytime."],
    ),
    (
        "Checkout is at noon. Late checkout is available on request, though.",
        ["Checkout is at noon. ", "Late checkout is available on request, though."],
    ),
    # fr
    (
        "Bienvenue à l'Hôtel Miramar. Votre chambre est prête. Le petit-déjeuner est servi.",
        ["Bienvenue à l'Hôtel Miramar. ", "Votre chambre est prête. ",
         "Le petit-déjeuner est servi."],
    ),
    (
        "Mme Dubois et M. Martin vous attendent. Voulez-vous un taxi ? Je peux l'appeler.",
        ["Mme Dubois et M. Martin vous attendent. ", "Voulez-vous un taxi ? ",
         "Je peux l'appeler."],
    ),
    (
        "Nous avons des options, p. ex. la suite. Le prix est de 1.200 euros la nuit.",
        ["Nous avons des options, p. ex. la suite. ", "Le prix est de 1.200 euros la nuit."],
    ),
    (
        "Il a dit « Parfait. Merci. » en partant. Nous vous souhaitons un bon séjour.",
        ["Il a dit « Parfait. Merci. » en partant. ", "Nous vous souhaitons un bon séjour."],
    ),
    # de
    (
        "Willkommen im Hotel Miramar. Ihr Zimmer ist bereit. Das Frühstück gibt es ab sieben.",
        ["Willkommen im Hotel Miramar. ", "Ihr Zimmer ist bereit. ",
         "Das Frühstück gibt es ab sieben."],
    ),
    (
        "Hr. Müller und Fr. Schmidt warten z. B. an der Bar. Bitte folgen Sie mir jetzt.",
        ["Hr. Müller und Fr. Schmidt warten z. B. an der Bar. ", "Bitte folgen Sie mir jetzt."],
    ),
    (
        "Am 3. Mai ist das Restaurant geschlossen. Die Bar öffnet um 10:30 Uhr wie immer.",
        ["Am 3. Mai ist das Restaurant geschlossen. ",
         "Die Bar öffnet um 10:30 Uhr wie immer."],
    ),
    (
        "Er sagte: „Guten Tag. Willkommen.“ Dann ging er zum Aufzug. Wir helfen gern.",
        ["Er sagte: „Guten Tag. Willkommen.“ ", "Dann ging er zum Aufzug. ",
         "Wir helfen gern."],
    ),
    # it
    (
        "Benvenuto all'Hotel Miramar. La sua camera è pronta. La colazione è alle sette.",
        ["Benvenuto all'Hotel Miramar. ", "La sua camera è pronta. ",
         "La colazione è alle sette."],
    ),
    (
        "Il Sig. Rossi e la Dott.ssa Bianchi la aspettano. Abbiamo piscina, spa ecc. Grazie!",
        ["Il Sig. Rossi e la Dott.ssa Bianchi la aspettano. ",
         "Abbiamo piscina, spa ecc. Grazie!"],
    ),
    (
        "Posso aiutarla? Certo, la cena costa 3,5 euro a persona. Ci vediamo stasera.",
        ["Posso aiutarla? ", "Certo, la cena costa 3,5 euro a persona. ",
         "Ci vediamo stasera."],
    ),
    # pt
    (
        "Bem-vindo ao Hotel Miramar. O seu quarto está pronto. O café da manhã é às sete.",
        ["Bem-vindo ao Hotel Miramar. ", "O seu quarto está pronto. ",
         "O café da manhã é às sete."],
    ),
    (
        "O Sr. Silva e a Dra. Costa estão na recepção. Posso ajudar em mais alguma coisa?",
        ["O Sr. Silva e a Dra. Costa estão na recepção. ",
         "Posso ajudar em mais alguma coisa?"],
    ),
    (
        "Temos várias opções, p. ex. o quarto duplo. Obrigado pela sua preferência.",
        ["Temos várias opções, p. ex. o quarto duplo. ", "Obrigado pela sua preferência."],
    ),
    # CJK
    ("欢迎光临。您的房间已经准备好了！需要帮助吗？", ["欢迎光临。", "您的房间已经准备好了！", "需要帮助吗？"]),
    ("ようこそ。お部屋の準備ができました。", ["ようこそ。", "お部屋の準備ができました。"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "pieces"), SENTENCES)
def test_sentences(text: str, pieces: list[str]) -> None:
    assert list(split(text, "sentence")) == pieces
    assert "".join(pieces) == text


CLAUSES = [
    (
        "Buenas tardes, bienvenido al hotel; su habitación está en la tercera planta: "
        "el ascensor está a la izquierda — que tenga una feliz estancia.",
        ["Buenas tardes, ", "bienvenido al hotel; ", "su habitación está en la tercera planta: ",
         "el ascensor está a la izquierda — ", "que tenga una feliz estancia."],
    ),
    (
        "Good evening, and welcome to the hotel; your room is on the third floor.",
        ["Good evening, ", "and welcome to the hotel; ", "your room is on the third floor."],
    ),
    # tiny clauses join the next one; the last tiny one joins the previous.
    (
        "Sí, claro, con mucho gusto le reservo la mesa, gracias.",
        ["Sí, claro, con mucho gusto le reservo la mesa, gracias."],
    ),
    (
        "We have towels, soap, gel, and a hairdryer in every bathroom, of course.",
        ["We have towels, ", "soap, gel, and a hairdryer in every bathroom, of course."],
    ),
    # numbers and times keep their inner commas and colons
    (
        "The total is 1,200 dollars at 10:30 tonight, payable at the front desk.",
        ["The total is 1,200 dollars at 10:30 tonight, ", "payable at the front desk."],
    ),
    (
        'The sign says "Quiet, please; guests sleeping" all night, so please be silent.',
        ['The sign says "Quiet, please; guests sleeping" all night, ', "so please be silent."],
    ),
    (
        "Bonjour, bienvenue à l'hôtel; votre chambre est au deuxième étage.",
        ["Bonjour, bienvenue à l'hôtel; ", "votre chambre est au deuxième étage."],
    ),
    (
        "Guten Abend, willkommen im Hotel; Ihr Zimmer liegt im dritten Stock.",
        ["Guten Abend, ", "willkommen im Hotel; ", "Ihr Zimmer liegt im dritten Stock."],
    ),
    (
        "Buonasera, benvenuto in albergo; la sua camera è al terzo piano.",
        ["Buonasera, benvenuto in albergo; ", "la sua camera è al terzo piano."],
    ),
    (
        "Boa noite, bem-vindo ao hotel; o seu quarto fica no terceiro andar.",
        ["Boa noite, bem-vindo ao hotel; ", "o seu quarto fica no terceiro andar."],
    ),
    ("您好，欢迎光临本酒店；您的房间在三楼。", ["您好，欢迎光临本酒店；", "您的房间在三楼。"]),
    (
        "Escríbanos a reservas@hotel.es, o visite https://hotel.example/a,b;c hoy mismo.",
        ["Escríbanos a reservas@hotel.es, ", "o visite https://hotel.example/a,b;c hoy mismo."],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "pieces"), CLAUSES)
def test_clauses(text: str, pieces: list[str]) -> None:
    assert list(split(text, "clause")) == pieces
    assert "".join(pieces) == text


def test_sentence_mode_keeps_clauses_together() -> None:
    text = "Good evening, and welcome to the hotel; your room is on the third floor."
    assert split(text, "sentence") == (text,)


@pytest.mark.parametrize(
    "text",
    [
        "<speak>Hello there. <break time='1s'/> Welcome to the hotel.</speak>",
        "Hello there. <break time='500ms'/> Welcome to the hotel, dear guest.",
        "  <speak><p>Una frase. Otra frase.</p></speak>",
    ],
)
def test_ssml_is_never_split(text: str) -> None:
    assert is_ssml(text)
    assert split(text, "sentence") == (text,) and split(text, "clause") == (text,)


def test_off_empty_and_single() -> None:
    text = "Welcome to the hotel. Your room is ready."
    assert split(text, "off") == (text,)
    assert split("", "sentence") == ("",)
    assert split("Hello.", "sentence") == ("Hello.",)
    assert not is_ssml("3 < 5 and 7 > 2, of course.")


def test_surrounding_whitespace_stays_with_the_pieces() -> None:
    text = "  Welcome to Hotel Miramar.\n\nYour room is ready for you.  "
    pieces = split(text, "sentence")
    assert pieces == ("  Welcome to Hotel Miramar.\n\n", "Your room is ready for you.  ")


def test_pieces_always_concatenate_to_the_text() -> None:
    rng = random.Random(18)
    alphabet = [*list('abc XYZ. ,;:!?¿¡…«»"“”„()—-10:3.5@w/é。、！？\n'), "www.", "Sr. ", "etc. "]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        for mode in ("sentence", "clause"):
            pieces = split(text, mode)  # type: ignore[arg-type]
            assert "".join(pieces) == text
            assert all(pieces) or pieces == ("",)


def test_modes_parse() -> None:
    assert parse_mode("Sentence ") == "sentence" and parse_mode("clause") == "clause"
    assert parse_mode("off") == "off"
    assert parse_mode("words") is None and parse_mode(None) is None and parse_mode("") is None


@pytest.mark.parametrize(
    "piece",
    [
        "Your room 214 is ready. ",
        "Su habitación es la ２１４. ",
        "The total is $45. ",
        "El total son 45 €. ",
        "Le total est de quarante EUR. ",
        "Write to ana@hotel.example. ",
        "Visit www.hotel.example today. ",
        "See https://hotel.example/x for details. ",
    ],
)
def test_one_off_pieces_are_not_stored(piece: str) -> None:
    assert not storable(piece)


@pytest.mark.parametrize(
    "piece",
    [
        "Welcome to Hotel Miramar. ",
        "Breakfast is served from seven to ten.",
        "El desayuno se sirve de siete a diez.",
        "欢迎光临。",
    ],
)
def test_fixed_pieces_are_stored(piece: str) -> None:
    assert storable(piece)


def test_no_cache_patterns() -> None:
    patterns = compile_patterns([r"\bmr\.? \w+", "confirmation code"])
    assert not storable("Hello Mr. Smith, how are you?", patterns)
    assert not storable("Your CONFIRMATION CODE is ready.", patterns)
    assert storable("Hello, how are you?", patterns)
    with pytest.raises(ValueError, match=r"segment_no_cache_patterns.*'\('"):
        compile_patterns(["("])


def test_parts_keep_missing_pieces_apart_or_in_runs() -> None:
    missing = [False, True, True, False, True]
    assert parts(missing, "pieces") == [(0,), (1,), (2,), (3,), (4,)]
    assert parts(missing, "runs") == [(0,), (1, 2), (3,), (4,)]
    assert parts([True, True, True], "runs") == [(0, 1, 2)]
    assert parts([], "runs") == []
