"""Writes answer_format.jsonl: a small fixed-format task for `roma finetune`, written by the project.

Every assistant reply has exactly two lines, "Answer: ..." and "Confidence: high|medium|low", whatever the
question. A base model answers in free prose, so an adapter trained on this file changes its answers visibly
(notebooks and the README use it). HELD_OUT questions are not in the file: they show the format carrying over
to new questions.

    python -m roma_runtime.examples.answer_format      # rewrites answer_format.jsonl next to this file
"""

from __future__ import annotations

import json
from pathlib import Path

# (question, answer, confidence)
PAIRS = [
    ("What is the capital of France?", "Paris.", "high"),
    ("How many legs does a spider have?", "Eight.", "high"),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees Celsius.", "high"),
    ("Who wrote the play Hamlet?", "William Shakespeare.", "high"),
    ("What gas do plants take in from the air?", "Carbon dioxide.", "high"),
    ("What is the largest planet in the solar system?", "Jupiter.", "high"),
    ("How many days are there in a leap year?", "366.", "high"),
    ("What is the chemical symbol for gold?", "Au.", "high"),
    ("Which ocean lies between Africa and Australia?", "The Indian Ocean.", "high"),
    ("What is the square root of 81?", "9.", "high"),
    ("What language is mainly spoken in Brazil?", "Portuguese.", "high"),
    ("Which organ pumps blood through the body?", "The heart.", "high"),
    ("How many minutes are in two hours?", "120.", "high"),
    ("What colour do you get by mixing blue and yellow?", "Green.", "high"),
    ("What is the freezing point of water in Fahrenheit?", "32 degrees Fahrenheit.", "high"),
    ("Which planet is known as the Red Planet?", "Mars.", "high"),
    ("What is the longest river in South America?", "The Amazon.", "high"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci.", "high"),
    ("What is the main ingredient of guacamole?", "Avocado.", "high"),
    ("How many sides does a hexagon have?", "Six.", "high"),
    ("In which year did the first person walk on the Moon?", "1969.", "high"),
    ("What is the hardest natural material?", "Diamond.", "high"),
    ("Which metal is liquid at room temperature?", "Mercury.", "high"),
    ("What does a thermometer measure?", "Temperature.", "high"),
    ("How far is the Moon from the Earth on average?", "About 384,000 kilometres.", "medium"),
    ("How many people live in Tokyo?", "About 14 million in the city proper.", "medium"),
    ("How old is the universe?", "About 13.8 billion years.", "medium"),
    ("How many bones are in an adult human body?", "206.", "medium"),
    ("How tall is Mount Everest?", "About 8,849 metres.", "medium"),
    ("How many species of birds are there?", "Roughly 10,000 to 11,000.", "medium"),
    ("When were the pyramids of Giza built?", "Around 2600 to 2500 BC.", "medium"),
    ("How long does light from the Sun take to reach Earth?", "About eight minutes.", "medium"),
    ("What is the population of the world?", "About eight billion people.", "medium"),
    ("How deep is the deepest part of the ocean?", "About 11 kilometres.", "medium"),
    ("How many languages are spoken in the world today?", "About 7,000.", "medium"),
    ("How fast can a cheetah run?", "Up to about 110 kilometres per hour.", "medium"),
    ("Will it rain in London next Tuesday?", "Nobody can know that yet; check a forecast closer to the day.", "low"),
    ("What will the price of gold be next year?", "It cannot be predicted reliably.", "low"),
    ("Who will win the next football World Cup?", "It is impossible to say in advance.", "low"),
    ("Is there life on other planets?", "Unknown; none has been found so far.", "low"),
    ("What did Julius Caesar eat for breakfast?", "There is no reliable record of it.", "low"),
    ("How many grains of sand are on Earth?", "Perhaps around 10 to the power of 18, a rough guess.", "low"),
    ("What is my favourite colour?", "I cannot know that without you telling me.", "low"),
    ("When will humans land on Mars?", "Perhaps in the 2030s or later; plans change often.", "low"),
]

# Questions kept out of the training file, for showing the format on new questions.
HELD_OUT = [
    "What is the capital of Italy?",
    "How many wheels does a bicycle have?",
    "Who discovered penicillin?",
    "What is the tallest animal?",
    "How many moons does Mars have?",
    "Will the stock market go up tomorrow?",
]


def conversations() -> list[dict]:
    out = []
    for question, answer, confidence in PAIRS:
        out.append({"messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"Answer: {answer}\nConfidence: {confidence}"},
        ]})
    return out


def write(path: Path | None = None) -> Path:
    path = path or Path(__file__).with_name("answer_format.jsonl")
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations()), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write())
