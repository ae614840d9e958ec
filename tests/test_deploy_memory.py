"""archlab.deploy.memory: with freed memory kept, a batch-8 forward of the inference form reuses its pages instead
of having the kernel map (and zero) fresh ones. Counted in page faults, not timed: a count is the same on a loaded
machine. Run in a process of its own, since the setting holds for the whole process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from archlab.deploy.memory import _mallopt

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, torch
import archlab
from archlab.deploy import fuse, keep_freed_memory
from archlab.deploy.memory import page_faults

torch.manual_seed(0)
torch.set_num_threads(1)
# The module-by-module form: its activations are PyTorch tensors from malloc (the oneDNN Graph form, fuse's default,
# had no faults per forward either way: its partitions keep their own memory).
form = fuse(archlab.create_model("resnet18").eval(), onednn=True, graph=False)
x = torch.randn(8, 3, 224, 224).contiguous(memory_format=torch.channels_last)  # stem output: 25.7 MB

def faults_per_forward():
    with torch.inference_mode():
        form(x)
        start = page_faults()
        for _ in range(3):
            out = form(x)
    return (page_faults() - start) / 3, out

before, out_before = faults_per_forward()
kept = keep_freed_memory()
after, out_after = faults_per_forward()
print(json.dumps({"kept": kept, "before": before, "after": after, "same": bool(torch.equal(out_before, out_after))}))
"""


@pytest.mark.skipif(_mallopt() is None, reason="the C library is not glibc")
def test_kept_memory_removes_the_page_faults_of_a_forward():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kept"] and result["same"]
    # Every big activation freshly mapped by default: thousands of 4 KiB pages per forward; kept: (almost) none.
    assert result["before"] > 1000, result
    assert result["after"] < 0.02 * result["before"], result
