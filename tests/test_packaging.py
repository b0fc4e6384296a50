"""The package installs: `make install` runs `pip install -e .`, so `import paddleseg` resolves to
this repository from any folder, not only from the repository root."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_from_another_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", "import paddleseg, sys; print(paddleseg.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.path.realpath(out.stdout.strip()).startswith(os.path.realpath(ROOT))


def test_makefile_device_choice():
    """DEVICE=gpu swaps the CPU wheel for paddlepaddle-gpu of the same version (dry run)."""
    out = subprocess.run(["make", "-n", "-B", "install", "DEVICE=gpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "paddlepaddle-gpu==2.6.2" in out.stdout
    assert "uninstall -q -y paddlepaddle " in out.stdout + " "
