"""The web page (alignsts_cli/web.py) as a user meets it: `alignsts web` started on 127.0.0.1 and driven in
a real headless browser (Debian's Chromium through Selenium; bash scripts/install-chromium.sh installs it).

The screenshot of the page after a conversion is saved to tests/artifacts/web-page.png (the README shows a copy,
docs/web-page.png).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf

from alignsts_cli.errors import AlignSTSError

ROOT = Path(__file__).resolve().parents[1]
SPEECH, MELODY = ROOT / "examples" / "speech.wav", ROOT / "examples" / "melody.mid"
ARTIFACTS = ROOT / "tests" / "artifacts"
MELODY_SECONDS = 9.5  # examples/melody.mid ends at 9.5 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _short_tune(path: Path, seconds: float = 3.0) -> Path:
    """A one-note-per-beat MIDI file of ``seconds`` at 120 bpm."""
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000)])
    for k in range(int(seconds * 2)):
        track.append(mido.Message("note_on", note=57 + (k % 5), velocity=80, time=0))
        track.append(mido.Message("note_off", note=57 + (k % 5), velocity=0, time=480))
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks.append(track)
    midi.save(path)
    return path


def _hear_ctrl_c() -> None:
    """A suite started in the background by a shell without job control (`pytest &` in a script) has SIGINT
    ignored, which its children inherit, and then Python never turns Ctrl-C into KeyboardInterrupt: the server
    would only stop when killed. Its Ctrl-C is what these tests check, so the child starts with the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """`alignsts web` in a subprocess, with its own temporary folder (to see that it is cleaned)."""

    def __init__(self, tmp: Path, *args: str):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "alignsts_cli", "web", "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=_hear_ctrl_c)
        self.line = self.proc.stdout.readline()  # "alignsts web page at URL ..." once it listens
        if "web page at" not in self.line:
            self.proc.kill()
            raise AssertionError(f"the server did not start: {self.line}{self.proc.stderr.read()}")
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self) -> str:
        self.proc.send_signal(2)  # Ctrl-C
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("web"), "--max-upload-mb", "2")
    yield srv
    srv.stop()
    assert not list(srv.tmp.glob("alignsts-web-*")), "the server left its temporary folder behind"


@pytest.fixture(scope="module")
def browser_factory():
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[test]'")
    if shutil.which("chromedriver") is None or shutil.which("chromium") is None:
        pytest.fail("Chromium is not installed; run `bash scripts/install-chromium.sh`")
    made = []

    def make(microphone: Path | None = None):
        """A headless Chromium; ``microphone``: a WAV file the page hears as the microphone."""
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        args = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"]
        if microphone is not None:
            args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-audio-capture={microphone}"]
        for arg in args:
            options.add_argument(arg)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
        made.append(driver)
        return driver

    yield make
    for d in made:
        d.quit()


def _open(driver, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url)
    WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.ID, "convert")))


def _upload(driver, speech: Path, melody: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#speech input[type=file]").send_keys(str(speech))
    driver.find_element(By.CSS_SELECTOR, "#melody input[type=file]").send_keys(str(melody))
    time.sleep(2)  # the uploads finish (the page shows the file names)


def _wait_result(driver, timeout: float = 240) -> tuple[str | None, str]:
    """(the download link or None, the status line) once the conversion has finished."""
    from selenium.webdriver.common.by import By

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#download a")]
        status = driver.find_element(By.ID, "status").text.strip()
        if any(links) or status.startswith("error"):
            return next((h for h in links if h), None), status
        time.sleep(0.5)
    raise AssertionError(f"no result within {timeout} s; status: {driver.find_element(By.ID, 'status').text!r}")


def _fetch(url: str, path: Path) -> Path:
    with urllib.request.urlopen(url, timeout=30) as r:
        path.write_bytes(r.read())
    return path


def test_convert_in_the_browser_plays_and_downloads_the_song(server, browser_factory, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser_factory()
    _open(driver, server)
    _upload(driver, SPEECH, MELODY)
    parts = driver.find_element(By.TAG_NAME, "body").text
    assert "Melody" in parts and "sung" in parts  # the inspect table of the score
    driver.find_element(By.ID, "convert").click()
    link, status = _wait_result(driver)
    assert link and status.startswith("sang 9.5 s with the psola engine"), status
    song = _fetch(link, tmp_path / "song.wav")
    info = sf.info(str(song))
    assert info.format == "WAV" and abs(info.duration - MELODY_SECONDS) < 0.1
    audio, _ = sf.read(song)
    assert np.sqrt(np.mean(audio**2)) > 0.01  # sound, not silence
    figures = driver.find_element(By.ID, "figures").text
    assert "pitch accuracy" in figures and "speaker similarity" in figures
    accuracy = float(figures.split("pitch accuracy (frames within 50 cents of the melody)")[1].split()[0])
    assert accuracy > 0.9
    picture = driver.find_element(By.CSS_SELECTOR, "#picture img")
    assert picture.get_attribute("src")
    assert driver.find_elements(By.CSS_SELECTOR, "#song audio") or "Song" in driver.page_source
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "web-page.png"))
    assert (ARTIFACTS / "web-page.png").stat().st_size > 10_000


def test_speech_recorded_with_the_microphone_is_sung(server, browser_factory, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser_factory(microphone=SPEECH)  # the browser's microphone plays the example speech
    _open(driver, server)

    def button(text):
        return next(b for b in driver.find_elements(By.CSS_SELECTOR, "#speech button") if b.text.strip() == text)

    driver.find_element(By.CSS_SELECTOR, "#speech button[aria-label='Record audio']").click()
    time.sleep(1)
    button("Record").click()
    time.sleep(5)
    button("Stop").click()
    time.sleep(2)
    driver.find_element(By.CSS_SELECTOR, "#melody input[type=file]").send_keys(str(MELODY))
    time.sleep(2)
    driver.find_element(By.ID, "convert").click()
    link, status = _wait_result(driver)
    assert link and status.startswith("sang 9.5 s"), status
    assert abs(sf.info(str(_fetch(link, tmp_path / "mic.wav"))).duration - MELODY_SECONDS) < 0.1


def test_a_corrupt_upload_gives_the_one_line_error(server, browser_factory, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "broken.mid"
    bad.write_bytes(b"MThd this is not a MIDI file at all" * 10)
    driver = browser_factory()
    _open(driver, server)
    _upload(driver, SPEECH, bad)
    driver.find_element(By.ID, "convert").click()
    link, status = _wait_result(driver)
    assert link is None and status.startswith("error:") and "broken.mid" in status, status
    assert len(status.splitlines()) == 1 and "Traceback" not in driver.page_source


def test_two_conversions_at_once_each_get_their_own_song(server, browser_factory, tmp_path):
    from selenium.webdriver.common.by import By

    short = _short_tune(tmp_path / "short.mid", 3.0)
    drivers = [browser_factory(), browser_factory()]
    for driver, melody in zip(drivers, (MELODY, short)):
        _open(driver, server)
        _upload(driver, SPEECH, melody)
    for driver in drivers:  # both pressed before either finishes: the queue runs them in turn
        driver.find_element(By.ID, "convert").click()
    results = [None, None]

    def wait(k):
        results[k] = _wait_result(drivers[k])

    threads = [threading.Thread(target=wait, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (long_link, _), (short_link, _) = results
    assert long_link and short_link and long_link != short_link
    long_song = sf.info(str(_fetch(long_link, tmp_path / "a.wav")))
    short_song = sf.info(str(_fetch(short_link, tmp_path / "b.wav")))
    assert abs(long_song.duration - MELODY_SECONDS) < 0.1 and abs(short_song.duration - 3.0) < 0.1


def test_limits_oversize_upload_and_paths_outside(server, tmp_path):
    big = tmp_path / "big.wav"
    big.write_bytes(os.urandom(3 * 1024 * 1024))  # over the server's --max-upload-mb 2
    boundary = "alignstsboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + big.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(server.url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413 and b"maximum allowed size" in refused.value.read()
    for outside in ("/etc/passwd", str(ROOT / "README.md"), str(server.tmp / ".." / "x")):
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(server.url + "gradio_api/file=" + outside, timeout=30)
        assert denied.value.code in (403, 404), outside


def test_the_studio_takes_only_its_own_files_and_loads_engines_once(tmp_path):
    from alignsts_cli import web

    workspace = web.Workspace(tmp_path)
    try:
        studio = web.Studio(workspace, device="cpu")
        with pytest.raises(AlignSTSError, match="not one this page was given"):
            studio.convert("/etc/passwd", None, "Ode to Joy")
        with pytest.raises(AlignSTSError, match="not one this page was given"):
            studio.convert(str(workspace.root / ".." / "elsewhere.wav"), None, "Ode to Joy")
        speech = workspace.uploads / "speech.wav"
        shutil.copy(SPEECH, speech)
        first = studio.convert(str(speech), None, "Ode to Joy", fmt="flac")
        assert first.download.suffix == ".flac" and sf.info(str(first.download)).format == "FLAC"
        assert abs(sf.info(str(first.audio)).duration - 16 * 60 / web.TUNE_BPM) < 0.1  # 16 beats at 100 bpm
        engine = studio.converter("auto")
        second = studio.convert(str(speech), None, "Twinkle, Twinkle, Little Star")
        assert studio.converter("auto") is engine and second.audio.parent != first.audio.parent
        neural = studio.convert(str(speech), None, "Frère Jacques", engine="alignsts", seed=3)
        assert neural.picture is not None and neural.picture.stat().st_size > 10_000  # mel, F0 and attention
        assert "speaker similarity" in neural.figures
        choices, table, _ = studio.tracks(str(workspace.tunes["Ode to Joy"]))
        assert choices[0] == "auto" and len(table) == 1 and table[0][-1] == "sung"
        # a two-part score: the part picked on the page is the one sung
        score = workspace.uploads / "two.mid"
        midi = mido.MidiFile(ticks_per_beat=480)
        for name, pitch in (("Lead", 64), ("Bass", 48)):
            track = mido.MidiTrack([mido.MetaMessage("track_name", name=name)])
            for _ in range(4):
                track += [mido.Message("note_on", note=pitch, velocity=80, channel=len(midi.tracks), time=0),
                          mido.Message("note_off", note=pitch, velocity=0, channel=len(midi.tracks), time=480)]
            midi.tracks.append(track)
        midi.save(score)
        choices, table, _ = studio.tracks(str(score))
        other = next(c for c, row in zip(choices[1:], table) if row[-1] != "sung")
        default = studio.convert(str(speech), str(score), web.NO_TUNE)
        picked = studio.convert(str(speech), str(score), web.NO_TUNE, track=other)
        classes = [{round(n.pitch) % 12 for n in song.result.melody.notes} for song in (default, picked)]
        assert len(table) == 2 and sorted(map(sorted, classes)) == [[0], [4]]  # E of one part, C of the other
    finally:
        workspace.remove()
    assert not workspace.root.exists()


def test_without_gradio_one_line_and_a_warning_beyond_this_machine(tmp_path, monkeypatch):
    import importlib.util

    from alignsts_cli import web

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    with pytest.raises(AlignSTSError, match=r"pip install 'alignsts\[web\]'"):
        web.serve()
    monkeypatch.undo()
    srv = Server(tmp_path / "open", "--host", "0.0.0.0")
    err = srv.stop()
    assert "warning: --host 0.0.0.0 lets every machine" in err
    assert json.dumps(srv.line)  # it printed where it listens


def test_a_taken_port_or_a_bad_limit_is_one_line_before_any_work(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, says in ((["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
                           (["--port", "70000"], "give a port from 1 to 65535"),
                           (["--max-upload-mb", "0"], "give a size above 0")):
            proc = subprocess.run([sys.executable, "-m", "alignsts_cli", "web", *args], capture_output=True,
                                  text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
            assert proc.returncode == 1 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("alignsts-web-*"))  # refused before the workspace was made
