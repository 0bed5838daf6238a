"""The demo's corpus: short TinyStories-like stories from a seeded grammar, and its word-level vocabulary.

Every word belongs to exactly one class, so the demo's ground truth ("this neuron reads pronouns and
writes verbs") can be stated in token ids. Classes follow the typing stage's names.
"""

from __future__ import annotations

import random

WORDS: dict[str, list[str]] = {
    "PRON": ["he", "she", "they", "we", "He", "She", "They", "We"],
    "DET": ["a", "the", "A", "The"],
    "NAME": ["Lily", "Tom", "Ben", "Mia", "Sue", "Max"],
    "VERB": ["ran", "jumped", "played", "smiled", "laughed", "sang", "danced", "walked", "ate", "slept",
             "hugged", "waved", "climbed", "cried", "liked", "saw", "wanted", "made"],
    "SEARCH": ["looked", "searched", "found", "seek", "hunted", "explored"],
    "ADJ": ["big", "little", "red", "happy", "shiny", "old", "small", "soft", "blue", "funny"],
    "NOUN": ["dog", "cat", "ball", "tree", "park", "box", "cake", "bird", "toy", "house", "garden", "car",
             "hat", "flower", "boat", "fish"],
    "ADP": ["in", "under", "on", "near", "for", "with", "to"],
    "CCONJ": ["and", "but"],
    "AUX": ["was", "is"],
    "ADV": ["very", "then", "too", "again", "quickly"],
    "OTHER": ["once", "upon", "time", "there", "named", "one", "day", "it", "everywhere", "all", "at", "last"],
    "PUNCT": [".", ",", "!"],
}


def vocabulary() -> list[str]:
    """Token strings in id order: id 0 is the story separator, then each word with a leading space
    ("Ġ" in byte-level spelling), then punctuation, then the capitalised story opener."""
    toks = ["<|endoftext|>", "<unk>", "Once"]
    for cls, words in WORDS.items():
        for w in words:
            toks.append(w if cls == "PUNCT" else "Ġ" + w)
    return toks


def _np(rng: random.Random) -> str:
    det = rng.choice(["a", "the"])
    if rng.random() < 0.5:
        return f"{det} {rng.choice(WORDS['ADJ'])} {rng.choice(WORDS['NOUN'])}"
    return f"{det} {rng.choice(WORDS['NOUN'])}"


def _sentence(rng: random.Random, name: str) -> str:
    subj = rng.choice(["he", "she", "they", "we"] + [name, name])
    r = rng.random()
    if r < 0.3:
        return f"{subj} {rng.choice(WORDS['VERB'])} {rng.choice(WORDS['ADP'])} {_np(rng)} ."
    if r < 0.45:
        return (f"{subj} {rng.choice(['looked', 'searched', 'hunted'])} for {_np(rng)} , "
                f"{rng.choice(['and', 'then'])} {rng.choice(['found', 'explored', 'looked'])} {_np(rng)} .")
    if r < 0.6:
        return f"{subj} saw {_np(rng)} and {rng.choice(WORDS['VERB'])} {rng.choice(WORDS['ADV'])} !"
    if r < 0.72:
        return f"{_np(rng)} {rng.choice(WORDS['AUX'])} {rng.choice(['very', 'too'])} {rng.choice(WORDS['ADJ'])} ."
    if r < 0.85:
        other = rng.choice(WORDS["NAME"])
        return f"{subj} {rng.choice(WORDS['VERB'])} with {other} , and {other} {rng.choice(WORDS['VERB'])} too ."
    return f"{subj} {rng.choice(['wanted', 'liked', 'made'])} {_np(rng)} , but {name} {rng.choice(WORDS['VERB'])} ."


def generate_stories(n: int = 400, seed: int = 0) -> list[str]:
    """``n`` stories; every story introduces a name and then mostly talks about that character."""
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        name = rng.choice(WORDS["NAME"])
        sents = [f"Once upon a time , there was {_np(rng)} named {name} ."]
        sents += [_sentence(rng, name) for _ in range(rng.randint(3, 7))]
        sents = [x[0].upper() + x[1:] for x in sents]
        text = " ".join(sents)
        # glue punctuation to the previous word, as in real text
        for p in (" .", " ,", " !"):
            text = text.replace(p, p.strip())
        stories.append(text)
    return stories
