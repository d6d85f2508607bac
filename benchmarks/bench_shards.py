"""Shard writing, images/s: our snapshot writer against img2dataset, in one run, on the same images.

    .venv/bin/python benchmarks/bench_shards.py      # ~4 min on 2 cores (first run: +1 min for the venv)

What it does
  1. Creates img2dataset's own venv (benchmarks/.venv-img2dataset, git-ignored) from the pins in
     benchmarks/requirements-img2dataset.txt, so its dependencies never touch requirements.lock.
  2. Generates N distinct photo-like images (256-512 px a side, 7/8 JPEG q85, 1/8 PNG; cached in
     benchmarks/.cache/) and serves them from memory with a threaded HTTP/1.1 server on 127.0.0.1
     (keep-alive, TCP_NODELAY, in this driver process: its CPU is not counted for either tool).
  3. For each target size and process count P (the same thread count T for both tools), runs each
     tool R times, each time in a fresh interpreter, alternating which tool goes first, and times the
     tool's own entry call after its imports:
       ours        r2d2.data.snapshot: plan_shards -> snapshot_shard per shard -> merge_snapshot, which
                   is what `r2d2 snapshot` runs (T = snapshot.download.concurrency). P > 1: the
                   per-shard function in a spawn process pool, as img2dataset does. GX image suite
                   off (--gx turns it on; it checks images, it does not write them).
       img2dataset img2dataset.download(output_format="webdataset", processes_count=P, thread_count=T)
     Both read the same rows (url + caption) from Parquet, write shards of --shard-rows images,
     resize the longer side to the target (never upscaling), re-encode JPEG at --quality, hash the
     fetched bytes with sha256, skip EXIF and retries.
  4. Checks that each tool fetched every image once and wrote every image at the target size.
  5. Writes benchmarks/results/shards.json and the rows of the BENCHMARKS.md table.

Measures (medians over the repeats):
  in shards  images / (last shard end - first shard start), from per-shard timestamps: the steady
             state, what a corpus of millions of images sees. The ratio we judge the target on.
  wall       images / seconds of the whole entry call (pool start-up, planning, merge included).
  CPU ms/img CPU seconds (all threads; pool processes included) spent inside the shards, per image:
             the least load-sensitive number on a shared machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402 - standard library only, also imported in img2dataset's venv

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-img2dataset"
REQS = HERE / "requirements-img2dataset.txt"
CACHE = HERE / ".cache"
CAPTION_WORDS = ["一只", "小猫", "在", "草地上", "玩耍", "城市", "夜景", "灯火", "辉煌", "美丽的", "风景", "山水", "画", "红色", "汽车",
                 "停在", "路边", "海边", "日落", "孩子们", "公园里", "跑步", "古老的", "建筑", "蓝天", "白云", "下", "的", "花朵"]


# --- img2dataset's venv ----------------------------------------------------------------------------


def ensure_img2dataset_venv(python: str) -> Path:
    """benchmarks/.venv-img2dataset with the pinned requirements; rebuilt when the pins change."""
    py = VENV / "bin" / "python"
    stamp = VENV / ".requirements.sha256"
    want = hashlib.sha256(REQS.read_bytes()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return py
    print(f"[setup] creating {VENV.relative_to(common.ROOT)} from {REQS.name} (once, ~1 min)", flush=True)
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQS)], check=True)
    stamp.write_text(want + "\n")
    return py


# --- images and the loopback server ---------------------------------------------------------------


def generate_images(n: int, seed: int) -> list[tuple[str, bytes, str]]:
    """n distinct photo-like images: gradient + shapes + grain; cached on disk (name, bytes, type)."""
    folder = CACHE / f"images-n{n}-seed{seed}"
    done = folder / "done.json"
    if done.exists():
        meta = json.loads(done.read_text())
        return [(name, (folder / name).read_bytes(), ctype) for name, ctype in meta]
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    print(f"[setup] generating {n} images into {folder.relative_to(common.ROOT)} (once)", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grain = Image.fromarray(rng.integers(0, 256, (1100, 1100, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    grain_arr = (np.asarray(grain).astype(np.int16) - 128) // 2
    out = []
    for i in range(n):
        w, h = int(rng.integers(256, 513)), int(rng.integers(256, 513))
        im = Image.fromarray(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(4, 12))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = [x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        ox, oy = int(rng.integers(0, 1100 - w)), int(rng.integers(0, 1100 - h))
        arr = np.asarray(im, dtype=np.int16) + grain_arr[oy : oy + h, ox : ox + w]
        im = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        buf = io.BytesIO()
        if i % 8 == 7:
            im.save(buf, "PNG")
            name, ctype = f"{i:06d}.png", "image/png"
        else:
            im.save(buf, "JPEG", quality=85)
            name, ctype = f"{i:06d}.jpg", "image/jpeg"
        (folder / name).write_bytes(buf.getvalue())
        out.append((name, buf.getvalue(), ctype))
    done.write_text(json.dumps([[name, ctype] for name, _, ctype in out]))
    return out


class ImageServer:
    """Threaded HTTP/1.1 server on 127.0.0.1 answering GET /img/<name> from memory; counts hits."""

    def __init__(self, images: list[tuple[str, bytes, str]]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.files = {f"/img/{name}": (data, ctype) for name, data, ctype in images}
        self.hits = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive for clients that pool connections
            # TCP_NODELAY, as production servers set it: with Nagle on, a keep-alive client's next
            # request waits ~40 ms for a delayed ACK, which would measure the server, not the client.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                with lock:
                    server.hits += 1
                found = server.files.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                data, ctype = found
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # 5 by default: a burst of new connections would be refused
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/img/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_inputs(work: Path, images: list[tuple[str, bytes, str]], base: str) -> tuple[Path, Path]:
    """The same rows for both tools: our manifest folder and img2dataset's url/caption parquet."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from r2d2.data.manifest import MANIFEST_SCHEMA

    rnd = random.Random(0)
    rows = []
    for i, (name, _, _) in enumerate(images):
        caption = "".join(rnd.choices(CAPTION_WORDS, k=rnd.randint(3, 9)))
        rows.append({
            "sample_id": f"bench:{i}", "image_key": name, "image_source": "url", "image_ref": base + name, "text": caption,
            "text_kind": "caption", "source": "manifest", "source_file": "bench.parquet", "source_line": i + 1, "license": "bench",
        })
    ours = work / "validated"
    (ours / "manifest").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), ours / "manifest" / "part-00000.parquet")
    theirs = work / "img2dataset-input.parquet"
    pq.write_table(pa.table({"url": [r["image_ref"] for r in rows], "caption": [r["text"] for r in rows]}), theirs)
    return ours, theirs


# --- the two tools, each in its own subprocess -----------------------------------------------------


def _self_cpu_s() -> float:
    """CPU seconds of this driver process alone: while a tool runs, that is the image server."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that have exited (pool workers, logger)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed_shard(args: tuple[Any, ...]) -> dict[str, Any]:
    import resource

    from r2d2.data.snapshot import snapshot_shard

    name, plan_path, out_dir, cfg, rules = args
    start, cpu = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    result = snapshot_shard(name, plan_path, out_dir, cfg, rules)
    end = resource.getrusage(resource.RUSAGE_SELF)
    return {**result, "_start": start, "_end": time.time(), "_cpu": end.ru_utime + end.ru_stime - cpu.ru_utime - cpu.ru_stime}


def _patch_img2dataset() -> None:
    """Record the CPU seconds of each img2dataset shard (its pool process, all threads) next to its stats.

    Runs in img2dataset's spawned pool processes too: they import this file as __mp_main__ and
    inherit BENCH_I2D_SHARD_CPU. Only a getrusage before and after each shard; nothing else changes.
    """
    import resource

    from img2dataset.downloader import Downloader

    original = Downloader.download_shard

    def download_shard(self: Any, row: Any) -> Any:
        before = resource.getrusage(resource.RUSAGE_SELF)
        try:
            return original(self, row)
        finally:
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            Path(self.output_folder, f"{row[0]}_cpu.json").write_text(json.dumps({"cpu_s": cpu}))

    Downloader.download_shard = download_shard


if os.environ.get("BENCH_I2D_SHARD_CPU") == "1":
    _patch_img2dataset()


def worker_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from r2d2.data.download import DownloadConfig
    from r2d2.data.snapshot import SnapshotConfig, merge_snapshot, plan_shards
    from r2d2.data.validation import ValidateConfig

    cfg = SnapshotConfig(
        shard_rows=spec["shard_rows"], max_side=spec["max_side"], format="jpg", jpeg_quality=spec["quality"], progress=False,
        download=DownloadConfig(concurrency=spec["threads"], retries=0), image_workers=spec.get("image_workers"),
    )
    vcfg = ValidateConfig(gx_mode="aggregates" if spec["gx"] else "off", data_docs=False, progress=False, gx_root=spec["gx_root"])
    in_dir, out_dir = Path(spec["input"]), Path(spec["out"])
    c0, t0 = _cpu_s(), time.perf_counter()
    plan = plan_shards(in_dir, out_dir, cfg, vcfg.images)
    jobs = [(name, path, out_dir, cfg, vcfg.images) for name, path in plan]
    if spec["processes"] == 1:
        results = [_timed_shard(j) for j in jobs]
    else:
        with ProcessPoolExecutor(spec["processes"], mp_context=multiprocessing.get_context(spec["start_method"])) as pool:
            results = list(pool.map(_timed_shard, jobs))
    shard_window = max(r.pop("_end") for r in results) - min(r.pop("_start") for r in results)
    shard_cpu = sum(r.pop("_cpu") for r in results)
    summary = merge_snapshot(in_dir, out_dir, results, cfg, vcfg, time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "cpu_s": _cpu_s() - c0, "shard_s": shard_window, "shard_cpu_s": shard_cpu, "written": summary["images"], "failed": summary["ledger_rows"] + summary["quarantine_rows"],
            "tars": sorted(str(p) for p in (out_dir / "shards").glob("*.tar"))}


def worker_img2dataset(spec: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ["BENCH_I2D_SHARD_CPU"] = "1"
    _patch_img2dataset()
    from img2dataset import download

    out = Path(spec["out"])
    c0, t0 = _cpu_s(), time.perf_counter()
    download(
        url_list=spec["input"], input_format="parquet", url_col="url", caption_col="caption", output_format="webdataset",
        output_folder=str(out), processes_count=spec["processes"], thread_count=spec["threads"],
        number_sample_per_shard=spec["shard_rows"], image_size=spec["max_side"], resize_mode="keep_ratio_largest",
        resize_only_if_bigger=True, encode_format="jpg", encode_quality=spec["quality"], extract_exif=False,
        compute_hash="sha256", retries=0, timeout=10, enable_wandb=False,
    )
    wall = time.perf_counter() - t0
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    return {"wall_s": wall, "cpu_s": _cpu_s() - c0, "shard_s": max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats),
            "shard_cpu_s": sum(json.loads(p.read_text())["cpu_s"] for p in out.glob("*_cpu.json")),
            "written": sum(s["successes"] for s in stats), "failed": sum(s["count"] - s["successes"] for s in stats),
            "tars": sorted(str(p) for p in out.glob("*.tar"))}


def run_tool(tool: str, python: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One timed run in a fresh interpreter; the result comes back as JSON on the last stdout line."""
    # Offline: albumentations (img2dataset's resizer) asks PyPI for a newer version at import unless told not to.
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "false",
           "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([python, __file__, "--worker", tool, json.dumps(spec)], capture_output=True, text=True, env=env,
                          cwd=common.ROOT, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_output(tool: str, res: dict[str, Any], n: int, max_side: int) -> dict[str, Any]:
    """Every image written, each at the target size (longer side == max_side: all inputs are larger)."""
    import tarfile

    from PIL import Image

    if res["written"] != n or res["failed"]:
        raise RuntimeError(f"{tool}: wrote {res['written']} of {n} images ({res['failed']} failed)")
    count, sides, sizes = 0, set(), []
    for tar_path in res["tars"]:
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    count += 1
                    data = tar.extractfile(m).read()  # type: ignore[union-attr]
                    sizes.append(len(data))
                    if count % 25 == 1:
                        with Image.open(io.BytesIO(data)) as im:
                            sides.add(max(im.size))
    if count != n or sides != {max_side}:
        raise RuntimeError(f"{tool}: {count} jpgs in its tars (want {n}), longer sides {sorted(sides)} (want {max_side})")
    return {"jpgs": count, "mean_jpg_bytes": round(sum(sizes) / len(sizes))}


# --- driver ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1500, help="distinct images served and written per run")
    ap.add_argument("--processes", default="1,2", help="comma list of process counts (both tools)")
    ap.add_argument("--threads", type=int, default=16, help="threads per process (both tools; our default concurrency)")
    ap.add_argument("--sizes", default="224,64", help="comma list of target longer sides (224: R2D2's ViT input; 64: our default)")
    ap.add_argument("--image-workers", type=int, default=None,
                    help="ours: snapshot.image_workers (decoding threads per process; default: the CPUs / processes)")
    ap.add_argument("--shard-rows", type=int, default=250,
                    help="images per shard (both tools); 250 makes 6 shards, an equal share for 1, 2 or 3 processes "
                         "(with 500 the third shard ran alone, so P=2 measured one process for a third of the window)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded images")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start-method", default="spawn", choices=["spawn", "fork", "forkserver"],
                    help="how our P > 1 process pool starts (img2dataset always spawns)")
    ap.add_argument("--gx", action="store_true", help="run our GX image suite in the merge (constant ~s; off by default)")
    ap.add_argument("--tools", default="ours,img2dataset", help=argparse.SUPPRESS)  # profiling one side only
    ap.add_argument("--no-save", action="store_true", help="do not write results/ nor BENCHMARKS.md (smoke runs)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        tool, spec = args.worker[0], json.loads(args.worker[1])
        print(json.dumps(worker_ours(spec) if tool == "ours" else worker_img2dataset(spec)))
        return

    started = time.time()
    load_start = common.loadavg()
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    i2d_python = str(ensure_img2dataset_venv(base_python))
    i2d_version = subprocess.run([i2d_python, "-c", "import importlib.metadata as m; print(m.version('img2dataset'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    images = generate_images(args.images, args.seed)
    server = ImageServer(images)
    work = Path(tempfile.mkdtemp(prefix="r2d2-bench-shards-"))
    gx_root = work / "gx"
    shutil.copytree(common.ROOT / "great_expectations", gx_root, ignore=shutil.ignore_patterns("uncommitted"))
    tools = args.tools.split(",")
    procs = [int(p) for p in args.processes.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: list[dict[str, Any]] = []
    try:
        inputs = dict(zip(("ours", "img2dataset"), write_inputs(work, images, server.base), strict=True))
        warm_inputs = dict(zip(("ours", "img2dataset"), write_inputs(work / "warm", images[:100], server.base), strict=True))
        pythons = {"ours": sys.executable, "img2dataset": i2d_python}
        base_spec = {"threads": args.threads, "shard_rows": args.shard_rows, "quality": args.quality, "gx": args.gx,
                     "gx_root": str(gx_root), "start_method": args.start_method, "image_workers": args.image_workers}
        print(f"[bench] {len(images)} images (mean {sum(len(b) for _, b, _ in images) / len(images) / 1024:.0f} KiB) on {server.base}; "
              f"img2dataset {i2d_version}; load avg {load_start}", flush=True)
        for tool in tools:  # warm-up: page cache, .pyc files, first-import costs; not timed
            run_tool(tool, pythons[tool], {**base_spec, "input": str(warm_inputs[tool]), "out": str(work / f"warm-{tool}"),
                                           "processes": 1, "max_side": sizes[0]})
        for size in sizes:
            for p in procs:
                for rep in range(args.repeats):
                    for tool in tools if rep % 2 == 0 else tools[::-1]:  # alternate who goes first
                        out = work / f"out-{tool}-s{size}-p{p}-r{rep}"
                        spec = {**base_spec, "input": str(inputs[tool]), "out": str(out), "processes": p, "max_side": size}
                        hits0, load, server_cpu0 = server.hits, common.loadavg(), _self_cpu_s()
                        res = run_tool(tool, pythons[tool], spec)
                        res["server_cpu_s"] = _self_cpu_s() - server_cpu0  # this driver = the image server's threads
                        res["hits"] = server.hits - hits0
                        res.update(check_output(tool, res, len(images), size))
                        if res["hits"] != len(images):
                            raise RuntimeError(f"{tool}: server saw {res['hits']} requests for {len(images)} images")
                        shutil.rmtree(out, ignore_errors=True)
                        res.pop("tars")
                        n = len(images)
                        run = {"tool": tool, "max_side": size, "processes": p, "threads": args.threads, "repeat": rep, "load_before": load,
                               **res, "wall_ips": n / res["wall_s"], "shard_ips": n / res["shard_s"],
                               "cpu_ms_per_img": 1000 * res["cpu_s"] / n, "server_cpu_ms_per_img": 1000 * res["server_cpu_s"] / n, "shard_cpu_ms_per_img": 1000 * res["shard_cpu_s"] / n}
                        runs.append(run)
                        print(f"[run] {size}px P={p} T={args.threads} rep {rep} {tool:11s} wall {res['wall_s']:6.2f} s = "
                              f"{run['wall_ips']:5.0f} img/s | shards {run['shard_ips']:5.0f} img/s | CPU ms/img "
                              f"{run['cpu_ms_per_img']:5.2f} all, {run['shard_cpu_ms_per_img']:5.2f} in shards | server CPU ms/img "
                              f"{run['server_cpu_ms_per_img']:4.2f} | load {load}", flush=True)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)

    summary = []
    for size in sizes:
        for p in procs:
            row: dict[str, Any] = {"max_side": size, "processes": p, "threads": args.threads}
            for tool in tools:
                sel = [r for r in runs if r["tool"] == tool and r["processes"] == p and r["max_side"] == size]
                for metric in ("wall_ips", "shard_ips", "cpu_ms_per_img", "shard_cpu_ms_per_img", "server_cpu_ms_per_img"):
                    row[f"{tool}_{metric}"] = round(common.median([r[metric] for r in sel]), 2)
                    row[f"{tool}_{metric}_range"] = common.spread([r[metric] for r in sel], 2 if "cpu" in metric else 0)
                row[f"{tool}_mean_jpg_bytes"] = round(common.median([r["mean_jpg_bytes"] for r in sel]))
            if len(tools) == 2:
                row["ratio_wall"] = round(row["ours_wall_ips"] / row["img2dataset_wall_ips"], 2)
                row["ratio_shards"] = round(row["ours_shard_ips"] / row["img2dataset_shard_ips"], 2)
                row["ratio_cpu"] = round(row["img2dataset_shard_cpu_ms_per_img"] / row["ours_shard_cpu_ms_per_img"], 2)
            summary.append(row)
    load_end = common.loadavg()
    m = common.machine()
    print(f"\nmedians of {args.repeats}; img/s in shards (steady state) | img/s wall (whole call) | CPU ms/img in shards")
    for r in summary:
        line = f"{r['max_side']:4d}px {r['processes']} proc x {r['threads']} thr |"
        for tool in tools:
            line += f" {tool} {r[tool + '_shard_ips']:5.0f} | {r[tool + '_wall_ips']:5.0f} | {r[tool + '_shard_cpu_ms_per_img']:4.2f} |"
        if "ratio_shards" in r:
            line += f" ratio {r['ratio_shards']:.2f}x in shards, {r['ratio_wall']:.2f}x wall"
        print(line)
    print(f"load avg: start {load_start}, end {load_end}; {time.time() - started:.0f} s in all")
    if args.no_save or len(tools) != 2:
        return
    cmd = (f"`.venv/bin/python benchmarks/bench_shards.py --images {args.images} --sizes {args.sizes} --processes {args.processes}"
           f" --threads {args.threads}`")
    date = common.now()[:10]
    table = [{
        "benchmark": f"shard writing: {args.images} web images → {r['max_side']} px JPEG, {r['processes']} proc × {r['threads']} threads "
                     f"(median of {args.repeats})",
        "baseline": f"img2dataset {i2d_version}: {r['img2dataset_shard_ips']:.0f} img/s in shards, {r['img2dataset_wall_ips']:.0f} wall; "
                    f"{r['img2dataset_shard_cpu_ms_per_img']:.2f} CPU ms/img",
        "ours": f"r2d2 snapshot: {r['ours_shard_ips']:.0f} img/s in shards, {r['ours_wall_ips']:.0f} wall; "
                f"{r['ours_shard_cpu_ms_per_img']:.2f} CPU ms/img",
        "ratio": f"**{r['ratio_shards']:.2f}×** in shards; {r['ratio_wall']:.2f}× wall",
        "target": f"≥ 1.5× ({'met' if r['ratio_shards'] >= 1.5 else 'not met'} in shards)",
        "machine": f"{common.machine_line(m)} (load {load_start[0] if load_start else '?'})",
        "date": date, "command": cmd,
    } for r in summary]
    path = common.write_results("shards", {
        "benchmark": "shards", "date": common.now(), "machine": m, "load_start": load_start, "load_end": load_end,
        "img2dataset_version": i2d_version, "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "summary": summary, "runs": runs, "table": table,
    })
    common.render_benchmarks_md()
    print(f"wrote {path.relative_to(common.ROOT)} and BENCHMARKS.md")


if __name__ == "__main__":
    main()
