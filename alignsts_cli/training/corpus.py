"""A synthetic paired corpus: the same sentence spoken and sung by the same voice (the paper's paired speech and singing, made synthetically).

No public paired speech/singing corpus can be fetched here, so ``make_corpus`` makes one offline:

- **Voices.** Festival's two diphone voices (``kal``: US male, ``ked``: US male), each turned into
  several *speakers* by its speaking pitch, speaking rate and a formant shift (Praat "Change gender",
  applied alike to the speech and the singing of that speaker). Half of the speakers sing in a male
  range (around C3-C4), half in a female range (around C4-C5) with formants raised and a higher
  speaking voice. They are 1990s diphone voices: fine for plumbing, small-scale training and
  metrics, not for judging audio quality.
- **Speech.** ``utt.synth`` of the sentence, with the speaker's pitch and rate jittered a little per item.
- **Singing.** Festival's singing mode (``-mode singing``, an XML score giving each word one
  duration and one frequency per syllable), with the corrected Scheme in
  ``corpus_data/singing-mode.scm`` (the stock file mis-times multi-syllable words). Syllable counts
  come from Festival's own analysis of the sentence, so every syllable gets exactly one note.
- **Melodies.** Phrases of Bach chorale soprano lines and Essen folksongs from the ``music21``
  corpus (shipped offline with it): a run of as many notes as the sentence has syllables, starting
  at a phrase start where possible, transposed into the speaker's range and played at a tempo that
  gives notes of about 0.25-0.8 s. Rests of the tune fall between words.

Voices, sentences and melodies are each split into train / valid / test groups, and an item of a
split uses only that split's voices, sentences and melodies (valid borrows the training voices
when there are too few voices to hold one out for it), so the test set is unseen on all three
axes. ``manifest.csv`` records the split of each item in its ``split`` column, which
``alignsts_cli.training.data.split_items`` honours.

Output folder::

    manifest.csv            id,speaker,speech,singing,lyrics,song,split,melody
    corpus.json             seed, voices, sentences, melodies, the held-out groups, per-item settings
                            and the measured accuracy of the singing (Praat F0 against the notes)
    speech/<id>.wav         16 kHz mono PCM-16
    singing/<id>.wav        16 kHz mono PCM-16; the notes start at ``PAD_SECONDS``
    melody/<id>.mid         the notes the singing follows (times as in singing/<id>.wav)

The same seed gives the same corpus, byte for byte. Needs the ``festival`` program and its
``kal``/``ked`` voices (``bash scripts/install-festival.sh``) and ``music21`` (the ``train`` extra).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from alignsts_cli.audio import fit_length
from alignsts_cli.errors import AlignSTSError
from alignsts_cli.files import atomic_output, check_output_path

#: Sample rate of every file of the corpus.
SAMPLE_RATE = 16000
#: Silence before the first and after the last note of a sung file, seconds.
PAD_SECONDS = 0.1
#: Note lengths are kept within this range (seconds) after the tempo is chosen.
MIN_NOTE_SECONDS = 0.22
MAX_NOTE_SECONDS = 1.0
#: The tempo is chosen so that the phrase's median note lasts this long (uniform draw, seconds).
MEDIAN_NOTE_SECONDS = (0.3, 0.5)
#: Longest rest kept between two words, seconds.
MAX_REST_SECONDS = 0.5
#: Share of sentences / melodies / items held out for each of valid and test (at least one each).
VALID_SHARE = 0.1
TEST_SHARE = 0.15
#: Items per Festival process (one process synthesises a batch, saving its start-up time).
BATCH_ITEMS = 12
#: Loudness of every file: RMS level in dBFS (peaks are kept below 0.95).
TARGET_DBFS = -20.0
#: Install hint shown when Festival or its voices are missing.
INSTALL_HINT = ("run `bash scripts/install-festival.sh` (Debian/Ubuntu: apt-get install festival festvox-kallpc16k "
                "festvox-kdlpc16k festvox-us-slt-hts flite)")

SINGING_SCM = Path(__file__).with_name("corpus_data") / "singing-mode.scm"


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: a Festival voice with its own speaking pitch, rate, formants and singing range.

    Festival's diphone voices break down above about 500 Hz, so a voice with ``pitch_factor`` 2 is
    synthesised an octave lower than wanted (speech and singing alike) and raised an octave by
    Praat's PSOLA, in the same pass that shifts its formants.
    """

    name: str  # speaker id in the manifest
    festival: str  # Festival voice function, e.g. "voice_kal_diphone"
    range: str  # singing range: "male" (around C3-C4) or "female" (around C4-C5)
    speech_f0: float  # mean speaking F0 of the final speech, Hz
    formant: float = 1.0  # formant shift ratio, speech and singing alike
    rate: float = 1.0  # Festival Duration_Stretch of the speech (> 1 is slower)
    sing_center: float = 54.0  # MIDI note the median of each sung phrase is moved near
    pitch_factor: float = 1.0  # Festival synthesises at F0 / pitch_factor; PSOLA multiplies it back


#: The speakers, male and female ranges interleaved (``voices=4`` takes the first four).
VOICES: tuple[Voice, ...] = (
    Voice("kal-m1", "voice_kal_diphone", "male", 105.0, 1.00, 1.00, 53.0),
    Voice("kal-f1", "voice_kal_diphone", "female", 205.0, 1.18, 0.95, 66.0, 2.0),
    Voice("ked-m1", "voice_ked_diphone", "male", 100.0, 1.00, 1.05, 54.0),
    Voice("ked-f1", "voice_ked_diphone", "female", 195.0, 1.16, 1.00, 67.0, 2.0),
    Voice("kal-m2", "voice_kal_diphone", "male", 125.0, 1.06, 0.92, 56.0),
    Voice("ked-f2", "voice_ked_diphone", "female", 220.0, 1.22, 0.92, 68.0, 2.0),
    Voice("ked-m2", "voice_ked_diphone", "male", 90.0, 0.94, 1.10, 51.0),
    Voice("kal-f2", "voice_kal_diphone", "female", 230.0, 1.24, 1.05, 69.0, 2.0),
)

#: Sentences written for this corpus (plain words, 7-12 syllables each).
SENTENCES: tuple[str, ...] = tuple(s.strip() for s in """
The sun is rising over the hills.
I left my keys on the kitchen table.
We walked along the river after lunch.
She painted the old door a bright blue.
The children played in the garden all day.
My brother works in a small bakery.
Please close the window when it rains.
The train was late again this morning.
He found a letter under the carpet.
We need more milk and a loaf of bread.
The cat is sleeping on the warm chair.
They built a house beside the lake.
I will call you when I get home.
The wind was cold and the sky was grey.
Our teacher told us a funny story.
The market opens early on Sunday.
She keeps her money in a blue box.
A little bird sang outside my window.
The road to the village is very long.
He plays the piano every evening.
We watched the stars from the roof.
The soup is too hot to eat right now.
My grandmother grew roses in her yard.
The boat drifted slowly down the stream.
I bought a new coat for the winter.
The dog ran across the empty field.
Let us meet at the station at noon.
The lamp on my desk is broken again.
She wrote a song about the ocean.
The snow covered the mountains in white.
He carried the heavy box up the stairs.
We ate apples under the old tree.
The music filled the quiet room.
I lost my way in the dark forest.
The baby laughed at the yellow ball.
They sailed across the sea in summer.
The clock in the hall stopped at nine.
My sister reads a book every week.
The farmer planted corn in the spring.
We heard the bells ring far away.
The water in the well is clean and cool.
He smiled and waved from the window.
The leaves turn red and gold in autumn.
I made a cup of tea for my friend.
The city lights were shining brightly.
She danced alone in the moonlight.
The rain fell softly on the roof.
My father fixed the wheel of my bike.
The flowers opened in the morning sun.
We drove along the coast for hours.
The bread smells good when it is fresh.
He told me a secret about the castle.
The candle burned until the morning.
I hope the weather will be fine tomorrow.
The horses ran along the green valley.
She found a shell on the sandy beach.
The door was open but nobody was home.
We sang together by the fire.
The captain looked out across the waves.
My friend lives in a tall white tower.
The garden gate is painted green.
He walked home slowly in the snow.
The river flows down to the sea.
I remember the summer we spent there.
The old man sat on a wooden bench.
She gave her mother a red flower.
The birds fly south when winter comes.
We waited for the bus in the rain.
The moon is shining on the water.
My uncle keeps bees behind his house.
The kitchen smells of fresh coffee.
He climbed the hill to see the sunrise.
The little boat is tied to the pier.
I never saw such a beautiful morning.
The wind is blowing through the trees.
She sent a letter to her cousin.
The teacher opened the window wide.
We followed the path into the woods.
The night was calm and full of stars.
My mother baked a cake for my birthday.
The singer stood alone on the stage.
He lost his hat on the windy bridge.
The fields are golden in the evening.
I carry my lunch in a paper bag.
The queen rode through the town on a horse.
She counted the coins on the table.
The ship will leave the harbor at dawn.
We planted a tree in the school yard.
The mountain road is steep and narrow.
My neighbor sings in the early morning.
The apples are ripe and ready to pick.
He waited by the gate until dark.
The lake was frozen for many weeks.
I like to walk along the shore.
The children laughed at the silly clown.
She wore a ribbon in her golden hair.
The fisherman mended his nets by the sea.
We stayed up late to watch the storm.
The bridge is older than the town.
My cousin plays the violin.
The valley is quiet after the rain.
He painted a picture of the harbor.
The sky turned pink above the city.
I found a penny on the street.
The stars are bright above the desert.
She opened the gift with a smile.
The wagon rolled along the dusty road.
We climbed the tower to see the view.
The baker rises long before the sun.
My room is small but full of light.
The soldier marched across the plain.
He swam across the river in June.
The evening bells are ringing now.
I will remember this day forever.
The forest is dark and full of secrets.
She planted seeds along the fence.
The wolf was howling at the moon.
We shared our bread with the hungry travelers.
The lantern swayed in the cold wind.
My heart is light when I hear that song.
The miller lived beside the stream.
He gave the horse some water and hay.
The morning mist hung over the fields.
I heard a whisper in the hallway.
The sailors sang on the deck at night.
She keeps a diary under her pillow.
The meadow is full of purple flowers.
We rowed the boat to the little island.
The shepherd counted all his sheep.
My shoes are wet from the morning dew.
The church bells rang at the wedding.
He read the letter twice and sighed.
The hills are covered with tall grass.
I wish the summer would never end.
The owl is watching from the tree.
She hummed a tune while she was working.
The thunder rolled across the valley.
We found a path along the cliffs.
""".strip().splitlines())

ProgressFn = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- plan


@dataclass
class Phrase:
    """A run of melody notes fitted to one sentence (times in seconds from the first note)."""

    midi: list[int]  # [S] MIDI note numbers, after transposition
    durations: list[float]  # [S] note lengths, seconds
    rests: list[float]  # [S] rest after each note, seconds (only at word ends)
    start_note: int  # index of the first note in the melody
    transpose: int  # semitones
    seconds_per_beat: float

    def notes(self, offset: float = 0.0):
        """The notes as ``melody.Note`` (start, end, pitch), starting at ``offset`` seconds."""
        from alignsts_cli.melody import Note

        out, t = [], offset
        for m, d, r in zip(self.midi, self.durations, self.rests):
            out.append(Note(round(t, 6), round(t + d, 6), float(m)))
            t += d + r
        return out


@dataclass
class PlannedItem:
    id: str
    split: str
    voice: Voice
    sentence: int  # index into the corpus's sentence list
    melody: int  # index into the corpus's melody list
    speech_f0: float
    speech_rate: float
    phrase: Phrase | None = None
    seed: int = 0  # Praat's random numbers for this item
    quality: dict = field(default_factory=dict)


@dataclass
class MelodySource:
    """A monophonic tune from the music21 corpus: notes with beat lengths, rests and phrase starts."""

    id: str  # "bach/bwv66.6" (soprano) or "essenFolksong/han1#5"
    midi: list[int]
    beats: list[float]  # quarter lengths
    rest_before: list[float]  # quarter lengths of rest before each note
    phrase_start: list[bool]

    @property
    def song(self) -> str:
        """The ``song`` field of the manifest: the source id as a file-name-safe string."""
        return re.sub(r"[^A-Za-z0-9.]+", "-", self.id.replace("essenFolksong/", "essen-")).strip("-")


def _split_sizes(n: int) -> tuple[int, int]:
    """(valid, test) group sizes for ``n`` things (at least one each when ``n`` >= 3)."""
    if n < 3:
        raise AlignSTSError(f"a corpus needs at least 3 sentences and 3 melodies to hold some out (got {n})")
    n_test = max(1, round(TEST_SHARE * n))
    n_valid = max(1, round(VALID_SHARE * n))
    return n_valid, n_test


def _partition(things: list, rng: np.random.Generator) -> dict[str, list]:
    """Shuffle ``things`` and cut them into train / valid / test groups."""
    order = [things[i] for i in rng.permutation(len(things))]
    n_valid, n_test = _split_sizes(len(order))
    return {"test": order[:n_test], "valid": order[n_test:n_test + n_valid], "train": order[n_test + n_valid:]}


def _partition_voices(voices: list[Voice], rng: np.random.Generator) -> dict[str, list[Voice]]:
    """Hold out one voice of each range for test (one in all with fewer than 4), one more for valid
    when at least 6 voices are given; the rest train."""
    if len(voices) < 2:
        raise AlignSTSError("a corpus needs at least 2 voices: one to train on and one held out for testing")
    order = [voices[i] for i in rng.permutation(len(voices))]
    by_range = {r: [v for v in order if v.range == r] for r in ("male", "female")}
    test: list[Voice] = []
    if len(voices) >= 4 and all(len(v) >= 2 for v in by_range.values()):
        test = [by_range["male"].pop(0), by_range["female"].pop(0)]
    else:
        longest = max(by_range.values(), key=len)
        test = [longest.pop(0)]
    valid: list[Voice] = []
    if len(voices) >= 6:
        longest = max(by_range.values(), key=len)
        valid = [longest.pop(0)]
    train = [v for v in voices if v not in test and v not in valid]
    return {"train": train, "valid": valid or train, "test": test}


def _resolve_voices(voices) -> list[Voice]:
    if voices is None:
        return list(VOICES)
    if isinstance(voices, int):
        if not 2 <= voices <= len(VOICES):
            raise AlignSTSError(f"voices={voices}: choose between 2 and {len(VOICES)} voices")
        return list(VOICES[:voices])
    known = {v.name: v for v in VOICES}
    out = []
    for v in voices:
        if isinstance(v, Voice):
            out.append(v)
        elif v in known:
            out.append(known[v])
        else:
            raise AlignSTSError(f"unknown voice {v!r}; choose from {', '.join(known)}")
    if len({v.name for v in out}) != len(out):
        raise AlignSTSError("each voice may be given once")
    return out


def fit_phrase(src: MelodySource, syllables: int, voice: Voice, rng: np.random.Generator,
               word_ends: set[int]) -> Phrase:
    """``syllables`` consecutive notes of ``src`` (from a phrase start when possible), in ``voice``'s range.

    ``word_ends``: indices of the syllables that end a word; a rest of the tune is kept only there.
    """
    midi, beats, rests, starts = src.midi, src.beats, src.rest_before, src.phrase_start
    while len(midi) < syllables:  # a short tune: sing it again
        midi, beats = midi + src.midi, beats + src.beats
        rests, starts = rests + [1.0] + src.rest_before[1:], starts + src.phrase_start
    last = len(midi) - syllables
    candidates = [i for i in range(last + 1) if starts[i]] or list(range(last + 1))
    i0 = int(candidates[rng.integers(len(candidates))])
    m = np.array(midi[i0:i0 + syllables])
    b = np.array(beats[i0:i0 + syllables], dtype=np.float64)
    r_next = np.array(rests[i0 + 1:i0 + syllables] + [0.0], dtype=np.float64)  # rest after each note
    # Transpose: the phrase's median near the voice's centre, a little variety, never far out of range.
    shift = int(round(voice.sing_center - float(np.median(m)))) + int(rng.integers(-2, 3))
    lo, hi = voice.sing_center - 10, voice.sing_center + 10
    if m.max() + shift > hi:
        shift -= int(m.max() + shift - hi)
    if m.min() + shift < lo:
        shift += int(lo - (m.min() + shift))
    spb = rng.uniform(*MEDIAN_NOTE_SECONDS) / float(np.median(b))
    durations = np.clip(b * spb, MIN_NOTE_SECONDS, MAX_NOTE_SECONDS)
    rest_s = np.where([k in word_ends for k in range(syllables)], np.minimum(r_next * spb, MAX_REST_SECONDS), 0.0)
    rest_s[-1] = 0.0
    return Phrase([int(x + shift) for x in m], [round(float(d), 3) for d in durations],
                  [round(float(x), 3) for x in rest_s], i0, shift, round(float(spb), 4))


# --------------------------------------------------------------------------- melodies (music21)


def _music21():
    try:
        import music21  # noqa: F401
    except ImportError:
        raise AlignSTSError(
            "the synthetic corpus takes its melodies from music21, which is not installed; "
            "run `pip install 'alignsts[train]'` (or `pip install music21`)"
        ) from None
    return music21


def melody_candidates() -> tuple[list[str], list[str]]:
    """Source ids of the music21 corpus's Bach chorales and Essen folksongs, sorted."""
    music21 = _music21()
    root = Path(music21.__file__).parent / "corpus"
    bach = sorted(f"bach/{p.stem}" for p in (root / "bach").glob("bwv*.mxl"))
    essen = []
    for p in sorted((root / "essenFolksong").glob("*.abc")):
        if p.stem.startswith("test"):
            continue
        numbers = re.findall(r"^X:\s*(\d+)", p.read_text(errors="replace"), flags=re.M)
        essen += [f"essenFolksong/{p.stem}#{x}" for x in dict.fromkeys(numbers)]
    return bach, essen


def load_melody_source(source: str) -> MelodySource | None:
    """One tune's notes (the soprano of a chorale), or None when it is unsuitable (too short, too wide)."""
    _music21()
    from music21 import corpus

    try:
        if "#" in source:
            path, number = source.split("#")
            score = corpus.parse(path, number=int(number))
        else:
            score = corpus.parse(source)
        part = score.parts[0] if getattr(score, "parts", None) else score
        events = part.flatten().stripTies().notesAndRests
    except Exception:  # music21 rejects a few files of its own corpus; skip them
        return None
    midi, beats, rest_before, starts = [], [], [], []
    rest, new_phrase = 0.0, True
    for ev in events:
        ql = float(ev.quarterLength)
        if ql <= 0:  # grace notes
            continue
        if ev.isRest:
            rest += ql
            new_phrase = True
            continue
        pitch = max(p.midi for p in ev.pitches) if ev.isChord else ev.pitch.midi
        midi.append(int(pitch))
        beats.append(ql)
        rest_before.append(rest)
        starts.append(new_phrase)
        rest, new_phrase = 0.0, False
        if any(type(e).__name__ == "Fermata" for e in ev.expressions):
            new_phrase = True
    if len(midi) < 12 or max(midi) - min(midi) > 19:
        return None
    median = float(np.median(beats))
    for k in range(1, len(midi)):  # a note twice the usual length or more ends a phrase
        if beats[k - 1] >= 2 * median:
            starts[k] = True
    return MelodySource(source, midi, beats, rest_before, starts)


def choose_melodies(n: int, rng: np.random.Generator) -> list[MelodySource]:
    """``n`` suitable tunes, half Bach chorales and half Essen folksongs, drawn with ``rng``."""
    bach, essen = melody_candidates()
    pools = [[bach[i] for i in rng.permutation(len(bach))], [essen[i] for i in rng.permutation(len(essen))]]
    out: list[MelodySource] = []
    k = 0
    while len(out) < n:
        pool = pools[k % 2] or pools[(k + 1) % 2]
        if not pool:
            raise AlignSTSError(f"the music21 corpus has fewer than {n} usable tunes; ask for fewer melodies")
        src = load_melody_source(pool.pop(0))
        if src is not None:
            out.append(src)
            k += 1
    return out


# --------------------------------------------------------------------------- Festival


def _festival() -> str:
    exe = shutil.which("festival")
    if exe is None:
        raise AlignSTSError(
            f"the synthetic corpus needs the Festival speech synthesiser, which is not installed; {INSTALL_HINT}"
        )
    return exe


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_PRELUDE = f"""
(require 'singing-mode)
(load {_scheme_string(str(SINGING_SCM))})
(define (alignsts_syllables u sid)
  (format t "SYL %s" sid)
  (mapcar (lambda (w) (format t " %s:%d" (item.name w) (length (item.daughters (item.relation w 'SylStructure)))))
          (utt.relation.items u 'Word))
  (format t "\\n"))
(define (alignsts_keep utt) (set! alignsts_utts (append alignsts_utts (list utt))))
(define (alignsts_sing xml out)
  (set! alignsts_utts nil)
  (set! tts_hooks (list utt.synth alignsts_keep))
  (tts_file xml 'singing)
  (let ((i 0))
    (mapcar (lambda (u) (utt.save.wave u (format nil "%s.%d.wav" out i) 'riff) (set! i (+ i 1))) alignsts_utts)))
"""


def _run_festival(script: str, workdir: Path, name: str, timeout: float = 600.0) -> str:
    """Run a Festival script (``_PRELUDE`` + ``script``); return what it printed."""
    path = workdir / f"{name}.scm"
    path.write_text(_PRELUDE + script)
    try:
        res = subprocess.run([_festival(), "-b", str(path)], capture_output=True, text=True, timeout=timeout,
                             cwd=workdir)
    except subprocess.TimeoutExpired:
        raise AlignSTSError(
            f"Festival did not finish in {timeout:.0f} s; check that `festival` runs on this machine"
        ) from None
    if "unbound variable : voice_" in res.stderr:
        missing = re.search(r"unbound variable : (voice_\w+)", res.stderr).group(1)
        raise AlignSTSError(f"Festival has no voice {missing[6:]}; {INSTALL_HINT}")
    return res.stdout + "\n" + res.stderr


def _words(sentence: str) -> list[str]:
    """The sung words of a sentence: letters and apostrophes only."""
    return [w for w in (re.sub(r"[^A-Za-z']", "", t) for t in sentence.split()) if w]


def count_syllables(sentences: Sequence[str], voice: str, workdir: Path) -> list[list[int]]:
    """Syllables of each word of each sentence, as Festival's ``voice`` analyses it."""
    lines = []
    for k, s in enumerate(sentences):
        # Literal code for each sentence: Festival's Utterance is a special form.
        lines.append(f"({voice})\n(set! u (Utterance Text {_scheme_string(' '.join(_words(s)))}))\n"
                     f"(unwind-protect (begin (Initialize u) (Text u) (Token_POS u) (Token u) (POS u) (Phrasify u) "
                     f"(Word u) (alignsts_syllables u \"{k}\")) nil)\n")
    out = _run_festival("".join(lines), workdir, "syllables")
    found = {}
    for line in out.splitlines():
        if line.startswith("SYL "):
            parts = line.split()
            found[int(parts[1])] = [(w.rsplit(":", 1)[0], int(w.rsplit(":", 1)[1])) for w in parts[2:]]
    counts = []
    for k, s in enumerate(sentences):
        words = _words(s)
        got = found.get(k)
        if got is None or [w.lower() for w, _ in got] != [w.lower() for w in words] or min(c for _, c in got) < 1:
            raise AlignSTSError(
                f"Festival does not read the sentence {s!r} as one word per written word; use plain words without "
                "numbers or abbreviations"
            )
        counts.append([c for _, c in got])
    return counts


def singing_score(words: list[str], syllables: list[int], phrase: Phrase, pitch_factor: float = 1.0) -> str:
    """Festival singing-mode XML: each word gets one duration and one frequency per syllable
    (the notes' frequencies divided by ``pitch_factor``)."""
    from xml.sax.saxutils import escape

    from alignsts_cli.melody import midi_to_hz

    rows = ['<?xml version="1.0"?>',
            '<!DOCTYPE SINGING PUBLIC "-//SINGING//DTD SINGING mark up//EN" "Singing.v0_1.dtd" []>',
            '<SINGING BPM="60">']
    k = 0
    for word, n in zip(words, syllables):
        hz = ",".join(f"{float(midi_to_hz(m)) / pitch_factor:.3f}" for m in phrase.midi[k:k + n])
        secs = ",".join(f"{d:.3f}" for d in phrase.durations[k:k + n])
        rows.append(f'<PITCH FREQ="{hz}"><DURATION SECONDS="{secs}">{escape(word)}</DURATION></PITCH>')
        rest = phrase.rests[k + n - 1]
        if rest > 0:
            rows.append(f'<REST SECONDS="{rest:.3f}"></REST>')
        k += n
    rows.append("</SINGING>")
    return "\n".join(rows) + "\n"


def _synth_batch(items: list[PlannedItem], sentences: list[str], syllables: list[list[int]],
                 workdir: Path, name: str) -> str:
    """Speech and singing of ``items`` by one Festival process, into ``workdir/<id>.speech.wav`` and
    ``workdir/<id>.sing.<k>.wav`` (one file per utterance Festival makes of the score)."""
    lines = []
    for it in items:
        text = sentences[it.sentence]
        words = _words(text)
        xml = workdir / f"{it.id}.xml"
        xml.write_text(singing_score(words, syllables[it.sentence], it.phrase, it.voice.pitch_factor))
        f0 = it.speech_f0 / it.voice.pitch_factor
        speech_out = _scheme_string(str(workdir / (it.id + ".speech.wav")))
        sing_out = _scheme_string(str(workdir / (it.id + ".sing")))
        lines.append(
            f"({it.voice.festival})\n"
            f"(set! int_lr_params '((target_f0_mean {f0:.2f}) (target_f0_std {0.14 * f0:.2f}) "
            f"(model_f0_mean 170) (model_f0_std 34)))\n"
            f"(Parameter.set 'Duration_Stretch {it.speech_rate:.4f})\n"
            f"(set! u (Utterance Text {_scheme_string(text)}))\n"
            f"(unwind-protect (begin (utt.synth u) (utt.save.wave u {speech_out} 'riff)) nil)\n"
            f"({it.voice.festival})\n"
            f"(unwind-protect (alignsts_sing {_scheme_string(str(xml))} {sing_out}) nil)\n"
        )
    return _run_festival("".join(lines), workdir, name)


# --------------------------------------------------------------------------- audio


def _read_festival_wavs(paths: list[Path]) -> np.ndarray:
    import soundfile as sf

    from alignsts_cli.audio import resample

    parts = []
    for p in paths:
        x, sr = sf.read(str(p), dtype="float32", always_2d=True)
        parts.append(resample(x.mean(axis=1), sr, SAMPLE_RATE))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def transform_voice(audio: np.ndarray, formant: float, pitch: float, floor: float, ceiling: float,
                    seed: int = 0) -> np.ndarray:
    """``[n]`` audio at ``SAMPLE_RATE`` with formants scaled by ``formant`` and F0 by ``pitch``, same length.

    One PSOLA pass (Praat), as Praat's "Change gender" does it but with an exact pitch factor: the
    sound is played ``formant`` times faster (formants, F0 and tempo all scale), then PSOLA restores
    the length and sets F0 to ``pitch`` times the original. ``floor``/``ceiling``: F0 search range
    of the input, Hz. Praat's PSOLA draws random numbers where it stretches unvoiced sound: they are
    seeded with ``seed`` so the result is reproducible.
    """
    if formant == 1.0 and pitch == 1.0:
        return audio
    import parselmouth

    with _PRAAT_RANDOM:
        parselmouth.praat.run(f"random_initializeWithSeedUnsafelyButPredictably ({int(seed)})")
        try:
            return _transform_voice(audio, formant, pitch, floor, ceiling)
        finally:
            parselmouth.praat.run("random_initializeSafelyAndUnpredictably ()")


_PRAAT_RANDOM = threading.Lock()  # Praat's random generator is global: one seeded PSOLA at a time


def _transform_voice(audio, formant, pitch, floor, ceiling):
    import parselmouth
    from parselmouth.praat import call

    snd = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=SAMPLE_RATE)
    if formant != 1.0:
        call(snd, "Override sampling frequency", SAMPLE_RATE * formant)
        snd = call(snd, "Resample", SAMPLE_RATE, 50)
    man = call(snd, "To Manipulation", 0.01, floor * formant, ceiling * formant)
    tier = call(man, "Extract pitch tier")
    call(tier, "Multiply frequencies", snd.xmin, snd.xmax, pitch / formant)
    call([man, tier], "Replace pitch tier")
    if formant != 1.0:
        dur = call("Create DurationTier", "restore", snd.xmin, snd.xmax)
        call(dur, "Add point", snd.xmin, float(formant))
        call([man, dur], "Replace duration tier")
    out = call(man, "Get resynthesis (overlap-add)").values[0]
    return fit_length(out, len(audio)).astype(np.float32)


def _level(audio: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) + 1e-12
    gain = 10 ** (TARGET_DBFS / 20) / rms
    peak = float(np.max(np.abs(audio))) * gain
    if peak > 0.95:
        gain *= 0.95 / peak
    return (audio * gain).astype(np.float32)


def _wav_bytes(audio: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def singing_accuracy(audio: np.ndarray, sr: int, notes) -> dict:
    """How well sung ``[n]`` audio follows ``notes`` (``melody.Note``, seconds into the audio).

    ``cents``: median over notes of |median Praat F0 error| in the middle half of each note;
    ``within_50``: share of voiced frames in those middles within 50 cents of the note;
    ``voiced``: share of those frames voiced; ``boundary_ms``: median |time| between each pitch
    change of 2+ semitones (no rest between) and where the sung F0 crosses the midpoint of the two
    notes; ``seconds``: the audio's length.
    """
    from alignsts_cli.melody import extract_f0, hz_to_midi

    hop = 0.01
    f0, _ = extract_f0(audio, sr, hop=hop)
    t = np.arange(len(f0)) * hop
    note_err, frames_ok, frames_all, voiced = [], 0, 0, 0
    for n in notes:
        a, b = n.start + 0.25 * n.duration, n.end - 0.25 * n.duration
        sel = (t >= a) & (t <= b)
        frames_all += int(sel.sum())
        v = f0[sel]
        v = v[v > 0]
        voiced += len(v)
        if len(v):
            cents = 100 * (hz_to_midi(v) - n.pitch)
            note_err.append(abs(float(np.median(cents))))
            frames_ok += int((np.abs(cents) <= 50).sum())
    bound = []
    for a, b in zip(notes[:-1], notes[1:]):
        if abs(b.pitch - a.pitch) < 2 or b.start - a.end > 0.005:
            continue
        sel = (t >= b.start - 0.15) & (t <= b.start + 0.15) & (f0 > 0)
        if sel.sum() < 5:
            continue
        tt, mm = t[sel], hz_to_midi(f0[sel])
        mid = (a.pitch + b.pitch) / 2
        above = (mm - mid) * np.sign(b.pitch - a.pitch) > 0
        cross = np.flatnonzero(above)
        if len(cross):
            bound.append(abs(float(tt[cross[0]] - b.start)) * 1000)
    return {
        "cents": round(float(np.median(note_err)), 2) if note_err else None,
        "within_50": round(frames_ok / max(voiced, 1), 4),
        "voiced": round(voiced / max(frames_all, 1), 4),
        "boundary_ms": round(float(np.median(bound)), 1) if bound else None,
        "seconds": round(len(audio) / sr, 3),
    }


# --------------------------------------------------------------------------- the generator


def plan_corpus(*, seed: int, voices, sentences: int, melodies: int, items: int, workdir: Path):
    """Everything that is drawn at random, decided before any audio is made (same seed, same plan)."""
    rng = np.random.default_rng(seed)
    voice_list = _resolve_voices(voices)
    if not 3 <= sentences <= len(SENTENCES):
        raise AlignSTSError(f"sentences={sentences}: choose between 3 and {len(SENTENCES)}")
    if melodies < 3:
        raise AlignSTSError(f"melodies={melodies}: choose at least 3")
    if items < 3:
        raise AlignSTSError(f"items={items}: choose at least 3 (one for each of train, valid and test)")
    voice_groups = _partition_voices(voice_list, rng)
    chosen_sentences = [SENTENCES[i] for i in sorted(rng.choice(len(SENTENCES), size=sentences, replace=False))]
    sentence_groups = _partition(list(range(sentences)), rng)
    tunes = choose_melodies(melodies, rng)
    melody_groups = _partition(list(range(melodies)), rng)
    syllables = count_syllables(chosen_sentences, voice_list[0].festival, workdir)

    n_valid, n_test = max(1, round(VALID_SHARE * items)), max(1, round(TEST_SHARE * items))
    counts = {"train": items - n_valid - n_test, "valid": n_valid, "test": n_test}
    if counts["train"] < 1:
        raise AlignSTSError(f"items={items}: too few to hold out valid and test items; ask for more")
    planned: list[PlannedItem] = []
    k = 0
    for split in ("train", "valid", "test"):
        vs = voice_groups[split]
        ss = [sentence_groups[split][i] for i in rng.permutation(len(sentence_groups[split]))]
        ms = melody_groups[split]
        v_off = int(rng.integers(len(vs)))
        for j in range(counts[split]):
            voice = vs[(j + v_off) % len(vs)]
            sent = ss[j % len(ss)]
            mel = ms[int(rng.integers(len(ms)))]
            f0 = voice.speech_f0 * 2 ** (rng.uniform(-1.5, 1.5) / 12)
            rate = voice.rate * rng.uniform(0.92, 1.1)
            item = PlannedItem(f"{k:05d}-{voice.name}", split, voice, sent, mel, round(f0, 2), round(rate, 4),
                               seed=int(rng.integers(2**30)))
            word_ends = set(np.cumsum(syllables[sent]) - 1)
            item.phrase = fit_phrase(tunes[mel], sum(syllables[sent]), voice, rng, word_ends)
            planned.append(item)
            k += 1
    groups = {
        split: {"voices": [v.name for v in voice_groups[split]],
                "sentences": [f"s{i:03d}" for i in sentence_groups[split]],
                "melodies": [tunes[i].id for i in melody_groups[split]]}
        for split in ("train", "valid", "test")
    }
    return voice_list, chosen_sentences, syllables, tunes, groups, planned


def make_corpus(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    voices: int | Sequence[str | Voice] | None = None,
    sentences: int = 100,
    melodies: int = 60,
    items: int = 600,
    workers: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Generate a paired speech/singing corpus into the folder ``out``; return the manifest's path.

    ``voices``: how many of ``VOICES`` (default all 8), or their names; ``sentences`` of the
    built-in ``SENTENCES`` and ``melodies`` from music21 are drawn with ``seed``, and ``items``
    (voice, sentence, melody) triples are made of them, split train / valid / test with held-out
    voices, sentences and melodies. ``workers`` Festival processes run at once (default: 2, or 1
    on a one-core machine). ``progress(done, total, item_id)`` is called after each item.
    Raises ``AlignSTSError`` when ``out`` already holds a corpus (unless ``overwrite``) or when
    Festival, its voices or music21 are missing.
    """
    out = Path(out).expanduser()
    manifest = out / "manifest.csv"
    if manifest.exists() and not overwrite:
        raise AlignSTSError(f"{out}: already holds a corpus (manifest.csv); pass --overwrite or choose another folder")
    check_output_path(manifest, overwrite=overwrite, suffixes=(".csv",))
    check_output_path(out / "corpus.json", overwrite=overwrite, suffixes=(".json",))
    _festival()
    if not SINGING_SCM.exists():
        raise AlignSTSError(f"{SINGING_SCM}: the corrected singing mode is missing; reinstall alignsts")
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    for sub in ("speech", "singing", "melody"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".alignsts-corpus-", dir=out) as tmp:
        work = Path(tmp)
        voice_list, chosen, syllables, tunes, groups, planned = plan_corpus(
            seed=seed, voices=voices, sentences=sentences, melodies=melodies, items=items, workdir=work)
        batches = [planned[i:i + BATCH_ITEMS] for i in range(0, len(planned), BATCH_ITEMS)]
        done = [0]

        def run(bi: int):
            batch = batches[bi]
            bdir = work / f"b{bi:04d}"
            bdir.mkdir()
            log = _synth_batch(batch, chosen, syllables, bdir, "batch")
            for it in batch:
                _finish_item(it, bdir, out, chosen, log)
            return batch

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for batch in pool.map(run, range(len(batches))):
                for it in batch:
                    done[0] += 1
                    if progress is not None:
                        progress(done[0], len(planned), it.id)
    _write_manifest(manifest, planned, chosen, tunes)
    _write_corpus_json(out / "corpus.json", seed, voice_list, chosen, syllables, tunes, groups, planned)
    return manifest


def _finish_item(it: PlannedItem, bdir: Path, out: Path, sentences: list[str], log: str) -> None:
    """Formants, level and padding of one item's Festival output; write its wavs, MIDI and accuracy."""
    from alignsts_cli.melody import write_midi

    speech_wav = bdir / f"{it.id}.speech.wav"
    sing_wavs = sorted(bdir.glob(f"{it.id}.sing.*.wav"), key=lambda p: int(p.name.split(".")[-2]))
    if not speech_wav.exists() or not sing_wavs:
        reason = next((ln for ln in log.splitlines() if "ERROR" in ln), "no output")
        raise AlignSTSError(
            f"Festival could not synthesise item {it.id} ({sentences[it.sentence]!r}: {reason.strip()}); "
            f"check the Festival installation ({INSTALL_HINT})"
        )
    v, seed = it.voice, it.seed
    speech = _level(transform_voice(_read_festival_wavs([speech_wav]), v.formant, v.pitch_factor, 50.0, 400.0, seed))
    sung = transform_voice(_read_festival_wavs(sing_wavs), v.formant, v.pitch_factor, 60.0, 500.0, seed + 1)
    pad = np.zeros(int(round(PAD_SECONDS * SAMPLE_RATE)), np.float32)
    sung = _level(np.concatenate([pad, sung, pad]))
    notes = it.phrase.notes(offset=PAD_SECONDS)
    it.quality = singing_accuracy(sung, SAMPLE_RATE, notes)
    it.quality["expected_seconds"] = round(notes[-1].end + PAD_SECONDS, 3)
    it.quality["speech_seconds"] = round(len(speech) / SAMPLE_RATE, 3)
    for sub, audio in (("speech", speech), ("singing", sung)):
        with atomic_output(out / sub / f"{it.id}.wav") as tmp:
            tmp.write_bytes(_wav_bytes(audio))
    write_midi(out / "melody" / f"{it.id}.mid", notes, bpm=60.0, overwrite=True)


MANIFEST_FIELDS = ("id", "speaker", "speech", "singing", "lyrics", "song", "split", "melody")


def _write_manifest(path: Path, planned: list[PlannedItem], sentences: list[str], tunes: list[MelodySource]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_FIELDS)
    for it in planned:
        w.writerow([it.id, it.voice.name, f"speech/{it.id}.wav", f"singing/{it.id}.wav", sentences[it.sentence],
                    tunes[it.melody].song, it.split, f"melody/{it.id}.mid"])
    with atomic_output(path) as tmp:
        tmp.write_text(buf.getvalue())


def _summary(values: list[float]) -> dict:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {}
    return {"median": round(float(np.median(v)), 3), "p90": round(float(np.percentile(v, 90)), 3),
            "max": round(float(v.max()), 3)}


def _write_corpus_json(path, seed, voices, sentences, syllables, tunes, groups, planned) -> None:
    import music21

    q = [it.quality for it in planned]
    info = {
        "format": "alignsts-synthetic-corpus",
        "version": 1,
        "generator": "alignsts_cli.training.corpus.make_corpus",
        "seed": seed,
        "sample_rate": SAMPLE_RATE,
        "pad_seconds": PAD_SECONDS,
        "music21": music21.__version__,
        "voices": [asdict(v) for v in voices],
        "sentences": [{"id": f"s{i:03d}", "text": s, "syllables": syl}
                      for i, (s, syl) in enumerate(zip(sentences, syllables))],
        "melodies": [{"id": t.id, "song": t.song, "notes": len(t.midi)} for t in tunes],
        "held_out": {"valid": groups["valid"], "test": groups["test"]},
        "train": groups["train"],
        "quality": {
            "cents": _summary([x["cents"] for x in q]),
            "within_50": _summary([x["within_50"] for x in q]),
            "boundary_ms": _summary([x["boundary_ms"] for x in q]),
            "length_error_ms": _summary([abs(x["seconds"] - x["expected_seconds"]) * 1000 for x in q]),
            "singing_hours": round(sum(x["seconds"] for x in q) / 3600, 4),
            "speech_hours": round(sum(x["speech_seconds"] for x in q) / 3600, 4),
        },
        "items": [
            {"id": it.id, "split": it.split, "voice": it.voice.name, "sentence": f"s{it.sentence:03d}",
             "melody": tunes[it.melody].id, "start_note": it.phrase.start_note, "transpose": it.phrase.transpose,
             "seconds_per_beat": it.phrase.seconds_per_beat, "speech_f0": it.speech_f0,
             "speech_rate": it.speech_rate, **it.quality}
            for it in planned
        ],
    }
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(info, indent=1) + "\n")
