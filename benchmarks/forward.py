"""Forward rendering benchmark: rasterize + interpolate + Blinn-Phong, ours vs CPU peers.

For icosphere subdivisions 3–7 (1,280–327,680 faces) and the large blob asset at 256²,
512² and 1024²: the first call (compile + run), the median steady time, Mtri/s and Mpix/s;
scaling exponents (time vs faces at fixed resolution, time vs pixels at fixed faces); and,
when installed (``pip install -e ".[bench]"``), the same scenes through OpenGL (moderngl on
Mesa llvmpipe, headless EGL) and Mitsuba 3 (``llvm_ad_rgb``, 1 spp, the ``direct``
integrator: primary rays plus one shadow ray), printed as ours / theirs time ratios
(< 1: ours is faster). Steady times exclude uploads and read-backs for everyone.

    python benchmarks/forward.py [--quick] [--sizes 256 512] [--arch cpu] [--threads 1]
                                 [--profile] [--huge]

``--profile`` (instead of the table) times each kernel of a frame at 512² with 5,120 and
81,920 faces next to the bytes it moves and the floor they imply (``stages.py``);
``--huge`` renders 10 M faces at 2048×1024 and reports peak RSS. Timings on a shared
machine are noisy: compare ratios, or measure CPU time on one thread (``--threads 1``:
process time, steady under load).
"""

import argparse
import math
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import stages
import taichi as ti

from taichi_dr import Renderer, RenderSettings, backend
from taichi_dr.camera import Camera
from taichi_dr.scene import Mesh, icosphere, large_mesh

EYE, FOV = (0.0, 0.8, 2.9), 45.0
AMBIENT, LIGHT_DIR, LIGHT = 0.1, (0.3, 0.6, 1.0), 0.9  # the renderer's default lights
ALBEDO, SPECULAR, SHININESS = 0.8, 0.5, 32.0  # and default material


def camera(width: int, height: int) -> Camera:
    return Camera.look_at(EYE, (0, 0, 0), (0, 1, 0), FOV, width, height, 0.5, 10.0)


CLOCK = [time.perf_counter]  # time.process_time with --threads 1


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call, median of ``repeats`` further calls) in seconds; ``fn`` must sync."""
    clock = CLOCK[0]
    start = clock()
    fn()
    first = clock() - start
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return first, statistics.median(times)


class Ours:
    """A renderer per scene and resolution (its kernels compile once per process)."""

    @staticmethod
    def renderer(mesh: Mesh, size: tuple) -> Renderer:
        return Renderer(mesh, camera(*size), RenderSettings("blinn-phong"))

    @staticmethod
    def frame(r: Renderer) -> None:
        r.rasterize()
        r.shade()
        ti.sync()


class OpenGL:
    """The same scene and Blinn-Phong model in OpenGL on Mesa's llvmpipe (headless EGL)."""

    VERTEX = """
        #version 330
        uniform mat4 mvp;
        in vec3 in_pos; in vec3 in_normal;
        out vec3 v_pos; out vec3 v_normal;
        void main() { v_pos = in_pos; v_normal = in_normal; gl_Position = mvp * vec4(in_pos, 1); }
    """
    FRAGMENT = """
        #version 330
        uniform vec3 eye; uniform vec3 light_dir;
        uniform float ambient, light, albedo, specular, shininess;
        in vec3 v_pos; in vec3 v_normal; out vec4 color;
        void main() {
            vec3 n = normalize(v_normal), v = normalize(eye - v_pos), l = normalize(light_dir);
            if (dot(n, v) < 0.0) n = -n;
            float nl = dot(n, l);
            vec3 c = vec3(albedo * ambient);
            if (nl > 0.0) {
                vec3 h = normalize(l + v);
                c += light * (albedo * nl + specular * pow(max(dot(n, h), 1e-12), shininess));
            }
            color = vec4(c, 1.0);
        }
    """

    def __init__(self):
        import moderngl

        self.ctx = moderngl.create_standalone_context(backend="egl")
        self.name = self.ctx.info["GL_RENDERER"]
        self.prog = self.ctx.program(vertex_shader=self.VERTEX, fragment_shader=self.FRAGMENT)
        for key, value in dict(
            eye=EYE,
            light_dir=LIGHT_DIR,
            ambient=AMBIENT,
            light=LIGHT,
            albedo=ALBEDO,
            specular=SPECULAR,
            shininess=SHININESS,
        ).items():
            self.prog[key].value = value
        self.mesh = self.vao = self.fbo = None

    def prepare(self, mesh: Mesh, size: tuple) -> None:
        if self.mesh is not mesh:
            data = np.hstack([mesh.vertices, mesh.normals]).astype("f4")
            vbo = self.ctx.buffer(data.tobytes())
            ibo = self.ctx.buffer(mesh.faces.astype("i4").tobytes())
            self.vao = self.ctx.vertex_array(
                self.prog, [(vbo, "3f 3f", "in_pos", "in_normal")], ibo
            )
            self.mesh = mesh
        if self.fbo is None or self.fbo.size != size:
            self.fbo = self.ctx.simple_framebuffer(size, components=4, dtype="f4")
        self.prog["mvp"].write(camera(*size).mvp.T.astype("f4").tobytes())  # column-major

    def frame(self) -> None:
        import moderngl

        self.fbo.use()
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.fbo.clear(0.0, 0.0, 0.0, 1.0, depth=1.0)
        self.vao.render()
        self.ctx.finish()

    def image(self, size: tuple) -> np.ndarray:
        """The last frame as linear (H, W, 3), row 0 at the top."""
        raw = np.frombuffer(self.fbo.read(components=3, dtype="f4"), dtype="f4")
        return raw.reshape(size[1], size[0], 3)[::-1]


def _mitsuba_probe() -> str | None:
    """None when Mitsuba's LLVM variant renders here, else why not. In a subprocess: a
    too-old libLLVM aborts the process (Dr.Jit needs LLVM ≥ 16, e.g. Debian libllvm19)."""
    code = (
        "import mitsuba as mi, drjit as dr; mi.set_variant('llvm_ad_rgb'); "
        "s = mi.load_dict(mi.cornell_box()); dr.eval(mi.render(s, spp=1))"
    )
    try:
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        return "the probe render timed out"
    if run.returncode == 0:
        return None
    if "No module named" in run.stderr:
        return "not installed"
    last = (run.stderr.strip().splitlines() or ["aborted"])[-1][:100]
    return f"unusable ({last}; Dr.Jit's LLVM backend needs libLLVM >= 16, e.g. libllvm19)"


def mitsuba_scene(mi, mesh: Mesh, size: tuple, integrator: dict):
    """The benchmark scene (camera, directional light, ``mesh``) as a Mitsuba 3 scene."""
    m = mi.Mesh("mesh", mesh.num_vertices, mesh.num_faces, has_vertex_normals=True)
    params = mi.traverse(m)
    params["vertex_positions"] = mi.Float(mesh.vertices.astype(np.float32).ravel())
    params["faces"] = mi.UInt32(mesh.faces.astype(np.uint32).ravel())
    params["vertex_normals"] = mi.Float(mesh.normals.astype(np.float32).ravel())
    params.update()
    to_world = mi.ScalarTransform4f().look_at(origin=EYE, target=[0, 0, 0], up=[0, 1, 0])
    film = {"type": "hdrfilm", "width": size[0], "height": size[1], "rfilter": {"type": "box"}}
    sensor = {
        "type": "perspective",
        "fov": FOV,
        "fov_axis": "y",
        "to_world": to_world,
        "film": film,
        "sampler": {"type": "independent", "sample_count": 1},
    }
    light = {"type": "directional", "direction": [-c for c in LIGHT_DIR], "irradiance": LIGHT}
    return mi.load_dict(
        {"type": "scene", "integrator": integrator, "sensor": sensor, "light": light, "mesh": m}
    )


class Mitsuba:
    """Mitsuba 3, ``llvm_ad_rgb``: 1 spp, ``direct`` integrator, diffuse, directional light."""

    def __init__(self):
        import drjit as dr
        import mitsuba as mi

        mi.set_variant("llvm_ad_rgb")
        self.mi, self.dr = mi, dr
        self.name = f"Mitsuba {mi.__version__} llvm_ad_rgb"
        self.key = self.scene = None

    def prepare(self, mesh: Mesh, size: tuple) -> None:
        if self.key == (id(mesh), size):
            return
        integrator = {"type": "direct", "emitter_samples": 1, "bsdf_samples": 0}
        self.scene = mitsuba_scene(self.mi, mesh, size, integrator)
        self.key = (id(mesh), size)

    def frame(self) -> None:
        self.dr.eval(self.mi.render(self.scene, spp=1))
        self.dr.sync_thread()


def peers(enabled: bool) -> dict:
    if not enabled:
        return {}
    out = {}
    try:
        out["GL"] = OpenGL()
        print(f"OpenGL: moderngl on {out['GL'].name}")
    except ImportError:
        print("OpenGL (moderngl): not installed (pip install -e '.[bench]')")
    except Exception as exc:  # no EGL / no Mesa driver
        print(f"OpenGL (moderngl): unavailable ({str(exc).splitlines()[0][:100]})")
    why = _mitsuba_probe()
    if why is None:
        out["Mitsuba"] = Mitsuba()
        print(f"Mitsuba: {out['Mitsuba'].name}")
    else:
        print(f"Mitsuba: {why}")
    return out


def scenes(args) -> list[tuple[str, Mesh]]:
    out = [(f"ico{s}", icosphere(s)) for s in args.subdivisions]
    if args.large:
        mesh = large_mesh()
        out.append(("large blob", mesh))
    return out


def exponent(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def benchmark(args) -> list[dict]:
    meshes = scenes(args)
    ours = Ours()
    others = peers(args.peers)
    print()
    head = f"{'scene':>10} {'faces':>8} {'res':>9} {'first ms':>9} {'median ms':>9}"
    head += f" {'Mtri/s':>7} {'Mpix/s':>7}"
    for name in others:
        head += f" {name + ' ms':>11} {'ours/' + name:>11}"
    print(head)
    print("-" * len(head))
    rows = []
    for size in args.sizes:
        for name, mesh in meshes:
            res = (size, size)
            r = ours.renderer(mesh, res)
            first, med = timed(lambda r=r: ours.frame(r), args.repeats)
            row = dict(scene=name, faces=mesh.num_faces, pixels=size * size, first=first, t=med)
            line = f"{name:>10} {mesh.num_faces:>8,} {f'{size}²':>9} {first * 1e3:>9.1f}"
            line += f" {med * 1e3:>9.2f} {mesh.num_faces / med / 1e6:>7.1f}"
            line += f" {size * size / med / 1e6:>7.1f}"
            for pname, peer in others.items():
                peer.prepare(mesh, res)
                _, pmed = timed(peer.frame, args.repeats)
                row[pname] = pmed
                line += f" {pmed * 1e3:>11.2f} {med / pmed:>11.2f}"
            print(line, flush=True)
            rows.append(row)
        if "GL" in others:  # the peers draw the same picture
            gl = others["GL"].image(res)
            diff = np.abs(gl - r.image.to_numpy().reshape(gl.shape)).mean()  # r.image: flat
            print(f"{'':>10} (mean |ours − GL| at {size}², last scene: {diff:.1e})")
    return rows


def print_scaling(rows, args) -> None:
    ref_res = 512 if 512 in args.sizes else args.sizes[len(args.sizes) // 2]
    ico = [r for r in rows if r["scene"].startswith("ico")]
    fixed_res = [r for r in ico if r["pixels"] == ref_res**2]
    if len(fixed_res) > 1:
        f = [r["faces"] for r in fixed_res]
        t = [r["t"] for r in fixed_res]
        print(
            f"scaling at {ref_res}²: time ∝ faces^{exponent(f, t):.2f} "
            f"({f[0]:,} → {f[-1]:,} faces: {t[0] * 1e3:.1f} → {t[-1] * 1e3:.1f} ms)"
        )
    ref_faces = 81_920 if any(r["faces"] == 81_920 for r in ico) else ico[-1]["faces"]
    fixed_faces = [r for r in ico if r["faces"] == ref_faces]
    if len(fixed_faces) > 1:
        p = [r["pixels"] for r in fixed_faces]
        t = [r["t"] for r in fixed_faces]
        print(
            f"scaling at {ref_faces:,} faces: time ∝ pixels^{exponent(p, t):.2f} "
            f"({p[0]:,} → {p[-1]:,} pixels: {t[0] * 1e3:.1f} → {t[-1] * 1e3:.1f} ms)"
        )


def profile(args) -> None:
    """Per-kernel time and traffic of one frame at 512², 5,120 and 81,920 faces."""
    tiny = Ours.renderer(icosphere(0), (8, 8))
    _, fixed = timed(lambda: Ours.frame(tiny), 10 * args.repeats)
    for sub in (4, 6):
        r = Ours.renderer(icosphere(sub), (512, 512))
        _, whole = timed(lambda r=r: Ours.frame(r), args.repeats)
        rows = stages.profile(lambda r=r: Ours.frame(r), args.repeats, CLOCK[0])
        print(f"\nforward at 512², {r.mesh.num_faces:,} faces, per frame (median):")
        stages.print_table(rows, r.frame.pixels, whole, fixed)


def grid_mesh(faces: int) -> Mesh:
    """A wavy height field with exactly ``faces`` faces (even), built with NumPy only."""
    nx = int(math.sqrt(faces / 2 * 1.25))
    while (faces // 2) % nx:
        nx -= 1
    ny = faces // 2 // nx
    x, z = np.meshgrid(np.linspace(-1.6, 1.6, nx + 1), np.linspace(-1, 1, ny + 1))
    y = 0.15 * np.sin(6 * x) * np.cos(5 * z)
    v = np.stack([x, y, z], -1).reshape(-1, 3)
    gx, gz = 0.9 * np.cos(6 * x) * np.cos(5 * z), -0.75 * np.sin(6 * x) * np.sin(5 * z)
    n = np.stack([-gx, np.ones_like(x), -gz], -1).reshape(-1, 3)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    i = np.arange(ny)[:, None] * (nx + 1) + np.arange(nx)[None]
    a, b, c, d = i, i + 1, i + nx + 2, i + nx + 1
    f = np.concatenate([np.stack([a, d, c], -1), np.stack([a, c, b], -1)]).reshape(-1, 3)
    return Mesh(v, f.astype(np.int32), n, name=f"grid{faces}")


def huge(args) -> None:
    start = time.perf_counter()
    mesh = grid_mesh(10_000_000)
    built = time.perf_counter() - start
    print(
        f"\nhuge: {mesh.num_faces:,} faces, {mesh.num_vertices:,} vertices (built in {built:.1f} s)"
    )
    r = Renderer(mesh, Camera.look_at((0, 1.6, 2.4), (0, 0, 0), (0, 1, 0), FOV, 2048, 1024))
    first, med = timed(lambda: Ours.frame(r), max(1, min(args.repeats, 3)))
    covered = float((r.triangle_id.to_numpy() >= 0).mean())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"huge at 2048×1024: first {first:.2f} s, median {med * 1e3:.0f} ms "
        f"({mesh.num_faces / med / 1e6:.1f} Mtri/s), coverage {covered:.0%}, "
        f"peak RSS {rss:.2f} GiB"
    )


def threads(n: int | None) -> dict:
    """``ti.init`` options for ``--threads n``; one thread switches the clock to CPU time."""
    if n == 1:
        CLOCK[0] = time.process_time
    return {"cpu_max_num_threads": n} if n else {}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cpu", choices=backend.ARCHS)
    p.add_argument("--quick", action="store_true", help="256² and 512², ico 3 and 5, 3 repeats")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="square resolutions")
    p.add_argument("--subdivisions", type=int, nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=None, help="timed calls after the first")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="ours only")
    p.add_argument("--threads", type=int, help="CPU threads (1: time CPU time, not wall time)")
    p.add_argument("--profile", action="store_true", help="only per-kernel times at 512²")
    p.add_argument("--huge", action="store_true", help="10 M faces at 2048×1024, peak RSS")
    args = p.parse_args(argv)
    args.sizes = args.sizes or ([256, 512] if args.quick else [256, 512, 1024])
    args.subdivisions = args.subdivisions or ([3, 5] if args.quick else [3, 4, 5, 6, 7])
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.large = not args.quick
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    arch = backend.init(args.arch, "f32", **threads(args.threads))
    clock = "CPU time, 1 thread" if args.threads == 1 else "wall time"
    print(f"taichi_dr forward: arch {arch}, f32, median of {args.repeats} calls ({clock})")
    if args.profile:
        profile(args)
    else:
        print_scaling(benchmark(args), args)
    if args.huge:
        huge(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
