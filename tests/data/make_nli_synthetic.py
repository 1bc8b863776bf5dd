"""Writes nli_synthetic.csv: template NLI pairs written for ctrain's offline tests and CPU demo (CC0).

Each premise "<subject> <action> <place>." gets three hypotheses: an entailment (a more general
subject and action), a neutral one (an added, unverifiable detail) and a contradiction (an
incompatible action). Run: python tests/data/make_nli_synthetic.py
"""

import csv
import random
from pathlib import Path

PEOPLE = [
    ("A man", "A person"), ("A woman", "A person"), ("A boy", "A child"), ("A girl", "A child"),
    ("Two men", "Two people"), ("Three women", "Some people"), ("An old man", "A man"), ("A young woman", "A woman"),
    ("A chef", "A cook"), ("A teenager", "A young person"), ("A student", "A person"), ("Some friends", "Some people"),
]  # fmt: skip
# (specific action, general action, incompatible action, added detail)
ACTIONS = [
    ("playing a guitar", "playing an instrument", "sleeping in bed", "for a large crowd"),
    ("riding a bicycle", "riding something", "sitting on a sofa", "to work"),
    ("eating a sandwich", "eating food", "swimming in a lake", "for lunch"),
    ("reading a novel", "reading a book", "running a marathon", "written by a famous author"),
    ("painting a wall", "painting", "driving a truck", "for money"),
    ("cooking pasta", "making a meal", "climbing a mountain", "for a family dinner"),
    ("kicking a football", "playing with a ball", "typing on a laptop", "during a match"),
    ("drinking coffee", "having a drink", "skiing down a slope", "with lots of sugar"),
    ("washing a car", "cleaning a vehicle", "flying a plane", "before a trip"),
    ("singing a song", "making music", "silently reading", "at a wedding"),
    ("walking a dog", "outside with an animal", "asleep indoors", "after dinner"),
    ("planting flowers", "gardening", "playing a video game", "for the spring"),
    ("writing a letter", "writing", "dancing wildly", "to a friend"),
    ("fixing a bike", "repairing something", "taking a nap", "for a neighbour"),
    ("taking a photo", "using a camera", "swimming underwater", "of the sunset"),
]  # fmt: skip
PLACES = ["in the park", "on the street", "near the beach", "in a garden", "outside a house", "in the city", "by the river"]


def rows(seed: int = 0, premises: int = 300) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    combinations = [(p, a, place) for p in PEOPLE for a in ACTIONS for place in PLACES]
    out = []
    for (subject, general_subject), (action, general_action, incompatible, detail), place in rng.sample(combinations, premises):
        be = "is" if subject.startswith(("A ", "An ")) else "are"
        premise = f"{subject} {be} {action} {place}."
        out.append((premise, f"{general_subject} {be} {general_action}.", "entailment"))
        out.append((premise, f"{subject} {be} {action} {detail}.", "neutral"))
        out.append((premise, f"{subject} {be} {incompatible}.", "contradiction"))
    rng.shuffle(out)
    return out


if __name__ == "__main__":
    target = Path(__file__).with_name("nli_synthetic.csv")
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["premise", "hypothesis", "label"])
        writer.writerows(rows())
