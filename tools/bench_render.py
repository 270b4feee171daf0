"""Benchmark the torch renderer on the default head model, at 1 and 2 torch threads.

    python tools/bench_render.py [--json out.json] [--repeats 15] [--quick]

Measures, for the default head mesh (and its subdivided version when available) at
256x256 and 512x512, batch 1 and 8: `rasterize` alone, the full `render_mesh` forward
(rasterize + interpolate vertex colours and normals + SH shading + antialias, under
no_grad) and forward+backward (gradients w.r.t. vertices, vertex colours and SH), each with
torch.set_num_threads(1) and then (2), in consecutive blocks of calls. Times are wall-clock
medians (and minima) in ms, plus the median process CPU time; the 1-minute load average
is printed per row (the machine may be shared). Also: a straightforward per-triangle loop
rasterizer as a baseline, and peak memory of a 1024x1024 batch-8 forward+backward in a
fresh process (ru_maxrss delta).

The torch backend uses the compiled numba kernels of render/kernels.py on CPU when numba
is importable (MORPH3D_NUMBA=0 disables them); the forward of the same build on the
pure-torch path (batch 1, 1 thread) is timed against it call by call, and the compile time
(first call with an empty numba cache) and cached first call are measured in fresh
processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import cpu_name, write_json  # noqa: E402

from render import Camera, axis_angle_to_matrix, rasterize, render_mesh  # noqa: E402
from render.camera import FRONT  # noqa: E402
from render.synthetic import head_like_mesh  # noqa: E402


def load_meshes() -> tuple[str, list[tuple[str, torch.Tensor, torch.Tensor]]]:
    """[(label, vertices V x 3 centred, triangles)] for the head model and its subdivision."""
    meshes = []
    try:
        from morph3d.model.registry import load_model

        model = load_model("default")
        source = "morph3d.model.registry.load_model('default')"
        meshes.append(("default head", model.vertices().detach()[0], model.triangles))
        try:
            dense = load_model("default", subdivided=True)
            meshes.append(("subdivided head", dense.vertices().detach()[0], dense.triangles))
        except Exception as exc:  # noqa: BLE001 - optional
            print(f"(subdivided model unavailable: {exc})", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - fall back to the synthetic mesh
        print(f"(default head model unavailable: {exc}; using the synthetic head)",
              file=sys.stderr)
        synthetic = head_like_mesh()
        source = "render.synthetic.head_like_mesh()"
        meshes.append(("synthetic head", synthetic.vertices, synthetic.triangles))
    centred = []
    for label, verts, tris in meshes:
        centre = (verts.amax(0) + verts.amin(0)) / 2
        centred.append((label, (verts - centre).contiguous(), tris))
    return source, centred


def camera_for(size: int) -> Camera:
    cam = Camera.looking_at_face(size, size, distance_mm=600.0)
    R = torch.tensor(FRONT) @ axis_angle_to_matrix(torch.tensor([0.1, 0.4, 0.0]))
    return cam.with_pose(R, torch.tensor([0.0, 0.0, 600.0]))


def timed(fn, repeats: int, threads: tuple[int, ...] = (1, 2)) -> dict[int, dict[str, float]]:
    """Per thread count: wall median / min and CPU (process time) median in ms, after one
    warm-up call. The thread counts run in consecutive blocks (as the pipeline runs: one
    fixed count), not call by call: after a 2-thread call the idle OpenMP worker keeps
    spinning and, on a busy 2-core machine, slows the next 1-thread call by 30-50 %."""
    wall: dict[int, list[float]] = {t: [] for t in threads}
    cpu: dict[int, list[float]] = {t: [] for t in threads}
    for t in threads:
        torch.set_num_threads(t)
        fn()
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[t].append((time.perf_counter() - start) * 1000)
            cpu[t].append((time.process_time() - start_cpu) * 1000)
    torch.set_num_threads(1)
    out = {}
    for t in threads:
        w, c = sorted(wall[t]), sorted(cpu[t])
        out[t] = {"median": w[len(w) // 2], "min": w[0], "cpu": c[len(c) // 2]}
    return out


def baseline_rasterize(clip: torch.Tensor, triangles: torch.Tensor, H: int, W: int):
    """The straightforward way: loop over triangles, fill a z-buffer with torch ops."""
    c = clip[0]
    w = c[:, 3]
    sx = (c[:, 0] / w + 1) * W / 2 - 0.5
    sy = (c[:, 1] / w + 1) * H / 2 - 0.5
    sz = c[:, 2] / w
    zbuf = torch.full((H, W), float("inf"))
    ids = torch.full((H, W), -1, dtype=torch.int64)
    for f, (i0, i1, i2) in enumerate(triangles.tolist()):
        x = torch.stack([sx[i0], sx[i1], sx[i2]])
        y = torch.stack([sy[i0], sy[i1], sy[i2]])
        x0, x1 = max(int(torch.ceil(x.min())), 0), min(int(torch.floor(x.max())), W - 1)
        y0, y1 = max(int(torch.ceil(y.min())), 0), min(int(torch.floor(y.max())), H - 1)
        if x0 > x1 or y0 > y1:
            continue
        py, px = torch.meshgrid(torch.arange(y0, y1 + 1, dtype=c.dtype),
                                torch.arange(x0, x1 + 1, dtype=c.dtype), indexing="ij")
        area = (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])
        if area.abs() < 1e-12:
            continue
        b0 = ((x[1] - px) * (y[2] - py) - (x[2] - px) * (y[1] - py)) / area
        b1 = ((x[2] - px) * (y[0] - py) - (x[0] - px) * (y[2] - py)) / area
        b2 = 1 - b0 - b1
        z = b0 * sz[i0] + b1 * sz[i1] + b2 * sz[i2]
        win = (b0 >= 0) & (b1 >= 0) & (b2 >= 0) & (z < zbuf[y0:y1 + 1, x0:x1 + 1])
        zbuf[y0:y1 + 1, x0:x1 + 1] = torch.where(win, z, zbuf[y0:y1 + 1, x0:x1 + 1])
        ids[y0:y1 + 1, x0:x1 + 1] = torch.where(win, f, ids[y0:y1 + 1, x0:x1 + 1])
    return ids


def sh_coeffs(batch: int) -> torch.Tensor:
    sh = torch.zeros(batch, 9, 3)
    sh[:, 0] = 0.8
    sh[:, 2] = 0.3
    sh[:, 3] = -0.1
    return sh


def bench_mesh(verts, tris, size: int, batch: int, repeats: int) -> dict:
    cam = camera_for(size)
    vb = verts.unsqueeze(0).expand(batch, -1, -1).contiguous()
    colors = torch.full((batch, verts.shape[0], 3), 0.7)
    clip = cam.to_clip(vb)
    load_before = os.getloadavg()[0]
    raster_ms = timed(lambda: rasterize(clip, tris, (size, size), backend="torch"), repeats)

    def forward():
        with torch.no_grad():
            render_mesh(vb, tris, cam, vertex_colors=colors, sh_coeffs=sh_coeffs(batch),
                        backend="torch")

    v = vb.clone().requires_grad_(True)
    c = colors.clone().requires_grad_(True)
    sh = sh_coeffs(batch).requires_grad_(True)

    def forward_backward():
        out = render_mesh(v, tris, cam, vertex_colors=c, sh_coeffs=sh, backend="torch")
        (out.image.square().mean() + out.mask.mean()).backward()

    fwd = timed(forward, repeats)
    fwd_bwd = timed(forward_backward, repeats)
    torch.set_num_threads(1)
    coverage = rasterize(clip, tris, (size, size)).coverage.float().mean().item()
    return {"rasterize": raster_ms, "forward": fwd, "forward_backward": fwd_bwd,
            "coverage": coverage, "load": (load_before + os.getloadavg()[0]) / 2}


def memory_probe() -> None:
    """Runs in a fresh process: ru_maxrss growth of a 1024x1024 batch-8 render + backward."""
    torch.set_num_threads(1)
    _, meshes = load_meshes()
    _, verts, tris = meshes[0]
    small = camera_for(64)
    render_mesh(verts, tris, small, sh_coeffs=sh_coeffs(1))  # import/warm-up cost excluded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cam = camera_for(1024)
    v = verts.unsqueeze(0).expand(8, -1, -1).contiguous().requires_grad_(True)
    start = time.perf_counter()
    out = render_mesh(v, tris, cam, vertex_colors=torch.full((8, verts.shape[0], 3), 0.7),
                      sh_coeffs=sh_coeffs(8))
    forward_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.image.mean().backward()
    elapsed = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"forward_peak_mib": (forward_peak - before) / 1024,
                      "forward_backward_peak_mib": (after - before) / 1024,
                      "forward_backward_ms": elapsed}))


def kernel_probe() -> None:
    """Runs in a fresh process: seconds of the first forward+backward (import of numba and
    compile or cache load of the kernels included) and of the second one."""
    torch.set_num_threads(1)
    _, meshes = load_meshes()
    _, verts, tris = meshes[0]
    cam = camera_for(256)
    times = []
    for _ in range(2):
        v = verts.clone().requires_grad_(True)
        start = time.perf_counter()
        out = render_mesh(v, tris, cam, vertex_colors=torch.full_like(verts, 0.7),
                          sh_coeffs=sh_coeffs(1))
        out.image.mean().backward()
        times.append(time.perf_counter() - start)
    print(json.dumps({"first_s": times[0], "second_s": times[1]}))


def run_kernel_probe(cache_dir: str | None) -> dict:
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    probe = subprocess.run([sys.executable, __file__, "--kernel-probe"], capture_output=True,
                           text=True, check=False, env=env)
    if probe.returncode != 0:
        print(f"kernel probe failed: {probe.stderr.strip()[-300:]}")
        return {}
    return json.loads(probe.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the headline numbers here")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="batch 1 and the default mesh only")
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kernel-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_probe:
        memory_probe()
        return
    if args.kernel_probe:
        kernel_probe()
        return
    import render.raster

    kernels = render.raster.kernels_available()
    print(f"# compiled CPU kernels (numba): {'on' if kernels else 'off'}")
    source, meshes = load_meshes()
    if args.quick:
        meshes = meshes[:1]
    print(f"# machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"mesh source: {source}; load average at start {os.getloadavg()[0]:.1f}")
    print("| mesh | V | F | size | batch | threads | load | rasterize ms | forward ms | "
          "fwd+bwd ms | fwd+bwd / fwd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results: dict[tuple[str, int, int], dict] = {}

    def cell(r: dict) -> str:
        return f"{r['median']:.1f} ({r['min']:.1f}; cpu {r['cpu']:.1f})"

    for label, verts, tris in meshes:
        for size in (256, 512):
            for batch in ((1,) if args.quick else (1, 8)):
                r = bench_mesh(verts, tris, size, batch, args.repeats if batch == 1 else
                               max(3, args.repeats // 3))
                results[(label, size, batch)] = r
                for t in (1, 2):
                    ratio = (r["forward_backward"][t]["median"]
                             / r["forward"][t]["median"])
                    print(f"| {label} | {verts.shape[0]} | {tris.shape[0]} | {size} | {batch} | "
                          f"{t} | {r['load']:.1f} | {cell(r['rasterize'][t])} | "
                          f"{cell(r['forward'][t])} | {cell(r['forward_backward'][t])} | "
                          f"{ratio:.2f} |", flush=True)
    print("(wall-clock median (min; median process CPU time) of repeated runs, ms; "
          "load = 1-minute load average during the row)")

    label, verts, tris = meshes[0]
    pure, paired = {}, {}
    if kernels:  # A/B: the same build with and without the compiled kernels, call by call
        for size in (256, 512):
            cam = camera_for(size)
            vb = verts.unsqueeze(0).contiguous()
            colors = torch.full((1, verts.shape[0], 3), 0.7)

            def forward(use: bool, cam=cam, vb=vb, colors=colors):
                render.raster._KERNELS_AVAILABLE = use
                with torch.no_grad():
                    render_mesh(vb, tris, cam, vertex_colors=colors, sh_coeffs=sh_coeffs(1),
                                backend="torch")

            walls: dict[bool, list[float]] = {True: [], False: []}
            for use in (True, False):
                forward(use)
            torch.set_num_threads(1)
            for _ in range(args.repeats):
                for use in (True, False):
                    start = time.perf_counter()
                    forward(use)
                    walls[use].append((time.perf_counter() - start) * 1000)
            render.raster._KERNELS_AVAILABLE = None
            on, off = sorted(walls[True]), sorted(walls[False])
            paired[size] = on[len(on) // 2]
            pure[size] = off[len(off) // 2]
            print(f"A/B forward {size}x{size}, 1 thread, alternating: kernels "
                  f"{paired[size]:.1f} ms (min {on[0]:.1f}), pure-torch path {pure[size]:.1f} ms "
                  f"(min {off[0]:.1f}) -> {pure[size] / paired[size]:.2f}x")
    baseline = {}
    for size in (256, 512):
        clip = camera_for(size).to_clip(verts)
        start = time.perf_counter()
        ids = baseline_rasterize(clip, tris, size, size)
        baseline_ms = (time.perf_counter() - start) * 1000
        ours = rasterize(clip, tris, (size, size), backend="torch").triangle_id[0]
        covered = (ids >= 0) | (ours >= 0)
        agree = (ids == ours)[covered].float().mean().item()
        ours_ms = results[(label, size, 1)]["rasterize"][1]["median"]
        baseline[size] = baseline_ms / ours_ms
        print(f"baseline per-triangle loop {size}x{size}: {baseline_ms:.0f} ms, "
              f"ours {ours_ms:.1f} ms -> {baseline[size]:.0f}x faster; "
              f"triangle ids agree on {agree:.4%} of covered pixels")

    probe = subprocess.run([sys.executable, __file__, "--memory-probe"], capture_output=True,
                           text=True, check=False)
    memory = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else {}
    if memory:
        print(f"1024x1024 batch 8 ({label}): peak RSS growth forward "
              f"{memory['forward_peak_mib']:.0f} MiB, forward+backward "
              f"{memory['forward_backward_peak_mib']:.0f} MiB "
              f"({memory['forward_backward_ms']:.0f} ms)")
    else:
        print(f"memory probe failed: {probe.stderr.strip()[-300:]}")

    compile_probe, cached_probe = {}, {}
    if kernels:
        import tempfile

        with tempfile.TemporaryDirectory() as empty_cache:
            compile_probe = run_kernel_probe(empty_cache)
        cached_probe = run_kernel_probe(None)
        if compile_probe and cached_probe:
            print(f"kernels: first forward+backward in a fresh process with an empty numba "
                  f"cache {compile_probe['first_s']:.1f} s (compile), with the cache "
                  f"{cached_probe['first_s']:.2f} s (numba import + cache load), then "
                  f"{1000 * cached_probe['second_s']:.0f} ms")

    if args.json:
        r256, r512 = results[(label, 256, 1)], results[(label, 512, 1)]

        def med(r: dict, key: str, threads: int = 1) -> float:
            return r[key][threads]["median"]

        summary = {
            "mesh": label,
            "vertices": int(verts.shape[0]),
            "triangles": int(tris.shape[0]),
            "threads": 1,
            "forward_ms_256": med(r256, "forward"),
            "forward_ms_512": med(r512, "forward"),
            "rasterize_ms_256": med(r256, "rasterize"),
            "rasterize_ms_512": med(r512, "rasterize"),
            "forward_backward_ms_256": med(r256, "forward_backward"),
            "forward_backward_ms_512": med(r512, "forward_backward"),
            "backward_over_forward": med(r256, "forward_backward") / med(r256, "forward"),
            "backward_over_forward_512": (med(r512, "forward_backward")
                                          / med(r512, "forward")),
            "forward_ms_256_2threads": med(r256, "forward", 2),
            "forward_ms_512_2threads": med(r512, "forward", 2),
            "forward_backward_ms_256_2threads": med(r256, "forward_backward", 2),
            "forward_backward_ms_512_2threads": med(r512, "forward_backward", 2),
            "forward_min_ms_256": r256["forward"][1]["min"],
            "forward_min_ms_512": r512["forward"][1]["min"],
            "forward_cpu_ms_256": r256["forward"][1]["cpu"],
            "forward_cpu_ms_512": r512["forward"][1]["cpu"],
            "baseline_over_ours": baseline[256],
            "baseline_over_ours_512": baseline[512],
            "peak_mib_1024_batch8": memory.get("forward_backward_peak_mib"),
            "kernels": kernels,
            "ab_forward_ms_256": paired.get(256),
            "ab_forward_ms_512": paired.get(512),
            "ab_pure_torch_forward_ms_256": pure.get(256),
            "ab_pure_torch_forward_ms_512": pure.get(512),
            "kernel_compile_s": compile_probe.get("first_s"),
            "kernel_cached_first_call_s": cached_probe.get("first_s"),
            "load_average": {f"{k[0]} {k[1]} b{k[2]}": v["load"] for k, v in results.items()},
            "cpu": cpu_name(),
        }
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
