"""How fast is a photo → reply, next to the bare engines, measured in one run.

    python -m bench.speed [--model DIR] [--photos 20] [--bursts 3] [--people 32]
                          [--engine auto] [--precision auto] [--threads 0] [--no-bot]
                          [--soak SECONDS] [--faiss]

1. Bare engines, one image and a batch of 32, the same images and model directory for all,
   each with CLIP's plain image processor (CLIPImageProcessorPil) before its forward:
   torch fp32, torch bf16 (autocast), OpenVINO fp32, bf16 (where the CPU has it) and int8
   weights (where NNCF is installed), all converted from the same torch model; then the
   project's encoder (CLIP_ENGINE=--engine, its own preprocessing), and its torch path.
   Ratios to the fastest bare engine per row, cosine to torch fp32, and one image beside a
   Python thread that spins (as a busy event loop does: an engine that holds the GIL slows).
2. The bot as a person runs it: ``python -m bot`` with the model directory and a fake Bot API
   on 127.0.0.1. Single photos one after another (each from a different person): median and
   p95 from the update being available to the reply reaching the API. Then ``--people`` people
   each send one photo at the same moment (``--bursts`` times): s/image for the whole burst.
3. Per-stage breakdown from the bot's own timings (``bot.timing``, written to a file named by
   TASTEBOT_STAGE_TIMINGS), and the bot's peak RSS.
4. Ratios: bot single photo ÷ the fastest bare engine's single image, and the bot's burst
   throughput ÷ the fastest bare engine's batched throughput.

``--soak SECONDS`` then keeps ``--people`` people sending photos for that long and reports
replies, errors and RSS over time (memory should stay flat). ``--faiss`` times nearest-liked
lookups at 100k vectors for one person and 1M in total (storage.vectors.VoteIndex).

Times on a shared machine vary run to run; the ratios, measured in one run, are the result.
With no --model, a ViT-B/32-sized CLIP with random weights is built on the fly.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.pictures import screenshot
from testing.fake_bot_api import FakeBotAPI
from testing.tiny_clip import build_clip, vit_b32_config

FIRST_USER = 10_000


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- 1. bare engines and the project's encoder -----------------------------------------------


class _Spinner:
    """A Python thread that spins, as a busy event loop does, while the block runs."""

    def __enter__(self) -> _Spinner:
        import threading

        self._stop = False

        def spin() -> None:
            while not self._stop:
                pass

        self._thread = threading.Thread(target=spin, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()


def bare_engines(model: Path, threads: int) -> tuple[dict[str, Any], Any]:
    """{name: forward(pixels (n, 3, H, W) float32 numpy) -> (n, dim) numpy} for each bare
    engine this machine has, built from one torch model; and CLIP's plain image processor."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPModel

    from learner import engines

    torch.set_num_threads(threads)
    clip = CLIPModel.from_pretrained(str(model), dtype=torch.float32)
    clip.requires_grad_(False)
    torch.nn.Module.eval(clip)
    graph = engines.VisionGraph(clip.vision_model, clip.visual_projection)
    run: dict[str, Any] = {}

    def torch_fp32(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = graph(torch.from_numpy(pixels)).numpy()
        return out

    def torch_bf16(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out: np.ndarray = graph(torch.from_numpy(pixels)).float().numpy()
        return out

    run["torch fp32"] = torch_fp32
    run["torch bf16 (autocast)"] = torch_bf16
    if engines.openvino_missing() is None:
        import openvino as ov

        with torch.no_grad(), engines.no_telemetry():
            converted = ov.convert_model(
                graph,
                example_input=torch.zeros(1, 3, 224, 224),
                input=[ov.PartialShape([-1, 3, 224, 224])],
            )
        variants = [("openvino fp32", converted, "f32")]
        if engines.openvino_has_bf16():
            variants.append(("openvino bf16", converted, "bf16"))
        if engines.nncf_missing() is None:
            import nncf

            with engines.no_telemetry():
                mode = nncf.CompressWeightsMode.INT8_ASYM
                int8 = nncf.compress_weights(converted.clone(), mode=mode)
            hint = "bf16" if engines.openvino_has_bf16() else "f32"
            variants.append((f"openvino int8 weights ({hint})", int8, hint))
        for name, ov_model, hint in variants:
            compiled = ov.Core().compile_model(
                ov_model,
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": hint,
                    "PERFORMANCE_HINT": "LATENCY",
                    "NUM_STREAMS": "1",
                    "INFERENCE_NUM_THREADS": str(threads),
                },
            )
            request = compiled.create_infer_request()

            def ov_forward(pixels: np.ndarray, request: Any = request) -> np.ndarray:
                return np.array(request.infer({0: pixels})[0], copy=True)

            run[name] = ov_forward
    else:
        print(f"  (no OpenVINO: {engines.openvino_missing()})", flush=True)
    return run, CLIPImageProcessorPil.from_pretrained(str(model))


def bench_encoder(
    model: Path,
    photos: list[bytes],
    threads: int,
    reps: int,
    batch: int,
    engine: str,
    precision: str,
) -> dict[str, Any]:
    """Each bare engine (CLIP's own image processor + the engine's forward) and the project's
    encoder (CLIP_ENGINE=``engine``, its own preprocessing), one image and a batch of
    ``batch``; the same images for all, interleaved so that all see the same load."""
    import torch

    from learner.encoder import ClipImageEncoder
    from learner.images import decode_image

    results: dict[str, Any] = {"threads": threads}
    started = time.perf_counter()
    images = [decode_image(p).image for p in photos]
    results["decode"] = (time.perf_counter() - started) / len(photos)
    run, processor = bare_engines(model, threads)

    def bare(forward: Any) -> Any:
        def embed(ims: list[Any]) -> np.ndarray:
            pixels = processor(ims, return_tensors="np")["pixel_values"].astype(np.float32)
            out: np.ndarray = forward(pixels)
            return out

        return embed

    embedders: dict[str, Any] = {name: bare(forward) for name, forward in run.items()}
    started = time.perf_counter()
    processor(images, return_tensors="np")
    results["processor"] = (time.perf_counter() - started) / len(images)
    with tempfile.TemporaryDirectory() as cache:
        encoder = ClipImageEncoder(
            str(model),
            device="cpu",
            precision=precision,  # type: ignore[arg-type]
            engine=engine,  # type: ignore[arg-type]
            engine_cache=cache,
            text_tower=False,
            torch_threads=threads,
        )
    project = f"encoder, CLIP_ENGINE={engine} ({encoder.engine} {encoder.precision})"
    embedders[project] = encoder.embed
    results["project"] = project
    projects = [project]
    if encoder.engine != "torch":  # the project's torch path too (bf16 packed where native)
        in_torch = ClipImageEncoder(
            str(model),
            device="cpu",
            precision="auto" if precision == "int8" else precision,  # type: ignore[arg-type]
            text_tower=False,
            torch_threads=threads,
        )
        name = f"encoder, CLIP_ENGINE=torch ({in_torch.precision})"
        embedders[name] = in_torch.embed
        projects.append(name)
    results["projects"] = projects
    # Fidelity to torch fp32 on these images.
    want = embedders["torch fp32"](images[:8])
    results["cosine"] = {}
    for name, embed in embedders.items():
        got = embed(images[:8])
        got = got / np.linalg.norm(got, axis=1, keepdims=True)
        results["cosine"][name] = float((got * want).sum(axis=1).min())
        embed(images[:batch])  # warm up at the batch size too
    singles: dict[str, list[float]] = {name: [] for name in embedders}
    batched: dict[str, list[float]] = {name: [] for name in embedders}
    for i in range(reps):
        for name, embed in embedders.items():
            one = images[i % len(images) : i % len(images) + 1]
            started = time.perf_counter()
            embed(one)
            singles[name].append(time.perf_counter() - started)
    for _ in range(2):
        for name, embed in embedders.items():
            started = time.perf_counter()
            embed(images[:batch])
            batched[name].append((time.perf_counter() - started) / min(batch, len(images)))
    # Beside a spinning Python thread (a busy event loop): one image, a few times each.
    spinning: dict[str, float] = {}
    for name in ("torch fp32", "openvino fp32", *projects):
        if name in embedders:
            times = []
            with _Spinner():
                for i in range(3):
                    started = time.perf_counter()
                    embedders[name](images[i : i + 1])
                    times.append(time.perf_counter() - started)
            spinning[name] = statistics.median(times)
    results["engines"] = {
        name: {
            "single": statistics.median(singles[name]),
            "batched": min(batched[name]),
            "cosine": results["cosine"][name],
            "spinning": spinning.get(name),
        }
        for name in embedders
    }
    for name, r in results["engines"].items():
        print(
            f"  {name}: single {ms(r['single'])} ms, batch of {batch} {ms(r['batched'])} "
            f"ms/image, cosine to torch fp32 {r['cosine']:.5f}",
            flush=True,
        )
    print(f"  (load {load_average()})", flush=True)
    del encoder, embedders, run
    in_torch = None
    gc.collect()
    torch.set_num_threads(threads)
    return results


def print_engine_table(bare: dict[str, Any], batch: int) -> None:
    table = bare["engines"]
    engines_only = {name: r for name, r in table.items() if name not in bare["projects"]}
    best_single = min(r["single"] for r in engines_only.values())
    best_batched = min(r["batched"] for r in engines_only.values())
    print()
    print(
        f"| engine (preprocessing included) | one image, ms | ×fastest | batch of {batch}, "
        "ms/image | ×fastest | cosine to torch fp32 | one image beside a spinning thread, ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in table.items():
        spin = "" if r["spinning"] is None else ms(r["spinning"])
        print(
            f"| {name} | {ms(r['single'])} | {r['single'] / best_single:.2f} | "
            f"{ms(r['batched'])} | {r['batched'] / best_batched:.2f} | {r['cosine']:.5f} | {spin} |"
        )
    print(
        f"(decode of a 1280×720 JPEG: {ms(bare['decode'])} ms/image, not included; "
        f"CLIP's image processor alone: {ms(bare['processor'])} ms/image)"
    )


# -- 2. the bot ------------------------------------------------------------------------------


class BotRun:
    """`python -m bot` against a fake Bot API on 127.0.0.1."""

    def __init__(self, api: FakeBotAPI, url: str, model: Path, data: Path, env: dict[str, str]):
        self.api = api
        self.timings = data.parent / "stages.jsonl"
        self.log = open(data.parent / "bot.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot"],
            env={
                **os.environ,
                "TELEGRAM_BOT_TOKEN": api.token,
                "TELEGRAM_API_URL": url,
                "CLIP_MODEL": str(model),
                "DATA_DIR": str(data),
                "LOG_LEVEL": "WARNING",
                "HF_HUB_OFFLINE": "1",
                "IMAGES_PER_MINUTE": "1000000",  # the bench is not a spammer
                "TASTEBOT_STAGE_TIMINGS": str(self.timings),
                **env,
            },
            cwd=Path(__file__).resolve().parents[1],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        api.wait_for_call_sync("setMyCommands", timeout=600)  # model loaded, polling
        self.next_user = FIRST_USER

    def stages(self) -> list[dict[str, Any]]:
        if not self.timings.exists():
            return []
        return [json.loads(line) for line in self.timings.read_text().splitlines() if line]

    def cpu_seconds(self) -> float:
        """User + system CPU time the bot process has used so far, all threads."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> tuple[int, int]:
        """(current, peak) resident set in MiB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024

    def send_at_once(
        self, photos: list[bytes], users: list[int] | None = None, timeout: float = 600
    ) -> list[tuple[float, float]]:
        """Each photo from a different person, all queued in one go; (queued, replied) each."""
        if users is None:  # new people
            users = list(range(self.next_user, self.next_user + len(photos)))
            self.next_user += len(photos)
        waiting = set(users)
        with self.api._lock:  # one getUpdates answer holds them all
            queued = time.monotonic()
            for user, photo in zip(users, photos, strict=True):
                self.api.send_photo(user, photo)

        def replies() -> dict[int, float] | None:
            found: dict[int, float] = {}
            # A photo rated before is answered with that picture (sendPhoto).
            for call in self.api.calls_to("sendMessage") + self.api.calls_to("sendPhoto"):
                chat = int(call.params.get("chat_id", 0))
                if chat in waiting and chat not in found and call.time >= queued:
                    found[chat] = call.time
            return found if len(found) == len(users) else None

        found = self.api.wait_for_sync(replies, timeout)
        assert found is not None
        return [(queued, found[user]) for user in users]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        finally:
            self.log.close()


class Tapper(threading.Thread):
    """Presses vote buttons on earlier replies, one tap at a time, until stopped; records the
    time from each tap to the bot's answerCallbackQuery (what the person waits for)."""

    def __init__(self, api: FakeBotAPI, users: list[int]) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.users = users
        self.latencies: list[float] = []
        self._stop_event = threading.Event()

    def _buttons(self) -> list[tuple[int, dict[str, Any], str]]:
        found = []
        for user in self.users:
            for message in self.api.sent_messages(chat_id=user):
                rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
                for button in rows[0] if rows else []:
                    if str(button.get("callback_data", "")).startswith("v:"):
                        found.append((user, message, button["callback_data"]))
        return found

    def run(self) -> None:
        buttons = self._buttons()
        n = 0
        while buttons and not self._stop_event.is_set():
            user, message, data = buttons[n % len(buttons)]
            n += 1
            pressed = time.monotonic()
            update = self.api.press_button(user, message, data, strict=False)
            query_id = update["callback_query"]["id"]

            def answered(query_id: str = query_id) -> float | None:
                for call in self.api.calls_to("answerCallbackQuery"):
                    if call.params.get("callback_query_id") == query_id:
                        return call.time
                return None

            self.latencies.append(self.api.wait_for_sync(answered, 60) - pressed)
            self._stop_event.wait(0.02)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)


def summarise_stages(records: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds per stage over ``records`` (stages a record lacks count as 0).

    forward and preprocess are the wall time of the photo's whole batch; "per image" divides
    them by the batch size (what each photo cost the CPU).
    """
    for r in records:
        batch = int(r["notes"].get("batch", 0))
        if batch:
            for name in ("forward", "preprocess"):
                r["seconds"][f"{name} per image"] = r["seconds"].get(name, 0.0) / batch
    names = sorted({name for r in records for name in r["seconds"]})
    return {name: statistics.median(r["seconds"].get(name, 0.0) for r in records) for name in names}


def bench_bot(
    model: Path, tmp: Path, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    api = FakeBotAPI()
    result: dict[str, Any] = {}
    with api.serve() as url:
        bot = BotRun(api, url, model, tmp / "data", env)
        try:
            # Warm up (first forward passes, SQLite, PTB), and meet the people: scoring a
            # returning person's photo is the common case, not creating their account.
            regulars = list(range(FIRST_USER - args.people, FIRST_USER))
            bot.send_at_once([screenshot(900_000 + i) for i in range(args.people)], regulars)
            for i in range(3):
                bot.send_at_once([screenshot(910_000 + i)], regulars[:1])
            skip = len(bot.stages())

            singles = []
            cpu_before = bot.cpu_seconds()
            for i in range(args.photos):
                [(queued, replied)] = bot.send_at_once([screenshot(i)], [regulars[i % 4]])
                singles.append(replied - queued)
            # CPU work per photo: every thread of the bot, idle polling included (~nothing).
            result["single_cpu"] = (bot.cpu_seconds() - cpu_before) / args.photos
            records = bot.stages()[skip:]
            result["single"] = singles
            result["single_stages"] = summarise_stages(records)
            result["single_load"] = load_average()
            ends = [r["ended"] for r in records]
            starts = [r["started"] for r in records]
            result["single_total_in_core"] = statistics.median(
                e - s for s, e in zip(starts, ends, strict=True)
            )
            print(
                f"  bot single photo: median {ms(statistics.median(singles))} ms, "
                f"p95 {ms(percentile(singles, 0.95))} ms  (load {load_average()})",
                flush=True,
            )

            bursts = []
            latencies: list[float] = []
            skip = len(bot.stages())
            taps = Tapper(api, regulars)  # people voting on earlier photos during the bursts
            taps.start()
            try:
                for b in range(args.bursts):
                    photos = [screenshot(100_000 * (b + 1) + i) for i in range(args.people)]
                    times = bot.send_at_once(photos, regulars)
                    start = times[0][0]
                    bursts.append((max(r for _, r in times) - start) / len(photos))
                    latencies += [r - q for q, r in times]
            finally:
                taps.stop()
            result["taps"] = taps.latencies
            print(
                f"  vote answers during the bursts: {len(taps.latencies)} taps, median "
                f"{ms(statistics.median(taps.latencies))} ms, p99 "
                f"{ms(percentile(taps.latencies, 0.99))} ms",
                flush=True,
            )
            burst_records = bot.stages()[skip:]
            result["burst"] = bursts
            result["burst_latency"] = latencies
            result["burst_stages"] = summarise_stages(burst_records)
            result["burst_batches"] = sorted(
                {int(r["notes"].get("batch", 0)) for r in burst_records}
            )
            result["burst_load"] = load_average()
            print(
                f"  bot burst of {args.people}: {ms(statistics.median(bursts))} ms/image, "
                f"latency median {ms(statistics.median(latencies))} ms, "
                f"max {ms(max(latencies))} ms  (load {load_average()})",
                flush=True,
            )
            if args.soak:
                result["soak"] = soak(bot, args.soak, args.people)
            result["rss"] = bot.rss()
            errors = _errors(tmp / "bot.log")
            result["errors"] = errors
        finally:
            bot.stop()
    api.close()
    return result


def _errors(log: Path) -> list[str]:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line for line in lines if " ERROR " in line or "Traceback" in line]


def soak(bot: BotRun, seconds: float, people: int) -> dict[str, Any]:
    """Bursts of ``people`` photos back to back for ``seconds``; RSS sampled after each."""
    print(f"  soak: {seconds:.0f} s of bursts of {people} photos", flush=True)
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    sent = 0
    seed = 5_000_000
    while time.monotonic() - started < seconds:
        photos = [screenshot(seed + i) for i in range(people)]
        seed += people
        # a few repeats too: same content again is looked up, not embedded
        photos[-2:] = [screenshot(seed - 3 * people), screenshot(seed - 3 * people + 1)]
        bot.send_at_once(photos)  # new people each time: accounts are created too
        sent += len(photos)
        samples.append((time.monotonic() - started, bot.rss()[0]))
    third = max(1, len(samples) // 3)
    early = statistics.median(r for _, r in samples[:third])
    late = statistics.median(r for _, r in samples[-third:])
    print(
        f"  soak: {sent} photos, all answered; RSS {early} MiB in the first third, "
        f"{late} MiB in the last; peak {bot.rss()[1]} MiB  (load {load_average()})",
        flush=True,
    )
    return {"sent": sent, "rss_early": early, "rss_late": late, "samples": samples}


# -- FAISS at scale --------------------------------------------------------------------------


def bench_faiss(tmp: Path, dim: int = 512) -> None:
    from storage.vectors import VoteIndex

    rng = np.random.default_rng(0)

    def clustered(n: int, centres: np.ndarray) -> np.ndarray:
        # Real CLIP embeddings cluster by subject: a mixture on the sphere, not uniform noise.
        x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal(
            (n, dim), dtype=np.float32
        ) / np.sqrt(dim)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    centres = rng.standard_normal((2000, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    index = VoteIndex(tmp / "faiss", dim)

    def time_queries(user: int, n: int, vectors: np.ndarray) -> tuple[float, float]:
        queries = clustered(200, centres)
        index.search(user, queries[0], 10)
        started = time.perf_counter()
        found = [index.search(user, q, 10) for q in queries]
        per_query = (time.perf_counter() - started) / len(queries)
        # recall@10 against exact search over the same vectors
        exact = np.argsort(-(queries[:50] @ vectors.T), axis=1)[:, :10]
        hits = [
            len({n.image_id for n in f} & {int(i) for i in e})
            for f, e in zip(found[:50], exact, strict=False)
        ]
        return per_query, sum(hits) / (10 * len(hits))

    print(f"  FAISS (dim {dim}, clustered vectors, load {load_average()}):", flush=True)
    total = 0
    for n in (1_000, 4_000, 10_000, 100_000):
        vectors = clustered(n, centres)
        started = time.perf_counter()
        index.sync(n, {i: vectors[i].tobytes() for i in range(n)})
        built = time.perf_counter() - started
        per_query, recall = time_queries(n, n, vectors)
        total += n
        print(
            f"    one person with {n:>7} liked: {per_query * 1000:.3f} ms/query, "
            f"recall@10 {recall:.3f}, built in {built:.1f} s",
            flush=True,
        )
    # 1M in total: many more people (900 × 1k), plus the 111k above.
    people = 900
    block = clustered(1_000, centres)
    started = time.perf_counter()
    for user in range(1_000_000, 1_000_000 + people):
        index.sync(user, {i: block[i].tobytes() for i in range(len(block))})
    total += people * len(block)
    built = time.perf_counter() - started
    per_query, _ = time_queries(100_000, 100_000, clustered(10, centres))
    queries = clustered(200, centres)
    started = time.perf_counter()
    for q_i, q in enumerate(queries):
        index.search(1_000_000 + q_i % people, q, 10)
    small = (time.perf_counter() - started) / len(queries)
    print(
        f"    {total:,} in total ({people} more people, built in {built:.1f} s): "
        f"100k person {per_query * 1000:.3f} ms/query, 1k people {small * 1000:.3f} ms/query",
        flush=True,
    )


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a CLIP directory (default: random ViT-B/32)")
    parser.add_argument("--photos", type=int, default=20, help="single photos, one at a time")
    parser.add_argument("--bursts", type=int, default=3, help="bursts of --people photos")
    parser.add_argument("--people", type=int, default=32, help="people per burst")
    parser.add_argument("--batch", type=int, default=32, help="bare encoder batch size")
    parser.add_argument("--precision", default="auto", help="the bot's CLIP_PRECISION")
    parser.add_argument("--engine", default="auto", help="the bot's CLIP_ENGINE")
    parser.add_argument("--no-bot", action="store_true", help="only the bare engines")
    parser.add_argument("--threads", type=int, default=0, help="the bot's TORCH_THREADS")
    parser.add_argument("--wait-ms", type=float, default=None, help="EMBED_BATCH_WAIT_MS")
    parser.add_argument(
        "--messages-per-second",
        type=float,
        default=None,
        help="TELEGRAM_MESSAGES_PER_SECOND (default 30, Telegram's limit: it caps a burst)",
    )
    parser.add_argument("--soak", type=float, default=0, help="seconds of sustained load")
    parser.add_argument("--faiss", action="store_true", help="also time FAISS at 100k / 1M")
    parser.add_argument("--faiss-only", action="store_true", help="only time FAISS")
    args = parser.parse_args()

    from learner.encoder import default_torch_threads

    threads = args.threads or default_torch_threads()
    env = {
        # A random CLIP embeds all screenshots alike (cosine ~0.99): only re-encodings of one
        # picture should count as "rated before", as with a real model.
        "DUPLICATE_THRESHOLD": "0.9995",
        "CLIP_PRECISION": args.precision,
        "CLIP_ENGINE": args.engine,
        "TORCH_THREADS": str(args.threads),
    }
    if args.wait_ms is not None:
        env["EMBED_BATCH_WAIT_MS"] = str(args.wait_ms)
    if args.messages_per_second is not None:
        env["TELEGRAM_MESSAGES_PER_SECOND"] = str(args.messages_per_second)
    print(cpu_description())
    print(f"cores {len(os.sched_getaffinity(0))}, threads {threads}, load {load_average()}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.faiss_only:
            bench_faiss(tmp)
            return
        model = args.model or build_clip(tmp / "clip", vit_b32_config())
        photos = [screenshot(i) for i in range(args.batch)]
        print("1. bare engines and the project's encoder", flush=True)
        bare = bench_encoder(
            model,
            photos,
            threads,
            reps=max(10, args.photos),
            batch=args.batch,
            engine=args.engine,
            precision=args.precision,
        )
        print_engine_table(bare, args.batch)
        if not args.no_bot:
            print("2. the bot (python -m bot, fake Bot API on 127.0.0.1)", flush=True)
            bot = bench_bot(model, tmp, args, env)
            report(args, bare, bot, model_name="given" if args.model else "random ViT-B/32")
        if args.faiss:
            bench_faiss(tmp)


def report(
    args: argparse.Namespace, bare: dict[str, Any], bot: dict[str, Any], model_name: str
) -> None:
    engines_only = {n: r for n, r in bare["engines"].items() if n not in bare["projects"]}
    fastest_single = min(engines_only, key=lambda n: engines_only[n]["single"])
    fastest_batched = min(engines_only, key=lambda n: engines_only[n]["batched"])
    single = statistics.median(bot["single"])
    burst = statistics.median(bot["burst"])
    print()
    print(f"model {model_name}; bot CLIP_ENGINE={args.engine}, {bare['threads']} thread(s)")
    print(f"load average during the run: single {bot['single_load']}, burst {bot['burst_load']}")
    print()
    print("| measurement | ms (per image) |")
    print("|---|---|")
    print(f"| bare decode (JPEG 1280×720, draft) | {ms(bare['decode'])} |")
    one, many = engines_only[fastest_single], engines_only[fastest_batched]
    print(f"| fastest bare engine, 1 image ({fastest_single}) | {ms(one['single'])} |")
    print(
        f"| fastest bare engine, batch of {args.batch} ({fastest_batched}) | "
        f"{ms(many['batched'])} |"
    )
    print(f"| bot single photo → reply, median | {ms(single)} |")
    print(f"| bot single photo → reply, p95 | {ms(percentile(bot['single'], 0.95))} |")
    print(f"| bot single photo, CPU time of the bot process | {ms(bot['single_cpu'])} |")
    print(f"| bot {args.people} people at once, wall time / photo | {ms(burst)} |")
    print(
        f"| bot {args.people} at once, each person's wait: median | "
        f"{ms(statistics.median(bot['burst_latency']))} |"
    )
    longest = max(bot["burst_latency"])
    print(f"| bot {args.people} at once, each person's wait: max | {ms(longest)} |")
    print()
    print("ratios against the fastest bare engine of each row (preprocessing in both):")
    print(f"  bot single photo ÷ {fastest_single}, one image: {single / one['single']:.2f}")
    print(
        f"  bot burst throughput ÷ {fastest_batched} batched throughput: "
        f"{many['batched'] / burst:.2f}"
    )
    print()
    print(f"per stage, median ms per photo (single | burst; batch sizes {bot['burst_batches']}):")
    names = sorted(set(bot["single_stages"]) | set(bot["burst_stages"]))
    for name in names:
        print(
            f"  {name:<22} {ms(bot['single_stages'].get(name, 0)):>8} | "
            f"{ms(bot['burst_stages'].get(name, 0)):>8}"
        )
    core = bot["single_total_in_core"]
    print(f"  {'in core':<22} {ms(core):>8}   (score_image start to end)")
    print(f"  {'outside core':<22} {ms(single - core):>8}   (getUpdates, PTB, reply sent)")
    in_run = bot["single_stages"]["forward"]
    print(f"bot single photo ÷ the bot's own forward pass (same run): {single / in_run:.2f}")
    current, peak = bot["rss"]
    print(f"bot RSS {current} MiB, peak {peak} MiB; errors in the bot log: {len(bot['errors'])}")
    for line in bot["errors"][:5]:
        print("   ", line)


def cpu_description() -> str:
    """The CPU's name and the flags that decide which engine and precision are fast."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    present = [f for f in wanted if f in flags]
    return f"CPU {name}; flags {' '.join(present) or 'none of ' + ' '.join(wanted)}"


if __name__ == "__main__":
    main()
