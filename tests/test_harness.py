"""Real (mock-free) tests of the end-to-end harness in :mod:`demo`: the broker
(:mod:`demo.broker`), the MQTT collector (:mod:`demo.collector`), the virtual microphone
(:mod:`demo.virtual_mic` on :mod:`demo.pulse`) and the tool check (:mod:`demo.tools`).

They start a private ``mosquitto`` and a private PulseAudio daemon and are
skipped, with the missing Debian packages named, where those are absent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from demo.broker import MosquittoBroker, free_port
from demo.collector import MqttCollector, mqtt_publish
from demo.tools import require_tools
from demo.virtual_mic import VirtualMicrophone, xcorr_peak

pytestmark = pytest.mark.e2e

SR = 16000
FAN_WAV = Path("/work/shared/data/asd/mimii_fan_id00/normal/00000000.wav")

_missing_mqtt = require_tools(mqtt=True, audio=False)
_missing_audio = require_tools(mqtt=False, audio=True)
needs_mqtt = pytest.mark.skipif(bool(_missing_mqtt), reason="missing: " + ", ".join(_missing_mqtt))
needs_audio = pytest.mark.skipif(bool(_missing_audio),
                                 reason="missing: " + ", ".join(_missing_audio))

# Every pid the harness starts in this module, checked at the end, and the
# shared module-scoped microphone (closed explicitly by the last test).
_STARTED_PIDS: set[int] = set()
_SHARED: dict[str, VirtualMicrophone] = {}


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _pgrep(name: str) -> list[int]:
    res = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split()]


def _procs_mentioning(text: str) -> list[int]:
    """Live pids whose command line or environment contains ``text``."""
    hits = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry}/{part}", "rb") as fh:
                    if needle in fh.read():
                        if _alive(int(entry)):
                            hits.append(int(entry))
                        break
            except OSError:
                break
    return hits


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vm():
    if _missing_audio:
        pytest.skip("missing: " + ", ".join(_missing_audio))
    with VirtualMicrophone() as mic:
        _STARTED_PIDS.add(mic.proc.pid)
        _STARTED_PIDS.add(mic._keeper.pid)
        _SHARED["vm"] = mic
        yield mic


@pytest.fixture(scope="module")
def excerpt(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 2 s, 16 kHz mono excerpt of a real MIMII fan recording."""
    sf = pytest.importorskip("soundfile")
    if not FAN_WAV.is_file():
        pytest.skip(f"{FAN_WAV} not available")
    data, sr = sf.read(FAN_WAV, dtype="float32", frames=2 * SR)
    assert sr == SR
    if data.ndim > 1:
        data = data[:, 0]
    path = tmp_path_factory.mktemp("audio") / "fan_2s.wav"
    sf.write(path, data, SR, subtype="PCM_16")
    ref, _ = sf.read(path, dtype="float32")  # what paplay actually plays (16-bit)
    return path, ref


def _check_capture(captured: np.ndarray, ref: np.ndarray, max_lag_s: float = 1.0) -> None:
    """Assert that ``ref`` is clearly present in ``captured``."""
    assert captured.ndim == 1 and len(captured) > len(ref), len(captured)
    rms = float(np.sqrt(np.mean(captured**2)))
    ref_rms = float(np.sqrt(np.mean(ref**2)))
    assert rms > 0.1 * ref_rms and rms > 1e-4, f"capture is silent: rms={rms:.2e}"
    peak, lag = xcorr_peak(captured, ref)
    assert peak > 0.5, f"played excerpt not found in capture: peak ncc={peak:.3f}"
    # No multi-second start-up gap: the audio shows up shortly after play().
    assert lag / SR < max_lag_s, f"playback appeared {lag / SR:.2f} s late"
    seg = captured[lag:lag + len(ref)]
    gain = float(np.sqrt(np.mean(seg**2)) / ref_rms)
    assert 0.5 < gain < 2.0, f"unexpected gain {gain:.2f}"


# --------------------------------------------------------------------------
# mosquitto + collector
# --------------------------------------------------------------------------


def test_free_port_is_bindable():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@needs_mqtt
def test_broker_roundtrip_and_restart():
    with MosquittoBroker() as broker:
        _STARTED_PIDS.add(broker.proc.pid)
        port = broker.port
        assert broker.host == "127.0.0.1"
        with socket.create_connection((broker.host, broker.port), timeout=2):
            pass
        with MqttCollector(broker.host, broker.port, "hark/#") as col:
            mqtt_publish(broker.host, broker.port, "hark/node1/event", b'{"score": 1.5}')
            mqtt_publish(broker.host, broker.port, "other/topic", b"ignored")
            mqtt_publish(broker.host, broker.port, "hark/node1/status", b"online", retain=True)
            msgs = col.wait_for(lambda m: m.topic == "hark/node1/status", timeout=5)
            assert msgs[0].payload == b"online" and msgs[0].retain is False  # live delivery
            events = col.messages("hark/+/event")
            assert events == [("hark/node1/event", b'{"score": 1.5}', False)]
            assert events[0].json() == {"score": 1.5}
            assert all(m.topic.startswith("hark/") for m in col.messages())

            with pytest.raises(TimeoutError, match="hark/node1/event"):
                col.wait_for(lambda m: m.topic == "never/seen", timeout=0.5)

            # Restart on the same port; the collector reconnects and resubscribes.
            col.clear_subscribed()
            broker.stop()
            assert not broker.running
            with pytest.raises(OSError):
                socket.create_connection((broker.host, port), timeout=1).close()
            broker.start()
            _STARTED_PIDS.add(broker.proc.pid)
            assert broker.port == port and broker.running
            assert col.wait_subscribed(timeout=10), "collector did not resubscribe"
            assert col.connect_count >= 2
            mqtt_publish(broker.host, broker.port, "hark/node1/event", b"after-restart")
            col.wait_for(lambda m: m.payload == b"after-restart", timeout=5)
        pid = broker.proc.pid
    assert not _alive(pid)
    assert not broker.running


@needs_mqtt
def test_persistent_session_keeps_what_the_broker_acknowledged_across_a_restart():
    """A message the broker acknowledged but had not yet delivered when it stopped reaches
    a persistent-session collector after the restart, with broker persistence on (what
    tests/test_field.py's broker outage relies on)."""
    with MosquittoBroker(listener_config=["allow_anonymous true", "persistence true"]) as broker:
        _STARTED_PIDS.add(broker.proc.pid)
        col = MqttCollector(broker.host, broker.port, "hark/#", client_id="hark-persist",
                            clean_session=False).start()
        try:
            col.stop()  # offline: the broker queues for the session
            mqtt_publish(broker.host, broker.port, "hark/node1/event/anomaly", b"acked", qos=1)
            broker.stop()
            broker.start()
            _STARTED_PIDS.add(broker.proc.pid)
            col.start()
            msgs = col.wait_for(lambda m: m.payload == b"acked", timeout=10)
            assert msgs[0].topic == "hark/node1/event/anomaly"
        finally:
            col.stop()


@needs_mqtt
def test_retained_message_seen_by_late_subscriber():
    with MosquittoBroker() as broker:
        _STARTED_PIDS.add(broker.proc.pid)
        mqtt_publish(broker.host, broker.port, "hark/n/status", "online", retain=True)
        with MqttCollector(broker.host, broker.port) as col:
            (msg,) = col.wait_for(timeout=5)
            assert msg == ("hark/n/status", b"online", True)


@needs_mqtt
def test_broker_errors_are_clear():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(RuntimeError, match="already in use"):
            MosquittoBroker(port=busy.getsockname()[1]).start()
    broker = MosquittoBroker(extra_config=["this_is_not_an_option 1"])
    with pytest.raises(RuntimeError, match=r"mosquitto exited .*log .*mosquitto\.log"):
        with broker:
            pass
    assert broker.proc is None


# --------------------------------------------------------------------------
# virtual microphone
# --------------------------------------------------------------------------

_CAPTURE_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, sounddevice as sd
    device, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    chunks = []
    def callback(indata, frames, t, status):
        if not chunks:
            print("READY", flush=True)
        chunks.append(indata[:, 0].copy())
    with sd.InputStream(device=device, samplerate=16000, channels=1, dtype="float32",
                        callback=callback):
        sd.sleep(int(seconds * 1000))
    np.save(out, np.concatenate(chunks))
""")


@needs_audio
def test_virtual_mic_env_and_source(vm):
    env = vm.env
    assert env["PULSE_SERVER"] == f"unix:{vm.socket_path}"
    assert vm.socket_path.is_socket()
    assert vm.device_name == "pulse"
    sources = vm.pactl("list", "short", "sources")
    assert "virtmic.monitor" in sources and "16000Hz" in sources
    assert "Default Source: virtmic.monitor" in vm.pactl("info")


@needs_audio
def test_virtual_mic_capture_in_subprocess(vm, excerpt, tmp_path):
    """The node's situation: another process captures from the virtual mic."""
    wav, ref = excerpt
    out = tmp_path / "captured.npy"
    child = subprocess.Popen(
        [sys.executable, "-c", _CAPTURE_SCRIPT, vm.device_name, "3.5", str(out)],
        env={**os.environ, **vm.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _STARTED_PIDS.add(child.pid)
    try:
        line = child.stdout.readline()
        assert line.strip() == "READY", child.stderr.read()
        t0 = time.monotonic()
        vm.play(wav)
        played_s = time.monotonic() - t0
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    # paplay returns right after the file has been played out (no 2 s drain).
    assert 1.9 < played_s < 3.0, played_s
    captured = np.load(out)
    assert 3.2 * SR < len(captured) < 4.0 * SR, len(captured) / SR
    _check_capture(captured, ref)


@needs_audio
def test_virtual_mic_capture_in_process(vm, excerpt):
    """Capture inside the test process itself via apply_env()."""
    wav, ref = excerpt
    vm.apply_env()  # before PortAudio is initialised (import), or it re-initialises it
    try:
        sd = pytest.importorskip("sounddevice")
        assert os.environ["PULSE_SERVER"] == vm.env["PULSE_SERVER"]
        # A second call with sounddevice already imported refreshes PortAudio's
        # device list; "pulse" must still be there.
        vm.apply_env()
        assert vm.device_name in [d["name"] for d in sd.query_devices()]
        chunks: list[np.ndarray] = []
        with sd.InputStream(device=vm.device_name, samplerate=SR, channels=1, dtype="float32",
                            callback=lambda indata, f, t, s: chunks.append(indata[:, 0].copy())):
            deadline = time.monotonic() + 2
            while not chunks and time.monotonic() < deadline:
                time.sleep(0.01)
            assert chunks, "no audio callback within 2 s of opening the stream"
            player = vm.play(wav, wait=False)
            assert player.wait(timeout=10) == 0
            time.sleep(0.3)
    finally:
        vm.restore_env()
    assert "PULSE_SERVER" not in os.environ or os.environ["PULSE_SERVER"] != vm.env["PULSE_SERVER"]
    _check_capture(np.concatenate(chunks), ref)


@needs_audio
def test_virtual_mic_plays_sequence_and_can_be_cut_short(vm, excerpt, tmp_path):
    sf = pytest.importorskip("soundfile")
    wav, ref = excerpt
    flac = tmp_path / "fan_2s.flac"
    sf.write(flac, ref, SR)
    t0 = time.monotonic()
    vm.play([wav, flac])  # WAV then FLAC, back to back
    assert 3.8 < time.monotonic() - t0 < 6.0
    player = vm.play([wav, wav, wav], wait=False)
    _STARTED_PIDS.add(player.pid)
    time.sleep(0.5)
    assert player.poll() is None
    vm.stop_playback()
    assert player.poll() is not None
    assert not [p for p in _pgrep("paplay") if p in _procs_mentioning(str(vm.workdir))]
    with pytest.raises(FileNotFoundError):
        vm.play(tmp_path / "missing.wav")


@needs_audio
def test_virtual_mic_is_private_and_cleaned_up(excerpt):
    """A second instance is independent, and stop() leaves no process behind."""
    wav, _ = excerpt
    with VirtualMicrophone() as other:
        pids = [other.proc.pid, other._keeper.pid]
        _STARTED_PIDS.update(pids)
        workdir = str(other.workdir)
        player = other.play(wav, wait=False)
        pids.append(player.pid)
        assert _procs_mentioning(workdir), "expected our processes to be visible"
    for pid in pids:
        assert not _alive(pid), pid
    assert _procs_mentioning(workdir) == []
    assert not Path(workdir).exists()


def test_require_tools_reports_nothing_missing_here():
    missing = require_tools()
    assert isinstance(missing, list)
    if missing:
        pytest.skip("missing: " + ", ".join(missing))


def test_zz_no_processes_left():
    """Run last: close the shared microphone and check nothing we started survives."""
    # Module fixtures are torn down only after the last test, so close the
    # shared microphone explicitly (close() is idempotent) before looking.
    mic = _SHARED.pop("vm", None)
    if mic is not None:
        workdir = str(mic.workdir)
        mic.close()
        assert _procs_mentioning(workdir) == []
    leftovers = {
        name: [p for p in _pgrep(name) if p in _STARTED_PIDS]
        for name in ("mosquitto", "pulseaudio", "pacat", "paplay")
    }
    assert not any(leftovers.values()), leftovers
    assert not [p for p in _STARTED_PIDS if _alive(p)]
