"""Generates contacts-train.jsonl and contacts-test.jsonl for json-extraction.yaml (deterministic).

The test split uses first names, surnames, companies, cities and sentence shapes that never
occur in train, so its score says whether the model learned the extraction, not the examples.
Run from anywhere: python manifests/examples/data/make_contacts.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = ("Extract the contact from the text as JSON with the keys name, company, role, email, phone and city "
               "(null when the text does not say). Reply with the JSON only.\nText: ")
SPLITS = {
    "train": {
        "first": ["Maria", "Jonas", "Aisha", "Tomasz", "Keiko", "Liam", "Sofia", "Mateo", "Priya", "Lars", "Chen", "Olga",
                  "Ahmed", "Emma", "Diego", "Ingrid", "Ravi", "Chloe", "Nikolai", "Fatima"],
        "last": ["Keller", "Novak", "Okafor", "Lindqvist", "Tanaka", "Murphy", "Rossi", "Garcia", "Sharma", "Berg",
                 "Wang", "Petrova", "Haddad", "Dubois", "Silva", "Jensen"],
        "company": ["Northwind Logistics", "Bluepeak Analytics", "Harbor Foods", "Cobalt Robotics", "Greenfield Energy",
                    "Atlas Insurance", "Lumen Health", "Redwood Media"],
        "role": ["procurement lead", "head of sales", "data engineer", "operations manager", "account executive",
                 "chief of staff", "product designer", "finance director"],
        "city": ["Berlin", "Lisbon", "Toronto", "Osaka", "Dublin", "Madrid", "Oslo", "Austin"],
        "templates": [
            "Hi, I'm {name}, {role} at {company} in {city}. Reach me at {email}{phone_sentence}.",
            "{name} ({role}, {company}) - based in {city}. Email: {email}{phone_list}",
            "Please loop in {name} from {company}; they are our {role} in {city}. Contact: {email}{phone_or}.",
            "New lead: {company}, {city}. Person: {name}, {role}. {email}{phone_list}",
        ],
    },
    "test": {
        "first": ["Henrik", "Amara", "Yusuf", "Elena", "Kofi", "Mei", "Bruno", "Saanvi", "Oskar", "Leila"],
        "last": ["Vasquez", "Nakamura", "Brennan", "Adeyemi", "Kowalski", "Fischer", "Moreau", "Iyer"],
        "company": ["Quarry Labs", "Silverline Freight", "Orchid Pharma", "Tidewater Bank", "Meridian Games"],
        "role": ["security architect", "supply chain analyst", "legal counsel", "hr partner", "site reliability lead"],
        "city": ["Nairobi", "Melbourne", "Warsaw", "Montreal", "Seoul"],
        "templates": [
            "Met {name} at the conference yesterday - {role} with {company}, lives in {city}. Card says {email}{phone_list}",
            "Forwarding this: '{company} ({city}) would like a demo.' Signed, {name}, {role}, {email}{phone_sentence}.",
            "Contact sheet -> name: {name} | org: {company} | title: {role} | location: {city} | mail: {email}{phone_pipe}",
        ],
    },
}


def phone(rng: random.Random) -> str:
    return f"+{rng.choice([1, 31, 44, 49, 61, 82])} {rng.randint(20, 99)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"


def make(split: str, n: int, seed: int) -> list[dict]:
    words, rng, rows, seen = SPLITS[split], random.Random(seed), [], set()
    while len(rows) < n:
        first, last = rng.choice(words["first"]), rng.choice(words["last"])
        company = rng.choice(words["company"])
        domain = company.lower().split()[0] + ".example"
        contact = {
            "name": f"{first} {last}", "company": company, "role": rng.choice(words["role"]),
            "email": f"{first.lower()}.{last.lower()}@{domain}", "phone": phone(rng) if rng.random() < 0.7 else None,
            "city": rng.choice(words["city"]),
        }
        if (contact["name"], company) in seen:
            continue
        seen.add((contact["name"], company))
        p = contact["phone"]
        text = rng.choice(words["templates"]).format(
            **contact,
            phone_sentence=f" or call {p}" if p else "", phone_list=f", phone {p}" if p else "",
            phone_or=f" / {p}" if p else "", phone_pipe=f" | tel: {p}" if p else "",
        )
        rows.append({"messages": [{"role": "user", "content": INSTRUCTION + text},
                                  {"role": "assistant", "content": json.dumps(contact)}]})
    return rows


if __name__ == "__main__":
    here = Path(__file__).parent
    for split, n, seed in (("train", 240, 1), ("test", 60, 2)):
        path = here / f"contacts-{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in make(split, n, seed)))
        print(f"wrote {len(make(split, n, seed))} examples to {path}")
