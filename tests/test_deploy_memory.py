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
from archlab.deploy.memory import _mallopt, page_faults

# glibc's mmap threshold pinned at its initial 128 KiB (mallopt M_MMAP_THRESHOLD): left to itself it rises as
# blocks are freed, so whether a forward maps its tensors afresh depends on the process's allocation history (the
# graph form's five deployment models at batch 8: 0 or 7,000-12,500 faults per forward, process to process).
_mallopt()(-3, 128 * 1024)
torch.manual_seed(0)
torch.set_num_threads(1)
# The module-by-module form: its activations are PyTorch tensors from malloc. The oneDNN Graph form (fuse's
# default): every tensor passed between two of its partitions is one too (a ResNet-18 stage is one partition, so
# there it made none either way; MobileNetV2 has 37).
form = fuse(archlab.create_model(MODEL).eval(), onednn=True, graph=GRAPH, plan=False)  # a plan allocates nothing per call
x = torch.randn(8, 3, 224, 224).contiguous(memory_format=torch.channels_last)  # stem output: 25.7 MB for ResNet-18

def faults_per_forward():
    # The median of five forwards: kept, the heap still grows now and then while it settles (a few thousand pages
    # in one forward of ten after the setting, measured on MobileNetV2's graph form), then stays.
    counts = []
    with torch.inference_mode():
        form(x)
        for _ in range(5):
            start = page_faults()
            out = form(x)
            counts.append(page_faults() - start)
    return sorted(counts)[2], out

before, out_before = faults_per_forward()
kept = keep_freed_memory()
after, out_after = faults_per_forward()
print(json.dumps({"kept": kept, "before": before, "after": after, "same": bool(torch.equal(out_before, out_after))}))
"""


@pytest.mark.skipif(_mallopt() is None, reason="the C library is not glibc")
@pytest.mark.parametrize("model, graph", [("resnet18", False), ("mobilenet_v2", True)], ids=["modules", "graph"])
def test_kept_memory_removes_the_page_faults_of_a_forward(model, graph):
    script = f"MODEL, GRAPH = {model!r}, {graph!r}\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kept"] and result["same"]
    # Every big tensor freshly mapped by default (the graph form's: those passed between its partitions), thousands
    # of 4 KiB pages per forward; kept: (almost) none.
    assert result["before"] > 1000, result
    assert result["after"] < 0.02 * result["before"], result
