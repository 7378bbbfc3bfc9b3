"""tests/conftest.py seals every session: temporary cache and runs folders, no network but loopback, HF offline."""

import shutil
import socket
import subprocess
import sys
import threading

import pytest

from kdutils.cache import cache_root
from kdutils.paths import REPO_ROOT, runs_dir

CHILD = """
import json, os
from kdutils.cache import cache_root
from kdutils.paths import runs_dir
import huggingface_hub.constants as hub
print(json.dumps({"cache": str(cache_root()), "runs": str(runs_dir()), "hub_offline": hub.HF_HUB_OFFLINE,
                  "transformers_offline": os.environ.get("TRANSFORMERS_OFFLINE")}))
"""


def test_cache_and_runs_point_at_a_session_folder_outside_the_repository():
    for folder in (cache_root(), runs_dir()):
        assert REPO_ROOT not in folder.parents and folder.parent.name.startswith("kd-tests-")


def test_subprocesses_and_kernels_inherit_the_folders_and_offline_mode():
    import json

    out = json.loads(subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                                    timeout=120).stdout)
    assert out == {"cache": str(cache_root()), "runs": str(runs_dir()), "hub_offline": True,
                   "transformers_offline": "1"}


@pytest.mark.parametrize("address", [("example.com", 80), ("93.184.215.14", 443), ("2606:4700::1", 443)])
def test_the_network_is_blocked(address):
    from conftest import NetworkBlocked

    with pytest.raises(NetworkBlocked, match="network blocked in tests"):
        socket.create_connection(address, timeout=1)


@pytest.mark.parametrize("family, address", [(socket.AF_INET, ("93.184.215.14", 443)),
                                             (socket.AF_INET6, ("2606:4700::1", 443))])
@pytest.mark.parametrize("method", ["connect", "connect_ex"])
def test_a_raw_socket_cannot_connect_either(family, address, method):
    """No name lookup on this path: the connect guard, not the lookup guard, stops it."""
    from conftest import NetworkBlocked

    with socket.socket(family) as raw, pytest.raises(NetworkBlocked, match="network blocked in tests"):
        getattr(raw, method)(address)


def test_loopback_is_allowed():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted = threading.Thread(target=lambda: server.accept()[0].sendall(b"ok"))
    accepted.start()
    with socket.create_connection(("localhost", port), timeout=10) as client:
        assert client.recv(2) == b"ok"
    accepted.join()
    server.close()


PROBE = """
from pathlib import Path

def test_writes_into_the_repository():
    runs = Path(__file__).resolve().parent.parent / "runs"
    runs.mkdir()
    (runs / "executed.ipynb").write_text("oops")
"""


def test_a_session_that_writes_into_the_repository_fails(tmp_path):
    """The session check, on a copy of this conftest in a fresh 'clone' (tmp_path/repo)."""
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_probe.py").write_text(PROBE)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path / "repo")
    assert proc.returncode == 1 and "1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "Tests wrote into the repository's .cache/ or runs/" in proc.stdout
    assert str(tmp_path / "repo" / "runs" / "executed.ipynb") in proc.stdout
