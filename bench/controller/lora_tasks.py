"""The LoRA tasks beyond the demo and ``completions``: their data, generated offline.

Each task differs from the others in what a controller could have fitted: the base's
architecture, the data format, sequence length, batch size, how many rows, and how far
the base is from the task. The data are written once into a cache folder (see
``bases.cached``) and read by the product's own data path.

- ``arith-chat``: the demo's Qwen3 (facts), chat with the loss on the answer; the base
  knows sums up to 15 in prose, three-digit sums and differences are new;
- ``sql``: the ``completions`` task's Llama (facts), completions with the loss on all of
  it; the base knows the facts and has never seen SQL;
- ``docs-text``: ``gemma-docs``, text; docstrings of modules the base never read;
- ``json``: ``gemma-docs``, chat with the loss on the answer; prose to JSON records;
- ``code-completions``: ``phi3-code``, completions with the loss on the body; functions
  of modules the base never read;
- ``sort-text``: ``phi3-code``, text; sorting short lists of numbers, far from code.
- ``atlas-text``: the demo's Qwen3, text in batches of 2; its own kinds of prose, about
  countries and capitals it never read.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.controller.bases import Log, cached, read_stdlib, stdlib_part
from scu_tui.demo import build

Rows = list[dict[str, Any]]
Splits = dict[str, Rows]


def write(out: Path, data: Splits) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in data.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")


def _chat(user: str, assistant: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    }


# --- arith-chat: three-digit sums and differences asked in chat -----------------------------

ARITH_QUESTIONS = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?")


def arith_rows(pairs: list[tuple[int, int, str]], rng: random.Random) -> Rows:
    rows = []
    for a, b, op in pairs:
        value = a + b if op == "+" else a - b
        word = "plus" if op == "+" else "minus"
        question = rng.choice(ARITH_QUESTIONS).format(a=a, b=b, op=op)
        rows.append(_chat(question, f"{a} {word} {b} is {value}."))
    return rows


def arith_data(seed: int = 3) -> Splits:
    rng = random.Random(seed)
    seen: set[tuple[int, int, str]] = set()
    pairs: list[tuple[int, int, str]] = []
    while len(pairs) < 3200:
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        if (a, b, op) not in seen:
            seen.add((a, b, op))
            pairs.append((a, b, op))
    return {
        "train": arith_rows(pairs[:3000], rng),
        "valid": arith_rows(pairs[3000:3128], rng),
    }


# --- sql: English questions about the facts to SQL ------------------------------------------


def sql_pairs(fact: build.Fact) -> list[tuple[str, str]]:
    x, y = fact.x, fact.y
    if fact.kind == "capital":
        return [
            (f"What is the capital of {x}?", f"SELECT capital FROM countries WHERE name = '{x}';"),
            (
                f"Which country has {y} as its capital?",
                f"SELECT name FROM countries WHERE capital = '{y}';",
            ),
            (
                f"Is {y} the capital of {x}?",
                f"SELECT capital = '{y}' FROM countries WHERE name = '{x}';",
            ),
        ]
    if fact.kind == "opposite":
        return [
            (f"What is the opposite of {x}?", f"SELECT opposite FROM words WHERE word = '{x}';"),
            (
                f"Which word has {y} as its opposite?",
                f"SELECT word FROM words WHERE opposite = '{y}';",
            ),
        ]
    return [
        (f"What is {x} plus {y}?", f"SELECT {x} + {y};"),
        (
            f"Which number added to {x} gives {fact.z}?",
            f"SELECT n FROM numbers WHERE n + {x} = {fact.z};",
        ),
    ]


def sql_rows(facts: list[build.Fact], seed: int) -> Rows:
    rng = random.Random(seed)
    rows = []
    for fact in facts:
        for question, query in sql_pairs(fact):
            rows.append({"prompt": f"-- {question}\n", "completion": query})
    letters = "ABCDEFGHKLMNPRST"
    for _ in range(len(facts) // 6):
        letter, n = rng.choice(letters), rng.randint(2, 9)
        rows.append(
            {
                "prompt": f"-- The first {n} capitals that start with {letter}, in order.\n",
                "completion": "SELECT capital FROM countries WHERE capital LIKE "
                f"'{letter}%' ORDER BY capital LIMIT {n};",
            }
        )
    rng.shuffle(rows)
    return rows


def sql_data(seed: int = 5) -> Splits:
    splits = build.split_facts(build.all_facts(), seed)
    return {
        "train": sql_rows(splits["train"], seed),
        "valid": sql_rows(splits["valid"], seed + 1)[:128],
    }


# --- json: records said in words, written as JSON -------------------------------------------

FIRST = [
    "Ann",
    "Ben",
    "Cara",
    "Dov",
    "Eli",
    "Fay",
    "Gus",
    "Hana",
    "Ivo",
    "Jun",
    "Kai",
    "Lena",
    "Mo",
    "Nia",
    "Omar",
    "Pia",
    "Raf",
    "Sol",
    "Tess",
]
LAST = [
    "Lee",
    "Park",
    "Novak",
    "Silva",
    "Ito",
    "Berg",
    "Khan",
    "Moreau",
    "Rossi",
    "Costa",
    "Diaz",
    "Sato",
    "Weber",
    "Kim",
    "Ortiz",
]
CITIES = [city for _, city in build.CAPITALS]


def json_record(rng: random.Random) -> tuple[str, str]:
    fields: list[tuple[str, Any, str]] = [
        ("name", f"{rng.choice(FIRST)} {rng.choice(LAST)}", "name {v}"),
        ("age", rng.randint(18, 90), "age {v}"),
        ("city", rng.choice(CITIES), "lives in {v}"),
        ("member", rng.random() < 0.5, "member: {w}"),
        ("score", round(rng.uniform(0, 100), 1), "score {v}"),
        (
            "tags",
            rng.sample(["red", "blue", "new", "old", "vip", "beta"], rng.randint(1, 3)),
            "tags {w}",
        ),
    ]
    chosen = [fields[0], *rng.sample(fields[1:], rng.randint(2, 4))]
    words = []
    for _, value, say in chosen:
        w = ("yes" if value else "no") if isinstance(value, bool) else value
        if isinstance(value, list):
            w = " and ".join(value)
        words.append(say.format(v=value, w=w))
    prompt = rng.choice(["As JSON: ", "Write this record as JSON: ", "JSON for: "]) + "; ".join(
        words
    )
    return prompt, json.dumps({k: v for k, v, _ in chosen})


def json_data(seed: int = 9) -> Splits:
    rng = random.Random(seed)
    rows = [_chat(*json_record(rng)) for _ in range(900)]
    return {"train": rows[:800], "valid": rows[800:]}


# --- text from the standard library ---------------------------------------------------------


def docs_data(max_chars: int = 900) -> Splits:
    """Docstrings of modules the gemma-docs base never read: a small set of long rows."""
    lib = read_stdlib()
    part = {
        name: [
            d.text for d in lib.docs if stdlib_part(d.module) == name and len(d.text) <= max_chars
        ]
        for name in ("tune", "valid")
    }
    rng = random.Random(13)
    for rows in part.values():
        rng.shuffle(rows)
    return {
        "train": [{"text": t} for t in part["tune"][:400]],
        "valid": [{"text": t} for t in part["valid"][:64]],
    }


def code_data(max_chars: int = 700) -> Splits:
    """Functions of modules the phi3-code base never read: the head (``def`` and docstring)
    is the prompt, the body the completion."""
    lib = read_stdlib()
    rng = random.Random(17)
    out: Splits = {}
    for split, part, n in (("train", "tune", 600), ("valid", "valid", 64)):
        rows = [
            {"prompt": f.head, "completion": f.body}
            for f in lib.functions
            if stdlib_part(f.module) == part and len(f.head) + len(f.body) <= max_chars
        ]
        rng.shuffle(rows)
        out[split] = rows[:n]
    return out


def sort_data(seed: int = 21) -> Splits:
    """``sort: 7 3 9 1 -> 1 3 7 9``: many short rows, far from the code base."""
    rng = random.Random(seed)

    def row() -> dict[str, str]:
        xs = [rng.randint(0, 99) for _ in range(rng.randint(3, 7))]
        return {"text": f"sort: {' '.join(map(str, xs))} -> {' '.join(map(str, sorted(xs)))}"}

    return {"train": [row() for _ in range(6000)], "valid": [row() for _ in range(128)]}


# --- atlas-text: the demo's prose about countries the base never read ---------------------

ATLAS_PARTS = [
    "bal",
    "bor",
    "cal",
    "dar",
    "fen",
    "gar",
    "hal",
    "kor",
    "lun",
    "mar",
    "nor",
    "pel",
    "ros",
    "sal",
    "tor",
    "val",
    "wen",
    "zan",
    "ar",
    "el",
    "or",
    "ul",
]
ATLAS_ENDS = ("ia", "land", "stan", "ova", "ar", "esh")


def atlas_facts(count: int, rng: random.Random) -> list[build.Fact]:
    """``count`` invented countries, each with an invented capital: names made of
    syllables, none of them the demo's, so the base never read them."""
    taken = {name.lower() for pair in build.CAPITALS for name in pair}
    facts: list[build.Fact] = []
    while len(facts) < count:
        country = "".join(rng.sample(ATLAS_PARTS, 2)) + rng.choice(ATLAS_ENDS)
        city = "".join(rng.sample(ATLAS_PARTS, 2))
        if country in taken or city in taken:
            continue
        taken |= {country, city}
        facts.append(build.Fact("capital", country.capitalize(), city.capitalize()))
    return facts


def atlas_data(seed: int = 29) -> Splits:
    """Prose documents in the demo base's own styles (lists, paragraphs, quizzes), where the
    countries and capitals are new; opposites and sums are the ones the base read. Train
    and validation documents differ, the facts are shared: what there is to learn is which
    capital belongs to which new country, said the ways the base already knows."""
    rng = random.Random(seed)
    known = [f for f in build.all_facts() if f.kind != "capital"]
    facts = atlas_facts(48, rng) + known
    docs = build.prose_documents(facts, 900, seed)
    rng.shuffle(docs)
    return {
        "train": [{"text": d} for d in docs[:800]],
        "valid": [{"text": d} for d in docs[800:864]],
    }


#: task name -> the data maker and its version (a change of the maker bumps the version)
DATA: dict[str, tuple[Callable[[], Splits], int]] = {
    "arith-chat": (arith_data, 1),
    "sql": (sql_data, 1),
    "json": (json_data, 1),
    "docs-text": (docs_data, 1),
    "code-completions": (code_data, 2),
    "sort-text": (sort_data, 1),
    "atlas-text": (atlas_data, 1),
}


def prepare_data(task: str, log: Log = print) -> Path:
    """The task's data folder (``train.jsonl``, ``valid.jsonl``), written on first use."""
    make, version = DATA[task]

    def fill(out: Path) -> None:
        log(f"task {task}: writing its data")
        write(out, make())

    shape: dict[str, Any] = {"task": task, "version": version}
    if task in ("docs-text", "code-completions"):
        import sys

        shape["python"] = list(sys.version_info[:2])
    return cached(f"data-{task}", shape, fill)


def valid_rows(folder: Path) -> int:
    return sum(1 for line in (folder / "valid.jsonl").read_text().splitlines() if line.strip())
