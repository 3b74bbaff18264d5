"""Speech analysis (alignsts_cli/analysis.py): syllables and the syllable-to-note assignment."""
import pytest

from alignsts_cli import analysis
from alignsts_cli.melody import Note


def test_syllables_found_in_speech(speech):
    import soundfile as sf

    x, sr = sf.read(speech, dtype="float32")
    an = analysis.analyse_speech(x, sr)
    # "The quick brown fox jumps over the lazy dog near the river bank": 16 syllables.
    assert 12 <= len(an.syllables) <= 19
    assert 70 < an.median_f0 < 160  # espeak's default male voice
    for s in an.syllables:
        assert s.start <= s.core_start < s.core_end <= s.end
    starts = [s.start for s in an.syllables]
    assert starts == sorted(starts)


def _syl(a, b):
    return analysis.Syllable(a, b, a + 0.02, b - 0.02, (a + b) / 2)


@pytest.mark.parametrize("n_syl,n_notes", [(5, 5), (9, 4), (3, 8), (1, 6), (6, 1)])
def test_assignment_is_ordered_and_complete(n_syl, n_notes):
    sylls = [_syl(0.3 * k, 0.3 * k + 0.25) for k in range(n_syl)]
    notes = [Note(0.5 * k, 0.5 * k + 0.45, 60) for k in range(n_notes)]
    groups = analysis.assign_syllables(sylls, notes)
    assert [s for g in groups for s in g[0]] == list(range(n_syl))
    assert [n for g in groups for n in g[1]] == list(range(n_notes))
    assert all(g[0] and g[1] for g in groups)
    assert all(len(g[0]) == 1 or len(g[1]) == 1 for g in groups)


def test_assignment_follows_durations():
    # A long syllable should take the long notes.
    sylls = [_syl(0, 0.2), _syl(0.2, 1.0), _syl(1.0, 1.2)]
    notes = [Note(0, 0.5, 60), Note(0.5, 1.0, 62), Note(1.0, 1.5, 64), Note(1.5, 2.0, 65), Note(2.0, 2.5, 67)]
    groups = analysis.assign_syllables(sylls, notes)
    assert [len(g[1]) for g in groups] == [1, 3, 1]
