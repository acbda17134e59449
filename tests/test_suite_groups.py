"""The suite's own machinery: under scripts/test.sh's options (--dist loadgroup) the tests of one xdist group run on
one worker, so that the groups of tests/conftest.py (one SLURM cluster, one large model at a time, a fixture trained
once) hold. pytest 9.2 with pytest-xdist 3.8 silently ran them on every worker."""

import subprocess
import sys


def test_the_tests_of_one_group_run_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(
        "import os\n"
        "from pathlib import Path\n\n"
        "import pytest\n\n\n"
        '@pytest.mark.xdist_group("together")\n'
        '@pytest.mark.parametrize("n", range(6))\n'
        "def test_one(n):\n"
        f'    (Path("{tmp_path}") / f"ran-{{n}}").write_text(os.environ["PYTEST_XDIST_WORKER"])\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    workers = {f.read_text() for f in tmp_path.glob("ran-*")}
    assert len(list(tmp_path.glob("ran-*"))) == 6 and len(workers) == 1, workers
