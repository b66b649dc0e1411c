"""``make test-arm64``: the node proven on its real architecture, arm64, under emulation.

Raspberry Pi 4/5 and Jetson nodes are aarch64. This script builds (once) a Debian bookworm
arm64 root with ``debootstrap``, runs it through ``qemu-aarch64`` (Debian's
``qemu-user-static``, registered with ``binfmt_misc``), installs the node there exactly as
*Installing on a Raspberry Pi* in the README says, then runs the README's *Running a real
node* steps in it and on this machine (x86_64), against one mosquitto on the host's loopback
(the chroot shares the host's network), and checks that both made the same decisions.

Steps
-----
1. Host checks (:func:`prepare_host`): root; ``debootstrap``, ``qemu-user-static`` and
   ``binfmt-support`` installed (installed with ``apt-get`` when missing);
   ``binfmt_misc`` mounted and ``qemu-aarch64`` enabled with the ``F`` flag (the interpreter is
   opened at registration, so the chroot needs no copy of it). Anything missing that cannot be
   fixed ends the run with exit status 2 and a message saying what to do.
2. The root (:func:`build_root`): ``debootstrap --arch=arm64 --variant=minbase`` with Debian's
   ``python3 python3-venv libportaudio2 libsndfile1`` into ``$HARK_ARM64_ROOT``
   (default ``/var/cache/hark/arm64-root``), built in ``<root>.partial`` and renamed when
   complete, so a broken build is never reused; reused as long as it exists.
3. The wheels (:func:`fetch_wheels`): the ``edge`` extra at pinned versions, downloaded on the
   host for ``aarch64``, CPython 3.11 (Debian bookworm's), binary wheels only, into
   ``<root>-wheels``. The pins are ``requirements/*.txt`` when the project has one, otherwise
   the versions installed in the host's ``.venv`` (``pip freeze``).
4. The install (:class:`Arm64`): the project copied to ``/opt/hark`` in the root (without
   ``.venv``, ``var``, ``etc``, ``reports``, ``build``), then, as the README says,
   ``python3 -m venv .venv && .venv/bin/pip install '.[edge]'`` (offline:
   ``--no-index --find-links`` the wheels, ``-c`` the pins). The venv is kept between runs
   while the pins and wheels stay the same. TensorFlow must not be importable there.
5. The node (:func:`node_steps`), on both machines, each in its own copy of the project:
   ``etc/node.yaml`` from the shipped defaults (node id, broker), ``python -m firmware_config
   validate``, ``python -m calibration record --from`` the demo calibration clips,
   ``python -m calibration enroll --from`` the demo shots of "smart mirror" and "computer",
   then ``python -m edge run --replay`` the demo normal and anomalous fan clips and the demo
   keyword stream (the default bundles run without Numba: no ``var/numba-cache`` may appear), then a
   second start replaying one clip. Each start is timed from process start to the node's
   ``window 1 score`` log line.
6. The comparison (:func:`compare`): the same number of windows with the same decisions,
   anomaly scores and thresholds within ``--rtol`` (relative), the same keywords detected with
   onsets within one 16 ms frame.

The result is printed and written to ``reports/arm64.json`` (read by ``make bench``) and
``reports/arm64.md``; the logs of every step go to ``reports/arm64-logs/``. Exit status: 0
when both machines agree, 1 when a step failed or they disagree, 2 when this machine cannot
emulate arm64.

Emulation is slow, int8 and NEON code most (100-300 times slower than on the host): on a
2-core x86_64 machine a run took 67 minutes, 58 of them in the two enrollments (which embed and
search every shipped negative recording), the replay 6; the first run builds the root too
(2.5 minutes). Too slow for CI; ``make test`` does not run it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bench.kws_demo import KWS_DEMO_KEYWORDS
from demo.broker import MosquittoBroker
from demo.collector import MqttCollector
from firmware_config.defaults import PATH_KEYS, default_config_doc, write_config_doc

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = Path("/var/cache/hark/arm64-root")
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
#: Debian packages of the root: the README's ``apt-get install`` line on a Pi (git aside: the
#: project is copied in) and the interpreter.
DEB_PACKAGES = ("python3", "python3-venv", "libportaudio2", "libsndfile1", "ca-certificates")
HOST_PACKAGES = {"debootstrap": "debootstrap", "qemu-aarch64-static": "qemu-user-static",
                 "update-binfmts": "binfmt-support"}
#: Tags of the wheels the root's Python (Debian bookworm: CPython 3.11, glibc 2.36) takes.
WHEEL_TAGS = ("--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_27_aarch64",
              "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
              "--implementation", "cp")
#: The emulated CPU: a Raspberry Pi 4's core (the oldest supported board; no crypto, no dotprod
#: extensions), so an instruction a Pi 4 lacks fails here too (SIGILL).
QEMU_CPU = "cortex-a72"
#: ``/proc/cpuinfo`` of that CPU, one block per host CPU. qemu-user 7.2 shows the guest the
#: host's (x86) ``/proc/cpuinfo``: LiteRT's CPU detection then crashes (SIGSEGV while the
#: interpreter is created) and LLVM (Numba) cannot name the CPU. A real Pi has its own.
CPUINFO_BLOCK = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                 "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                 "CPU part\t: 0xd08\nCPU revision\t: 3\n")
PROJECT_IN_ROOT = "/opt/hark"
WHEELS_IN_ROOT = "/mnt/hark-wheels"
COPY_IGNORE = (".venv", ".git", "var", "etc", "reports", "build", "__pycache__", "*.egg-info",
               ".pytest_cache", ".hypothesis", ".gl")
CLIPS = Path("demo/clips")
KWS = CLIPS / "kws"
FRAME_SECONDS = 0.016  # one keyword-spotting frame (edge/kws.py)
STEP_TIMEOUT = 3 * 3600.0  # an enrollment took 34 min, on a shared machine


class CannotEmulate(Exception):
    """This machine cannot run arm64 binaries (the message says what to do)."""


class StepFailed(Exception):
    """A step of the install or of the README's procedure failed."""


def say(msg: str) -> None:
    print(f"[test-arm64 {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- host ---------------------------------------------------------------------------------
def _binfmt_entry() -> Path:
    return Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


def prepare_host() -> None:
    """Make this machine able to run arm64 binaries, or raise :class:`CannotEmulate`."""
    if os.geteuid() != 0:
        raise CannotEmulate(
            "must run as root: it builds an arm64 root with debootstrap, chroots into it and "
            "registers qemu-aarch64 with binfmt_misc (run: sudo make test-arm64)")
    missing = sorted({pkg for tool, pkg in HOST_PACKAGES.items()
                      if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None})
    if missing:
        say(f"installing {' '.join(missing)}")
        r = subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True,
                           text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if r.returncode != 0:
            raise CannotEmulate(f"could not install {' '.join(missing)} (apt-get exit "
                                f"{r.returncode}): {r.stderr.strip()[-500:]}")
    status = Path("/proc/sys/fs/binfmt_misc/status")
    if not status.exists():
        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(status.parent)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise CannotEmulate(f"binfmt_misc is not mounted and cannot be ({r.stderr.strip()}):"
                                " a container needs the host to provide it")
    entry = _binfmt_entry()
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        raise CannotEmulate(f"qemu-aarch64 is not registered with binfmt_misc ({entry} "
                            "missing or disabled); try: update-binfmts --enable qemu-aarch64")
    flags = next((ln.split(":", 1)[1].strip() for ln in entry.read_text().splitlines()
                  if ln.startswith("flags:")), "")
    if "F" not in flags:
        raise CannotEmulate(f"qemu-aarch64 is registered without the F (fix-binary) flag "
                            f"({entry}: flags {flags!r}), so it cannot run inside a chroot; "
                            "reinstall Debian's qemu-user-static")


def build_root(root: Path) -> float:
    """Debootstrap the arm64 root unless it exists; return the seconds it took (0: reused)."""
    if (root / "usr/bin/python3").exists():
        return 0.0
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    say(f"building the arm64 root in {root} (debootstrap, a few minutes)")
    t0 = time.monotonic()
    log = partial.parent / f"{root.name}-debootstrap.log"
    with open(log, "w") as out:
        r = subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase",
                            f"--include={','.join(DEB_PACKAGES)}", SUITE, str(partial),
                            os.environ.get("HARK_DEBIAN_MIRROR", MIRROR)],
                           stdout=out, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise StepFailed(f"debootstrap failed (exit {r.returncode}), see {log}:\n"
                         + log.read_text()[-1500:])
    shutil.rmtree(root, ignore_errors=True)  # an incomplete one (no python3)
    partial.rename(root)
    return time.monotonic() - t0


def constraints_file() -> Path | None:
    """The project's pinned requirements (``requirements/*.txt``), if it has them."""
    found = sorted((ROOT / "requirements").glob("*.txt"))
    for name in ("edge.txt", "constraints.txt"):
        if ROOT / "requirements" / name in found:
            return ROOT / "requirements" / name
    return found[0] if len(found) == 1 else None


def edge_requirements() -> list[str]:
    """The node's requirements: ``project.dependencies`` and the ``edge`` extra."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*meta["dependencies"], *meta["optional-dependencies"]["edge"]]


def fetch_wheels(wheels: Path) -> Path:
    """Download the aarch64 wheels of the node's requirements; return the constraints file."""
    wheels.mkdir(parents=True, exist_ok=True)
    pinned = constraints_file()
    cons = wheels / "constraints.txt"
    if pinned is not None:
        shutil.copyfile(pinned, cons)
        say(f"pins: {pinned.relative_to(ROOT)}")
    else:
        freeze = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "pip", "freeze",
                                 "--exclude-editable"], capture_output=True, text=True,
                                check=True).stdout
        cons.write_text("".join(ln + "\n" for ln in freeze.splitlines()
                                if "==" in ln and not ln.startswith(("-e", "#"))))
        say("pins: the versions in .venv (pip freeze), no requirements/*.txt")
    say(f"downloading aarch64 wheels to {wheels}")
    r = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "pip", "download", "-q",
                        "--only-binary=:all:", *WHEEL_TAGS, "-d", str(wheels), "-c", str(cons),
                        *edge_requirements(), "setuptools>=77", "wheel"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise StepFailed(f"pip download of the aarch64 wheels failed:\n{r.stderr[-2000:]}")
    return cons


# -- the two machines ---------------------------------------------------------------------
@dataclass
class Machine:
    """Where the README's commands run: a copy of the project and how to run a command there."""

    name: str
    project: Path        # the copy, as seen from the host
    logs: Path
    timings: dict[str, float] = field(default_factory=dict)

    def argv(self, cmd: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def cwd(self) -> Path | None:
        return self.project

    def run(self, step: str, cmd: Sequence[str], timeout: float = STEP_TIMEOUT) -> str:
        """Run ``cmd`` in the project copy; its output goes to ``logs/<name>-<step>.log``."""
        log = self.logs / f"{self.name}-{step}.log"
        say(f"{self.name}: {shlex.join(cmd)}")
        t0 = time.monotonic()
        with open(log, "w") as out:
            try:
                r = subprocess.run(self.argv(cmd), cwd=self.cwd(), stdout=out,
                                   stderr=subprocess.STDOUT, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise StepFailed(f"{self.name}: {step} took more than {timeout:.0f} s, see {log}")
        self.timings[step] = round(time.monotonic() - t0, 1)
        text = log.read_text(errors="replace")
        if r.returncode != 0:
            raise StepFailed(f"{self.name}: {shlex.join(cmd)} exited {r.returncode}, see {log}:"
                             f"\n{text[-1500:]}")
        say(f"{self.name}: {step} done in {self.timings[step]:.0f} s")
        return text

    def popen(self, cmd: Sequence[str]) -> subprocess.Popen:
        return subprocess.Popen(self.argv(cmd), cwd=self.cwd(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)


class X86(Machine):
    """This machine: the repository's ``.venv`` (as ``.venv/bin/python``) on a copy."""

    def argv(self, cmd):
        cmd = list(cmd)
        if cmd[0] == ".venv/bin/python":
            cmd[0] = str(ROOT / ".venv/bin/python")
        return cmd


class Arm64(Machine):
    """The emulated root: each command in a private mount namespace (``/proc`` with an arm64
    ``cpuinfo``, ``/sys``, ``/dev`` and the wheels mounted for it, gone when it exits),
    chrooted, in ``/opt/hark``, on an emulated :data:`QEMU_CPU`."""

    def __init__(self, root: Path, wheels: Path, logs: Path):
        super().__init__("arm64", root / PROJECT_IN_ROOT.lstrip("/"), logs)
        self.root, self.wheels = root, wheels
        self.cpuinfo = root.with_name(root.name + "-cpuinfo")
        self.cpuinfo.write_text("\n".join(CPUINFO_BLOCK.format(i=i)
                                          for i in range(os.cpu_count() or 1)))

    def cwd(self):
        return None

    def argv(self, cmd):
        r = shlex.quote(str(self.root))
        mounts = (f"mount -t proc proc {r}/proc && "
                  f"mount --bind {shlex.quote(str(self.cpuinfo))} {r}/proc/cpuinfo && "
                  f"mount -t sysfs sys {r}/sys && "
                  f"mount --rbind /dev {r}/dev && mkdir -p {r}{WHEELS_IN_ROOT} && "
                  f"mount --bind {shlex.quote(str(self.wheels))} {r}{WHEELS_IN_ROOT}")
        inner = f"cd {PROJECT_IN_ROOT} && exec {shlex.join(cmd)}"
        env = ["env", "-i", f"QEMU_CPU={QEMU_CPU}", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME=/root", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1"]
        chroot = shlex.join(["chroot", str(self.root), *env, "sh", "-c", inner])
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f"{mounts} && exec {chroot}"]


def copy_project(dest: Path, keep: Sequence[str] = ()) -> None:
    """A fresh copy of the project at ``dest``; entries named in ``keep`` stay as they are."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in dest.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    ignore = shutil.ignore_patterns(*COPY_IGNORE)
    for p in ROOT.iterdir():
        if ignore(str(ROOT), [p.name]):
            continue
        if p.is_dir():
            shutil.copytree(p, dest / p.name, ignore=ignore)
        else:
            shutil.copy2(p, dest / p.name)


def install_arm64(m: Arm64, cons: Path) -> dict:
    """The README's install on the Pi, offline; return facts about the result."""
    wheel_names = sorted(p.name for p in m.wheels.glob("*.whl"))
    key = hashlib.sha256((cons.read_text() + "\n".join(wheel_names)).encode()).hexdigest()
    venv_key = m.project / ".venv" / ".hark-wheels-key"
    keep = (".venv",) if venv_key.exists() and venv_key.read_text() == key else ()
    copy_project(m.project, keep=keep)
    if not keep:
        m.run("venv", ["python3", "-m", "venv", ".venv"])
    pins = (f"requirements/{constraints_file().name}" if constraints_file()
            else f"{WHEELS_IN_ROOT}/constraints.txt")
    m.run("install", [".venv/bin/pip", "install", "--no-index", "--find-links", WHEELS_IN_ROOT,
                      "-c", pins, ".[edge]"])
    venv_key.write_text(key)
    probe = m.run("probe", [".venv/bin/python", "-c", (
        "import importlib.util, json, platform, sys, numba, numpy, ai_edge_litert\n"
        "from importlib.metadata import version\n"
        "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),"
        " 'numba': numba.__version__, 'numpy': numpy.__version__,"
        " 'ai_edge_litert': version('ai-edge-litert'),"
        " 'tensorflow': importlib.util.find_spec('tensorflow') is not None,"
        " 'keras': importlib.util.find_spec('keras') is not None}))")])
    facts = json.loads(probe.strip().splitlines()[-1])
    if facts["machine"] != "aarch64":
        raise StepFailed(f"the root's Python runs as {facts['machine']!r}, not aarch64")
    if facts["tensorflow"] or facts["keras"]:
        raise StepFailed("TensorFlow/Keras is installed in the node's environment on arm64: "
                         "the edge extra must never pull it in")
    say(f"arm64: installed {facts}")
    return facts


# -- the README's procedure -----------------------------------------------------------------
def write_node_config(m: Machine, node_id: str, broker: MosquittoBroker) -> str:
    """``etc/node.yaml``: the shipped defaults with the node id and the broker edited, its
    paths relative to ``etc/`` as in ``default.yaml`` (so the file is valid in either copy)."""
    doc = default_config_doc(node={"id": node_id},
                             mqtt={"host": broker.host, "port": broker.port})
    for section, key in PATH_KEYS:
        value = Path(doc[section][key])
        doc[section][key] = os.path.relpath(value, ROOT / "etc")
    (m.project / "etc").mkdir(exist_ok=True)
    write_config_doc(m.project / "etc" / "node.yaml", doc)
    return "etc/node.yaml"


def start_node(m: Machine, step: str, cfg: str, replay: Sequence[str],
               collector: MqttCollector, timeout: float = STEP_TIMEOUT) -> dict:
    """``python -m edge run --replay``: its events, windows and the time to ``window 1``."""
    collector.clear()
    cmd = [".venv/bin/python", "-m", "edge", "run", "--config", cfg, "--replay", *replay]
    say(f"{m.name}: {shlex.join(cmd)}")
    log = m.logs / f"{m.name}-{step}.log"
    first: list[float] = []
    t0 = time.monotonic()
    proc = m.popen(cmd)

    def pump():
        with open(log, "w") as out:
            for line in proc.stderr:
                if not first and "window 1 score" in line:
                    first.append(time.monotonic() - t0)
                out.write(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise StepFailed(f"{m.name}: {step} took more than {timeout:.0f} s, see {log}")
    t.join(10)
    m.timings[step] = round(time.monotonic() - t0, 1)
    text = log.read_text(errors="replace")
    if rc != 0 or not first:
        raise StepFailed(f"{m.name}: {shlex.join(cmd)} exited {rc}"
                         f"{'' if first else ' without scoring a window'}, see {log}:\n"
                         f"{text[-1500:]}")
    windows = text.count(" score ")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(collector.messages("+/+/+/event/anomaly")) < windows:
        time.sleep(0.2)
    events = {kind: [msg.json() for msg in collector.messages(f"+/+/+/event/{kind}")]
              for kind in ("anomaly", "keyword")}
    if len(events["anomaly"]) != windows:
        raise StepFailed(f"{m.name}: {windows} windows scored in the log but "
                         f"{len(events['anomaly'])} anomaly events received, see {log}")
    say(f"{m.name}: {step}: {windows} windows, {len(events['keyword'])} keyword(s), "
        f"window 1 after {first[0]:.1f} s, done in {m.timings[step]:.0f} s")
    return {"first_window_s": round(first[0], 2), "events": events}


def node_steps(m: Machine, broker: MosquittoBroker) -> dict:
    """The README's *Running a real node*, with the demo clips for the microphone."""
    node_id = f"{m.name}-check"
    with MqttCollector(broker.host, broker.port, topic_filter=f"hark/+/{node_id}/#") as col:
        cfg = write_node_config(m, node_id, broker)
        m.run("validate", [".venv/bin/python", "-m", "firmware_config", "validate", cfg])
        cal = sorted(str(p) for p in (ROOT / CLIPS).glob("*_calibration_*.flac"))
        m.run("calibration", [".venv/bin/python", "-m", "calibration", "record", "--config",
                              cfg, "--from", *(os.path.relpath(p, ROOT) for p in cal)])
        for kw in KWS_DEMO_KEYWORDS:
            shots = sorted(str(KWS / p.name) for p in (ROOT / KWS).glob(f"{kw}_shot_*.flac"))
            m.run(f"enroll-{kw}", [".venv/bin/python", "-m", "calibration", "enroll",
                                   "--config", cfg, "--keyword", kw, "--from", *shots])
        replay = [*(str(CLIPS / p.name) for kind in ("normal", "anomaly")
                    for p in sorted((ROOT / CLIPS).glob(f"*_test_{kind}_*.flac"))),
                  str(KWS / "stream.flac")]
        first = start_node(m, "replay", cfg, replay, col)
        if (m.project / "var" / "numba-cache").exists():
            raise StepFailed(f"{m.name}: the node compiled Numba kernels (var/numba-cache); "
                             "with the default bundles it must not load Numba")
        second = start_node(m, "second-start", cfg, replay[:1], col)
    return {"timings": dict(m.timings), "first_start_s": first["first_window_s"],
            "second_start_s": second["first_window_s"],
            "events": first["events"]}


# -- the verdict ------------------------------------------------------------------------------
def compare(x86: dict, arm: dict, rtol: float) -> tuple[dict, list[str]]:
    """Agreement figures and the list of disagreements (empty: the same decisions)."""
    problems = []
    xa, aa = x86["events"]["anomaly"], arm["events"]["anomaly"]
    if len(xa) != len(aa):
        problems.append(f"{len(xa)} windows on x86_64, {len(aa)} on arm64")

    def rel(a, b):
        return abs(a - b) / max(abs(a), abs(b), 1e-12)

    score_rel = max((rel(a["anomaly_score"], b["anomaly_score"]) for a, b in zip(xa, aa)),
                    default=0.0)
    thr_rel = max((rel(a["threshold"], b["threshold"]) for a, b in zip(xa, aa)), default=0.0)
    flips = [i + 1 for i, (a, b) in enumerate(zip(xa, aa)) if a["decision"] != b["decision"]]
    if score_rel > rtol:
        problems.append(f"anomaly scores differ by up to {score_rel:.2e} relative (> {rtol:g})")
    if thr_rel > rtol:
        problems.append(f"decision thresholds differ by {thr_rel:.2e} relative (> {rtol:g})")
    if flips:
        problems.append(f"decisions differ in windows {flips}")
    xk = sorted((e["keyword"], e["onset_s"]) for e in x86["events"]["keyword"])
    ak = sorted((e["keyword"], e["onset_s"]) for e in arm["events"]["keyword"])
    onset_frames = []
    if [k for k, _ in xk] != [k for k, _ in ak]:
        problems.append(f"keywords differ: x86_64 {xk}, arm64 {ak}")
    else:
        onset_frames = [round(abs(a - b) / FRAME_SECONDS, 2) for (_, a), (_, b) in zip(xk, ak)]
        if any(f > 1.0 + 1e-6 for f in onset_frames):
            problems.append(f"keyword onsets differ by more than one frame: {onset_frames}")
    figures = {"windows": [len(xa), len(aa)], "anomalous": [sum(e["anomalous"] for e in xa),
                                                            sum(e["anomalous"] for e in aa)],
               "max_rel_score_diff": score_rel, "max_rel_threshold_diff": thr_rel,
               "decision_flips": flips, "keywords": [f"{k}@{t:.3f}" for k, t in xk],
               "keywords_arm64": [f"{k}@{t:.3f}" for k, t in ak],
               "onset_diff_frames": onset_frames, "rtol": rtol}
    return figures, problems


def render(result: dict) -> str:
    fig, t = result["agreement"], result["timings"]
    lines = [f"# make test-arm64 ({result['date']}): {'PASS' if result['ok'] else 'FAIL'}", "",
             f"arm64 root {result['root']} (qemu-aarch64, {result['emulated_cpu']}): "
             f"{result['arm64_env']}", "",
             "| step | x86_64 (s) | arm64 under qemu (s) |", "|---|---|---|"]
    for step in ("root", "wheels", "venv", "install", "validate", "calibration",
                 *(f"enroll-{kw}" for kw in KWS_DEMO_KEYWORDS), "replay", "second-start"):
        arm = t["arm64"].get(step, "")
        arm = "reused" if step == "root" and arm == 0.0 else arm
        lines.append(f"| {step} | {t['x86_64'].get(step, '')} | {arm} |")
    lines += ["", "| start to `window 1 score` | x86_64 (s) | arm64 under qemu (s) |",
              "|---|---|---|",
              f"| first start | {result['x86_64']['first_start_s']} | "
              f"{result['arm64']['first_start_s']} |",
              f"| second start | {result['x86_64']['second_start_s']} | "
              f"{result['arm64']['second_start_s']} |", "",
              f"windows {fig['windows']}, anomalous {fig['anomalous']}, max relative score "
              f"difference {fig['max_rel_score_diff']:.2e}, threshold "
              f"{fig['max_rel_threshold_diff']:.2e} (tolerance {fig['rtol']:g}), decision flips "
              f"{fig['decision_flips'] or 'none'}; keywords {fig['keywords']}, onset "
              f"differences in frames {fig['onset_diff_frames']}", ""]
    lines += [f"* {p}" for p in result["problems"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests/arm64/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path,
                   default=Path(os.environ.get("HARK_ARM64_ROOT", DEFAULT_ROOT)),
                   help="arm64 root (default $HARK_ARM64_ROOT or /var/cache/hark/arm64-root)")
    p.add_argument("--out", type=Path, default=ROOT / "reports",
                   help="report folder (default: reports)")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="relative tolerance of anomaly scores and thresholds (default 1e-3)")
    p.add_argument("--fresh-venv", action="store_true", help="recreate the root's .venv")
    args = p.parse_args(argv)
    root = args.root.resolve()
    if ROOT in root.parents or root == ROOT:
        p.error(f"--root must lie outside the repository ({root})")
    t_all = time.monotonic()
    try:
        prepare_host()
        logs = args.out / "arm64-logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        built = build_root(root)
        if built == 0.0:
            say(f"reusing the arm64 root {root}")
        r = subprocess.run(["chroot", str(root), "uname", "-m"], capture_output=True, text=True)
        if r.stdout.strip() != "aarch64":
            raise CannotEmulate(f"chroot {root} uname -m gave {r.stdout.strip() or r.stderr!r},"
                                " not aarch64: qemu-aarch64 does not run it")
        wheels = root.with_name(root.name + "-wheels")
        t1 = time.monotonic()
        cons = fetch_wheels(wheels)
        arm = Arm64(root, wheels, logs)
        arm.timings.update(root=round(built, 1), wheels=round(time.monotonic() - t1, 1))
        if args.fresh_venv:
            shutil.rmtree(arm.project / ".venv", ignore_errors=True)
        env = install_arm64(arm, cons)
        with MosquittoBroker() as broker, tempfile.TemporaryDirectory(prefix="hark-x86-") as tmp:
            say(f"broker {broker.url} on the host")
            x86 = X86("x86_64", Path(tmp) / "hark", logs)
            copy_project(x86.project)
            res_x86 = node_steps(x86, broker)
            res_arm = node_steps(arm, broker)
    except CannotEmulate as exc:
        print(f"test-arm64: this machine cannot emulate arm64: {exc}", file=sys.stderr)
        return 2
    except StepFailed as exc:
        print(f"test-arm64: FAIL: {exc}", file=sys.stderr)
        return 1
    figures, problems = compare(res_x86, res_arm, args.rtol)
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "ok": not problems,
              "host": platform.machine(), "root": str(root), "emulated_cpu": QEMU_CPU,
              "arm64_env": env,
              "total_s": round(time.monotonic() - t_all, 1), "problems": problems,
              "agreement": figures,
              "timings": {"x86_64": res_x86["timings"], "arm64": res_arm["timings"]},
              "x86_64": {k: v for k, v in res_x86.items() if k != "events"},
              "arm64": {k: v for k, v in res_arm.items() if k != "events"},
              "events": {"x86_64": res_x86["events"], "arm64": res_arm["events"]}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "arm64.json").write_text(json.dumps(result, indent=1))
    md = render(result)
    (args.out / "arm64.md").write_text(md)
    print(md)
    say(f"{'PASS' if result['ok'] else 'FAIL'} in {result['total_s'] / 60:.1f} min; "
        f"{args.out / 'arm64.md'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
