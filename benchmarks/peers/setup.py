"""Make the peer servers' venvs: ``benchmarks/.venvs/<peer>``, from the pinned lists in ``requirements/``.

    python benchmarks/peers/setup.py [triton] [mlserver] [litserve] [ray] [--force] [--check]

With no peer named, every peer. Each peer gets its own venv because their pins clash with squishy's
and with each other's; the lists in ``requirements/<peer>.txt`` are ``pip freeze`` of installs verified
to work here (the servers in this folder ran from them). What each venv is for:

- ``triton``: Python **3.12** (PyTriton's proxy to Triton's Python backend failed under 3.11), with
  ``nvidia-pytriton``, whose wheel ships the ``tritonserver`` binary (CPU only here). That Python's
  ``lib/`` (libpython3.12) must be on ``LD_LIBRARY_PATH`` for the binary: the benchmark sets it, and
  the check below runs ``tritonserver --help`` with it.
- ``mlserver``, ``litserve``: Python 3.11, the servers alone (they import nothing of squishy).
- ``ray``: Python 3.11, Ray Serve plus squishy's runtime dependencies at the main venv's versions
  (``peers.ray_server`` decodes and runs requests with squishy's own codec and ONNX Runtime executor);
  squishy itself comes from ``src/`` through a ``.pth`` file, not installed (so nothing is built there).

Interpreters: ``$SQUISHY_PEER_PYTHON312`` / ``$SQUISHY_PEER_PYTHON311`` if set, else ``python3.12`` /
``python3.11`` on ``PATH``, else pyenv's (``~/.pyenv/versions/3.12*/bin/python3.12``). A peer that cannot
be installed is reported with the reason and skipped; the exit status is 1 if any failed. ``--check``
only checks existing venvs (imports, and for Triton the binary). ``--force`` makes venvs anew.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = HERE.parent
ROOT = BENCHMARKS.parent
VENVS = BENCHMARKS / ".venvs"


@dataclass(frozen=True)
class Peer:
    name: str
    python: str  # "3.12" or "3.11"
    check: str  # Python run in the venv once installed: it must exit 0
    squishy_src: bool = False  # put src/ on the venv's path (.pth)


PEERS = {
    "triton": Peer("triton", "3.12", "import pytriton.triton, numpy"),
    "mlserver": Peer("mlserver", "3.11", "import mlserver, mlserver.codecs, numpy"),
    "litserve": Peer("litserve", "3.11", "import litserve, numpy, zmq"),
    "ray": Peer(
        "ray",
        "3.11",
        "import ray, ray.serve, fastapi; import squishy.frontend.codec, squishy.runtime.executors",
        squishy_src=True,
    ),
}


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` ("3.12"): the environment's choice, PATH, then pyenv's."""
    env = os.environ.get(f"SQUISHY_PEER_PYTHON{version.replace('.', '')}")
    candidates = [env] if env else []
    if sys.version_info[:2] == tuple(int(p) for p in version.split(".")):
        candidates.append(getattr(sys, "_base_executable", sys.executable))
    candidates.append(shutil.which(f"python{version}"))
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")))
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            probe = subprocess.run(
                [candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
            )
            if probe.returncode == 0 and probe.stdout.strip() == version:
                return candidate
    return None


def library_dir(python: Path | str) -> str:
    """Where that interpreter's libpython lives (what tritonserver's Python-backend stub links against)."""
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def triton_environment(python: Path | str) -> dict[str, str]:
    """The environment tritonserver needs: the venv's Python library directory on LD_LIBRARY_PATH."""
    paths = [library_dir(python), os.environ.get("LD_LIBRARY_PATH", "")]
    return {"LD_LIBRARY_PATH": os.pathsep.join(p for p in paths if p)}


def tritonserver_binary(python: Path | str) -> Path | None:
    out = subprocess.run(
        [str(python), "-c", "import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent)"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return None
    binary = Path(out.stdout.strip()) / "tritonserver" / "bin" / "tritonserver"
    return binary if binary.exists() else None


def check(peer: Peer) -> str | None:
    """None if the venv works, else why not."""
    python = venv_python(peer.name)
    if not python.exists():
        return f"no venv at {python.parent.parent}"
    probe = subprocess.run([str(python), "-c", peer.check], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`{peer.check}` failed: {probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else '?'}"
    if peer.name == "triton":
        binary = tritonserver_binary(python)
        if binary is None:
            return "the nvidia-pytriton wheel has no tritonserver binary"
        run = subprocess.run(
            [str(binary), "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, **triton_environment(python)},
        )
        if run.returncode not in (0, 1) or "error while loading shared libraries" in run.stderr:
            return f"{binary} does not run here: {run.stderr.strip()[-300:]}"
    return None


def install(peer: Peer, force: bool) -> str | None:
    """Make (or complete) the peer's venv; None on success, else why it cannot be installed here."""
    target = VENVS / peer.name
    if force and target.exists():
        shutil.rmtree(target)
    if not venv_python(peer.name).exists():
        base = find_python(peer.python)
        if base is None:
            return (
                f"needs Python {peer.python} (with venv), none found: set SQUISHY_PEER_PYTHON"
                f"{peer.python.replace('.', '')} to one"
            )
        print(f"[{peer.name}] venv with {base}", flush=True)
        made = subprocess.run([base, "-m", "venv", str(target)])
        if made.returncode != 0:
            return f"`{base} -m venv {target}` failed"
    python = str(venv_python(peer.name))
    requirements = HERE / "requirements" / f"{peer.name}.txt"
    print(f"[{peer.name}] pip install -r {requirements.relative_to(ROOT)}", flush=True)
    pip = subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(requirements)])
    if pip.returncode != 0:
        return f"pip could not install {requirements.relative_to(ROOT)} (status {pip.returncode}; see above)"
    if peer.squishy_src:
        site = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (Path(site) / "squishy-src.pth").write_text(f"{ROOT / 'src'}\n")
    return check(peer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peers", nargs="*", help=f"from {', '.join(PEERS)} (default: all)")
    parser.add_argument("--force", action="store_true", help="remove and make the venvs anew")
    parser.add_argument("--check", action="store_true", help="only check the existing venvs")
    args = parser.parse_args()
    names = args.peers or list(PEERS)
    if unknown := [n for n in names if n not in PEERS]:
        parser.error(f"unknown peer {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    VENVS.mkdir(parents=True, exist_ok=True)
    failed = {}
    for name in names:
        peer = PEERS[name]
        problem = check(peer) if args.check else install(peer, args.force)
        if problem is None:
            print(f"[{name}] ready: {venv_python(name)}", flush=True)
        else:
            failed[name] = problem
            print(f"[{name}] CANNOT BE INSTALLED HERE: {problem}", flush=True)
    if failed:
        print("not available: " + "; ".join(f"{n} ({p})" for n, p in failed.items()), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
