"""Speed and memory of alignsts, stage by stage.

    python benchmarks/run.py                       # official-size model (random weights), 5/10/30 s
    python benchmarks/run.py --engine psola
    python benchmarks/run.py --engine world --seconds 5 10 30 --cold-start
    python benchmarks/run.py --engine bundled --seconds 5 10 30 --memory-seconds 30 300 --batch 20 --cold-start
    python benchmarks/run.py --engine path/to/voice --precision float32

For each input length: the real-time factor (processing seconds / output seconds) of every stage
(loading, f0 = speech analysis + melody, content features, speaker embedding, acoustic model,
vocoder, writing) and of the whole conversion, as medians of --repeats runs after one warm-up. The
models are loaded once (their loading time is reported apart). Also, on request: peak resident memory
of a whole conversion of an input of each --memory-seconds length (each in a fresh process), batch
throughput (seconds of singing produced per second of work over N files, through the code path of
`alignsts batch`) and cold-start times of `alignsts --help` and of a first `convert` in a fresh process.

`--engine default` is what `alignsts convert` uses with no options (psola, the scorecard's choice);
`--engine bundled` is the bundled AlignSTS voice (`--engine alignsts` with nothing imported).

`--engine official` builds randomly initialised models of the official sizes (26 M-parameter
AlignSTS, wav2vec2-base content model, 24 kHz NSF-HiFiGAN): speed and memory do not depend on the
weights' values, so these figures hold for the real checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Twinkle twinkle little star, how I wonder what you are.",
    "I have a dream that one day this nation will rise up.",
    "She sells sea shells by the sea shore every summer morning.",
]
STAGES = ("loading", "f0", "content", "speaker", "acoustic", "vocoder", "psola", "world", "writing")


def make_speech(path: Path, seconds: float, sr: int = 22050) -> Path:
    """Spoken sentences (espeak-ng) joined with short pauses, cut to ``seconds``."""
    import soundfile as sf

    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed to make the benchmark's speech (apt-get install espeak-ng)")
    parts, total, k = [], 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        while total < seconds:
            wav = Path(tmp) / f"{k}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), SENTENCES[k % len(SENTENCES)]],
                           check=True)
            x, file_sr = sf.read(wav, dtype="float32")
            parts += [x, np.zeros(int(0.25 * file_sr), np.float32)]
            total += len(x) / file_sr + 0.25
            k += 1
        audio = np.concatenate(parts)[: int(seconds * file_sr)]
    sf.write(path, audio, file_sr)
    return path


def make_melody(path: Path, seconds: float) -> Path:
    """Phrases of three quarter notes and a rest (120 bpm) around C3-A3, lasting ``seconds``."""
    import mido

    tpb = 480
    mid = mido.MidiFile(ticks_per_beat=tpb)
    trk = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000, time=0)])
    pitches = [48, 50, 52, 53, 55, 57, 55, 52]
    beats, gap, k = int(seconds * 2), 0, 0
    for b in range(beats):
        if b % 4 == 3:
            gap += tpb
            continue
        p = pitches[k % len(pitches)]
        trk += [mido.Message("note_on", note=p, velocity=80, time=gap), mido.Message("note_off", note=p, time=tpb)]
        gap, k = 0, k + 1
    mid.tracks.append(trk)
    mid.save(str(path))
    return path


def official_voice(folder: Path) -> Path:
    """Random-weight models of the official sizes, as a self-contained voice folder."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from alignsts_cli.model import AlignSTS, AlignSTSConfig, save_model
    from alignsts_cli.model.checkpoint import save_vocoder
    from alignsts_cli.model.hifigan import HiFiGAN, HiFiGANConfig

    if (folder / "content" / "config.json").exists():
        return folder
    torch.manual_seed(0)
    save_model(AlignSTS(AlignSTSConfig()), folder / "acoustic")
    save_vocoder(HiFiGAN(HiFiGANConfig()), folder / "vocoder")
    Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=32)).save_pretrained(folder / "content", safe_serialization=True)
    return folder


def engine_args(engine: str, work: Path) -> dict:
    if engine in ("psola", "world"):
        return {"engine": engine}
    if engine == "official":
        return {"engine": "alignsts", "model": str(official_voice(work / "official-voice"))}
    if engine == "default":
        return {"engine": "auto"}
    if engine == "bundled":
        return {"engine": "alignsts"}
    return {"engine": "alignsts", "model": engine}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_lengths(conv, work: Path, lengths, repeats: int) -> list[dict]:
    rows = []
    for seconds in lengths:
        speech = make_speech(work / f"speech{seconds}.wav", seconds)
        melody = make_melody(work / f"melody{seconds}.mid", seconds)
        runs = []
        for r in range(repeats + 1):  # the first is the warm-up
            out = work / f"out{seconds}.wav"
            t0 = time.perf_counter()
            res = conv.convert(speech, melody, out, overwrite=True, seed=0)
            wall = time.perf_counter() - t0
            if r:
                runs.append((wall, res.info["timings"], res.seconds))
        out_s = runs[0][2]
        row = {"seconds": seconds, "output_seconds": round(out_s, 2), "rtf_total": statistics.median(w for w, _, _ in runs) / out_s}
        for stage in STAGES:
            vals = [t.get(stage) for _, t, _ in runs if stage in t]
            if vals:
                row[f"rtf_{stage}"] = statistics.median(vals) / out_s
        rows.append(row)
    return rows


def memory_child(args) -> None:
    """Run in a fresh process: one whole conversion, then print the peak RSS."""
    from alignsts_cli import api

    work = Path(args.work)
    seconds = args.memory_child
    conv = api.Converter(device=args.device, precision=args.precision, **engine_args(args.engine, work))
    speech = make_speech(work / f"mem-speech{seconds:g}.wav", min(60.0, seconds))
    melody = make_melody(work / f"mem-melody{seconds:g}.mid", seconds)
    t0 = time.perf_counter()
    res = conv.convert(speech, melody, work / f"mem-out{seconds:g}.wav", overwrite=True)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "output_seconds": res.seconds,
                      "rtf": (time.perf_counter() - t0) / res.seconds, "chunks": res.info.get("chunks")}))


def cpu_description() -> dict:
    """The CPU model (Linux: /proc/cpuinfo's model name), its bfloat16 features and torch's vector path."""
    import torch

    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and name:
                break
    except OSError:
        pass
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    return {"model": name, "cores": os.cpu_count(), "features": features, "torch_capability": capability}


def cold_start(engine: str, work: Path, device: str, precision: str, threads: int) -> dict:
    """``alignsts --help`` and a first ``convert`` of a 10 s song, each in a fresh process: the whole
    command's wall time, and (a second fresh process through the API) where that time goes."""
    exe = [sys.executable, "-m", "alignsts_cli"]
    helps = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run(exe + ["--help"], capture_output=True, check=True)
        helps.append(time.perf_counter() - t0)
    speech = make_speech(work / "cold.wav", 10)
    melody = make_melody(work / "cold.mid", 10)
    extra = engine_args(engine, work)
    cmd = exe + ["convert", str(speech), "-m", str(melody), "-o", str(work / "cold-out.wav"), "--overwrite",
                 "--engine", extra["engine"], "--device", device, "--precision", precision]
    if "model" in extra:
        cmd += ["--model", extra["model"]]
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    child = subprocess.run(
        [sys.executable, __file__, "--cold-child", "--engine", engine, "--device", device, "--precision", precision,
         "--threads", str(threads), "--work", str(work)], capture_output=True, text=True, check=True)
    stages = json.loads(child.stdout.strip().splitlines()[-1])
    own = stages["imports"] + stages["converter"] + stages["convert"]
    stages = {"interpreter": max(0.0, time.perf_counter() - t0 - own), **stages}  # Python starting and exiting
    return {"help_seconds": statistics.median(helps), "first_convert_seconds": whole,
            "first_convert_rtf": whole / 10.0, "stages": stages}


def cold_child(args) -> None:
    """In a fresh process: seconds of the imports, of making the Converter (models loaded), and of each stage
    of the first conversion (what a user's first ``convert`` waits for, loading inside a stage included),
    with the CLI's defaults (torch's own thread count)."""
    t0 = time.perf_counter()
    from alignsts_cli import api

    seconds = {"imports": time.perf_counter() - t0}
    work = Path(args.work)
    t0 = time.perf_counter()
    conv = api.Converter(device=args.device, precision=args.precision, **engine_args(args.engine, work))  # as the CLI
    if conv.engine == "alignsts":
        conv.neural  # the models: as the CLI's convert loads them before singing
    seconds["converter"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = conv.convert(work / "cold.wav", work / "cold.mid", work / "cold-child.wav", overwrite=True, seed=0)
    seconds["convert"] = time.perf_counter() - t0
    for stage, value in res.info["timings"].items():
        seconds[f"convert.{stage}"] = value
    print(json.dumps({k: round(v, 3) for k, v in seconds.items() if not k.startswith("convert.")} |
                     {k: round(v, 3) for k, v in seconds.items() if k.startswith("convert.")}))


def batch_throughput(conv, work: Path, files: int) -> dict:
    """``files`` five-second songs through ``Converter.convert_many`` (what `alignsts batch` runs)."""
    folder = work / "batch"
    folder.mkdir(exist_ok=True)
    speech = make_speech(folder / "s.wav", 5)
    melody = make_melody(folder / "m.mid", 5)
    conv.convert(speech, melody, folder / "warm.wav", overwrite=True)
    jobs = [(speech, melody, folder / f"o{k}.wav") for k in range(files)]
    produced, t0 = 0.0, time.perf_counter()
    for _, res in conv.convert_many(jobs, overwrite=True):
        if isinstance(res, Exception):
            raise res
        produced += res.seconds
    wall = time.perf_counter() - t0
    return {"files": files, "singing_seconds_per_second": produced / wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", default="official", help="official | psola | world | default | bundled | a voice-model folder")
    ap.add_argument("--seconds", type=float, nargs="*", default=[5, 10, 30])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="auto | float32 (as alignsts convert --precision)")
    ap.add_argument("--memory-seconds", type=float, nargs="*", default=[],
                    help="peak RSS of a whole conversion of each of these lengths (each in a fresh process)")
    ap.add_argument("--batch", type=int, default=0, help="batch throughput over this many files")
    ap.add_argument("--cold-start", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cold-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.cold_child:  # before torch is imported: its import is part of a cold start
        return cold_child(args)
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        return memory_child(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="alignsts-bench-"))
    from alignsts_cli import api

    t0 = time.perf_counter()
    conv = api.Converter(device=args.device, precision=args.precision, **engine_args(args.engine, work))
    if conv.engine == "alignsts":
        conv.neural  # load the models now, timed apart
    load_s = time.perf_counter() - t0
    report = {
        "engine": conv.describe(),
        "threads": torch.get_num_threads(),
        "machine": f"{cpu_description()['model']}, {os.cpu_count()} CPUs",
        "cpu": cpu_description(),
        "model_loading_seconds": round(load_s, 2),
        "lengths": bench_lengths(conv, work, args.seconds, args.repeats) if args.seconds else [],
    }
    if args.batch:
        report["batch"] = batch_throughput(conv, work, args.batch)
    if args.cold_start:
        report["cold_start"] = cold_start(args.engine, work, args.device, args.precision, args.threads)
    report["memory"] = []
    for seconds in args.memory_seconds:
        child = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(seconds), "--engine", args.engine, "--device",
             args.device, "--precision", args.precision, "--threads", str(args.threads), "--work", str(work)],
            capture_output=True, text=True, check=True)
        report["memory"].append(json.loads(child.stdout.strip().splitlines()[-1]))
    report["peak_rss_mb_this_process"] = round(peak_rss_mb())
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def print_report(r: dict) -> None:
    cpu = r["cpu"]
    print(f"engine: {r['engine']}; threads: {r['threads']}; machine: {r['machine']} (features: "
          f"{' '.join(cpu['features']) or 'none listed'}; torch {cpu['torch_capability']})")
    print(f"model loading: {r['model_loading_seconds']} s")
    if r["lengths"]:
        stages = [s for s in ("total",) + STAGES if any(f"rtf_{s}" in row for row in r["lengths"])]
        print("real-time factor (processing s / output s), medians:")
        print("input s | " + " | ".join(stages))
        for row in r["lengths"]:
            print(f"{row['seconds']:>7g} | " + " | ".join(f"{row.get('rtf_' + s, float('nan')):.3f}" for s in stages))
    if "batch" in r:
        print(f"batch of {r['batch']['files']} files: {r['batch']['singing_seconds_per_second']:.2f} s of singing per s")
    if "cold_start" in r:
        c = r["cold_start"]
        print(f"cold start: alignsts --help {c['help_seconds']:.2f} s; first convert of 10 s {c['first_convert_seconds']:.1f} s "
              f"(real-time factor {c['first_convert_rtf']:.2f}, whole process)")
        print("  where a fresh process's first convert goes (s): "
              + "; ".join(f"{k} {v:.2f}" for k, v in c["stages"].items()))
    for m in r.get("memory", []):
        print(f"memory: a {m['output_seconds']:.0f} s song in {m['chunks']} chunk(s), fresh process: peak RSS "
              f"{m['peak_rss_mb']:.0f} MB (RTF {m['rtf']:.2f})")
    print(f"peak RSS of this process: {r['peak_rss_mb_this_process']} MB")


if __name__ == "__main__":
    main()
