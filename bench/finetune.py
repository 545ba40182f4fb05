"""Backbone fine-tuning cost: seconds and peak memory per epoch per 100 images.

Builds a ViT-B/32-sized random CLIP (random weights time the same as real ones; or --model DIR),
writes N different 1280×720 JPEGs, and runs ``learner.finetune.finetune`` in this process with
``--epochs`` heads epochs and ``--epochs`` encoder epochs. Prints, per phase, the seconds per
epoch per 100 images and the peak memory of that phase: resident set size on the CPU (reset
between phases through /proc/self/clear_refs where Linux allows it), allocated memory on CUDA.

The first heads epoch includes embedding every image once with the frozen encoder; later
heads epochs train on those cached embeddings and cost next to nothing.

    python -m bench.finetune [--images 100] [--epochs 1] [--unfreeze-blocks 4] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import transformers

from bench.pictures import screenshot
from learner.finetune import (
    DISLIKE,
    LIKE,
    SUPER_LIKE,
    FinetuneConfig,
    FinetuneExample,
    FinetuneProgress,
    finetune,
)
from tests.tiny_clip import build_clip, vit_b32_config


class PeakMemory:
    """Peak memory per phase: VmHWM (reset per phase when possible) or CUDA's allocator peak."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.can_reset = _reset_rss_peak()
        self.peaks: dict[str, float] = {}  # phase -> MiB
        self.phase: str | None = None

    def switch(self, phase: str) -> None:
        if phase == self.phase:
            return
        if self.phase is not None:
            self.peaks[self.phase] = self.read()
        self.phase = phase
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.can_reset:
            _reset_rss_peak()

    def read(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        import resource  # not Linux: the process-lifetime peak is all there is

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1, help="heads epochs = encoder epochs")
    parser.add_argument("--people", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size)
    parser.add_argument("--unfreeze-blocks", type=int, default=FinetuneConfig.unfreeze_blocks)
    parser.add_argument("--contrastive-weight", type=float, default=0.0)
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on the CPU")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if present)")
    parser.add_argument("--model", type=Path, help="a CLIP directory (default: random ViT-B/32)")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()  # save/load bars would bury the table

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or build_clip(tmp / "clip", vit_b32_config())
        votes = (DISLIKE, LIKE, SUPER_LIKE, DISLIKE)
        examples = []
        for i in range(args.images):
            path = tmp / "images" / f"{i}.jpg"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(screenshot(i))
            examples.append(FinetuneExample(path, i % args.people, votes[(i * 7) // 3 % 4]))
        config = FinetuneConfig(
            head_epochs=args.epochs,
            encoder_epochs=args.epochs,
            unfreeze_blocks=args.unfreeze_blocks,
            batch_size=args.batch_size,
            contrastive_weight=args.contrastive_weight,
            device=args.device,
            cpu_bf16=args.cpu_bf16,
        )
        cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
        memory = PeakMemory(cuda)
        phase_started: dict[str, float] = {}

        def on_progress(p: FinetuneProgress) -> None:
            # The embedding pass belongs to the first heads epoch (as in the result's history).
            phase = "heads" if p.phase == "embedding" else p.phase
            phase_started.setdefault(p.phase, p.seconds)
            memory.switch(phase)

        load = os.getloadavg()
        started = time.perf_counter()
        result = finetune(str(model), examples, tmp / "out", config, progress=on_progress)
        total = time.perf_counter() - started
        memory.switch("end")

    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    precision = "fp32"
    if cuda and config.mixed_precision:
        precision = "CUDA autocast"
    elif not cuda and config.cpu_bf16:
        precision = "bf16 autocast"
    print(f"fine-tuning a ViT-B/32-sized CLIP on {result.n_examples} images, {device}")
    print(
        f"batch {config.batch_size}, top {config.unfreeze_blocks} of 12 blocks unfrozen, "
        f"contrastive weight {config.contrastive_weight}, "
        f"{precision}; "
        f"load average before "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    unit = "peak CUDA allocated" if cuda else "peak RSS"
    if not cuda and not memory.can_reset:
        unit += " (process lifetime; could not reset per phase)"
    print(f"{'phase':<10} {'epoch':>5} {'s/epoch':>8} {'s per 100 images':>17}  {unit}")
    for h in result.history:
        per_100 = h.seconds / h.images * 100
        peak = memory.peaks.get(h.phase, float("nan"))
        print(f"{h.phase:<10} {h.epoch:>5} {h.seconds:>8.1f} {per_100:>17.1f}  {peak:.0f} MiB")
    saving = total - phase_started.get("saving", total)
    print(
        f"loading {phase_started.get('embedding', 0):.1f} s ({memory.peaks.get('loading', 0):.0f} "
        f"MiB), saving {saving:.1f} s, total {total:.1f} s"
    )


if __name__ == "__main__":
    main()
