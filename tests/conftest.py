"""Every test session is sealed off from the repository's outputs and from the network.

* `KD_CACHE_DIR` and `KD_RUNS_DIR` point at a temporary folder, so no test
  reads an entry that real runs or older code wrote, and none writes into the
  repository's `.cache/` or `runs/`. A session that started without them (a
  fresh clone, CI) fails if it ends with either; where real runs made them,
  they are not checked, as a real run may write there at the same time.
* Sockets may reach loopback only (Jupyter kernels, Ray, local servers), and
  Hugging Face runs in offline mode; the environment variables reach every
  subprocess, papermill's kernels included.
* torch, and every kernel and subprocess, run one OpenMP thread: on a busy
  shared machine two threads per process stall each other (measured 5x
  slower than one), and the notebooks use one at tiny/small anyway.

This is done when pytest configures itself, before any test module is
imported: some libraries read their settings at import (huggingface_hub reads
HF_HUB_OFFLINE then), which a fixture would be too late for.
"""

import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GUARDED = (REPO_ROOT / ".cache", REPO_ROOT / "runs")
SEALED_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def fail_if_recomputed(*args, **kwargs):
    """Patched over a compute path for a cache's second call: the entry must be read, not recomputed."""
    raise AssertionError("recomputed: the cache entry was not read")


class NetworkBlocked(OSError):
    """A test tried to reach a non-loopback address (an OSError, so libraries' offline fallbacks still run)."""


def _is_loopback(host) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard_connect(real):
    def connect(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise NetworkBlocked(f"network blocked in tests: connect to {address!r} (loopback only)")
        return real(sock, address, *args)
    return connect


def _guard_getaddrinfo(real):
    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host.decode() if isinstance(host, bytes) else host):
            raise NetworkBlocked(f"network blocked in tests: name lookup of {host!r} (loopback only)")
        return real(host, *args, **kwargs)
    return getaddrinfo


def pytest_configure(config):
    session_dir = Path(tempfile.mkdtemp(prefix="kd-tests-"))
    saved = (*SEALED_ENV, "KD_CACHE_DIR", "KD_RUNS_DIR")
    config._kd = {"dir": session_dir, "env": {k: os.environ.get(k) for k in saved},
                  "socket": (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo),
                  "absent": [folder for folder in GUARDED if not folder.exists()]}
    os.environ.update({**SEALED_ENV, "KD_CACHE_DIR": str(session_dir / "cache"),
                       "KD_RUNS_DIR": str(session_dir / "runs")})
    connect, connect_ex, getaddrinfo = config._kd["socket"]
    socket.socket.connect = _guard_connect(connect)
    socket.socket.connect_ex = _guard_connect(connect_ex)
    socket.getaddrinfo = _guard_getaddrinfo(getaddrinfo)


def pytest_sessionfinish(session, exitstatus):
    created = [path for folder in session.config._kd["absent"] if folder.exists()
               for path in [folder, *sorted(folder.rglob("*"))]]
    if created:
        names = "\n  ".join(map(str, created[:10]))
        session.config.get_terminal_writer().line(
            f"\nTests wrote into the repository's .cache/ or runs/ ({len(created)} entries), e.g.:\n  {names}\n"
            "Tests must use KD_CACHE_DIR / KD_RUNS_DIR (set by tests/conftest.py) or tmp_path.", red=True)
        session.exitstatus = 1


def pytest_unconfigure(config):
    kd = config._kd
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = kd["socket"]
    for key, value in kd["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(kd["dir"], ignore_errors=True)
