"""The suite's own machinery: the tree that mirrors the packages never shadows them; the
thread-leak guard (tests/conftest.py) fails a test that leaves a thread running and tolerates the
threads libraries keep for the whole process; tests marked `gpu` are skipped without CUDA."""

from __future__ import annotations

import importlib
import os
import sys
import threading
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.mark.parametrize("package", ["xrd_nexus_ml", "bluesky_callbacks", "nexus_definitions", "training"])
def test_the_mirrored_tree_never_shadows_a_package(package):
    """tests/<package> holds that package's tests; importing the package still gives the package, and
    no test module is registered inside it (importlib mode names them tests.<package>...)."""
    module = importlib.import_module(package)
    path = Path(module.__file__).resolve()
    assert path.name == "__init__.py" and TESTS not in path.parents, path
    assert (TESTS / package).is_dir() and not (TESTS / package / "__init__.py").exists()
    inside = [name for name, m in list(sys.modules.items()) if name.split(".")[0] == package
              and TESTS in Path(getattr(m, "__file__", None) or "/").resolve().parents]
    assert inside == []
    assert __name__ == "tests.test_suite"


def test_no_test_folder_is_on_sys_path_but_the_nexus_helpers():
    on_path = {Path(p).resolve() for p in sys.path if p}
    assert {p for p in on_path if p == TESTS or TESTS in p.parents} == {TESTS / "data" / "nexus"}


def test_the_check_reports_a_thread_still_running_and_not_one_that_ended(thread_leak_check):
    before = set(threading.enumerate())
    release = threading.Event()
    leaky = threading.Thread(target=release.wait, name="leaky")
    leaky.start()
    try:
        assert thread_leak_check(before, timeout=0.2) == [leaky]
    finally:
        release.set()
        leaky.join(5)
    assert not leaky.is_alive()
    assert thread_leak_check(before, timeout=0.2) == []


@pytest.fixture
def suite_conftest(monkeypatch):
    """Arguments that make a separate pytest run (pytester) load the real tests/conftest.py as a plugin."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return ["-p", "tests.conftest", "-p", "no:cacheprovider"]


def test_the_guard_fails_a_test_that_leaks_a_thread(pytester, suite_conftest):
    """The leak is an error at the leaking test's teardown; the other tests pass."""
    pytester.makepyfile(test_threads="""
        import threading
        import time

        STOP = threading.Event()


        def test_leaks_a_thread():
            threading.Thread(target=STOP.wait, name="leaky-worker", daemon=True).start()


        def test_a_thread_that_ends_soon_after_the_test_is_no_leak():
            threading.Thread(target=time.sleep, args=(0.3,), name="short-worker").start()


        def test_a_library_thread_kept_for_the_process_is_no_leak():
            threading.Thread(target=STOP.wait, name="bluesky-run-engine", daemon=True).start()
    """)
    result = pytester.runpytest_subprocess(*suite_conftest, "-o", "thread_leak_timeout=1", "test_threads.py")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks_a_thread*",
                                 "*1 thread(s) started by the test still running after it: leaky-worker*"])


def test_tests_marked_gpu_are_skipped_without_cuda(pytester, suite_conftest):
    import torch

    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a CUDA device\n")
    pytester.makepyfile(test_gpu="""
        import pytest
        import torch


        @pytest.mark.gpu
        def test_needs_cuda():
            assert torch.cuda.is_available()


        def test_runs_anywhere():
            pass
    """)
    result = pytester.runpytest_subprocess(*suite_conftest, "-rs", "test_gpu.py")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["*SKIPPED*test_gpu.py*marked gpu: needs a CUDA device*"])
