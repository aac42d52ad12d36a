"""Shared fixtures: tiny generated collections and galleries, built once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# OpenMP threads that wait for work sleep instead of spinning. The suite runs several processes at once on few cores
# (the CLI and the server beside pytest, Ray's workers, a browser); spinning threads then take the core a busy thread
# needs, and torch's fp32 model ran 5-15× slower on 2 cores under load (1.7 vs 15 ms per 32-px image, resnet18).
# Set before torch is imported (here and in every subprocess, which inherits it); it changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numpy asks for transparent huge pages for every array of 4 MiB or more (madvise), and where the kernel then compacts
# memory to find them (defrag=madvise, as here) a first touch can stall: a 1 GiB copy took 9 s of system time on this
# machine, 0.5 s without, and the 512 MiB gallery test in test_shards.py ran 18-22 s against 8.5 s. Set before numpy is
# imported (this module imports nothing that imports it; every subprocess inherits it); it changes no result.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")


def needs_ray(item: pytest.Item) -> bool:
    return "ray_address" in getattr(item, "fixturenames", ())


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def run_root(config: pytest.Config) -> Path:
    """The run's temporary root: this session's basetemp, or under pytest-xdist the controller's, which holds each
    worker's (as `built_once` uses it)."""
    base = config._tmp_path_factory.getbasetemp()  # the object behind the tmp_path_factory fixture
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


RAY_MODULES = "ray-modules.json"  # written by the workers at collection, read by the controller's scheduler
ray_modules: set[str] = set()  # this process's: the modules with a test on Ray (`needs_ray`)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`: one worker per core, `--dist loadscope`) each module runs in one worker, so its
    module-scoped fixtures are built once, and the modules go out in this order (see `pytest_xdist_make_scheduler`),
    longest first, so that the workers finish together: those on the session's Ray cluster, then those with slow or
    browser tests, then the rest (file order within each). The modules on Ray go to one worker, as one unit: one Ray
    cluster for the run, not one per worker, and it stops once they are done (`ray_address`)."""

    def rank(item: pytest.Item) -> int:
        if needs_ray(item):
            return 0
        return 1 if item.get_closest_marker("slow") or item.get_closest_marker("browser") else 2

    by_module: dict[str, int] = {}
    for item in items:
        by_module[item.module.__name__] = min(by_module.get(item.module.__name__, 2), rank(item))
    items.sort(key=lambda item: by_module[item.module.__name__])
    ray_modules.update(module_of(item.nodeid) for item in items if needs_ray(item))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects the same items and writes the same list
        import json

        path = run_root(config) / RAY_MODULES
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(sorted(ray_modules)))
        tmp.replace(path)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook, in its controller
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadscope` as pytest-xdist has it, with three changes: the scopes (modules) go out in the order
    `pytest_collection_modifyitems` gave them, not by their number of tests (xdist's default, `--loadscope-reorder`);
    the modules on Ray are one scope, so one worker runs them all on one cluster; and a parameter holding "::" (an IPv6
    address) no longer splits its test off its module. (`--dist loadgroup` with xdist_group markers would say the
    second, but pytest-xdist 3.8 sets a node id attribute pytest 9 no longer reads, so its groups never form.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    import json

    from xdist.scheduler import LoadScopeScheduling

    class RayModulesTogether(LoadScopeScheduling):
        ray: set[str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.ray is None:  # first called once every worker has collected: the list is written
                path = run_root(config) / RAY_MODULES
                self.ray = set(json.loads(path.read_text())) if path.is_file() else set()
            if module_of(nodeid) in self.ray:
                return "ray"
            return super()._split_scope(nodeid.split("[", 1)[0])  # the module (or class), whatever the parameters

    config.option.loadscopereorder = False
    return RayModulesTogether(config, log)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Converted models (OpenVINO IR) go to a folder of this test session, never the user's ~/.cache (subprocesses
    inherit it)."""
    path = tmp_path_factory.mktemp("model-cache")
    os.environ["LOOKALIKE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def random_draws_kept() -> Iterator[None]:
    """The suite loads the same random models many times in one process: each draw is kept and copied
    (`keep_random_draws`; test_weights compares the copies with fresh draws)."""
    from lookalike.embed.models import keep_random_draws

    keep_random_draws()
    yield
    keep_random_draws(False)


@pytest.fixture
def ram_tmp_path(tmp_path) -> Iterator[Path]:
    """A temporary folder in memory (tmpfs: /dev/shm) where there is one with 2 GiB free, else `tmp_path`; removed
    after the test. For tests that write large files whose storage is not their point: this machine's disk wrote CLIP's
    600 MB of weights at about 250 MB/s, tmpfs at over 1 GB/s."""
    import tempfile

    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 2**30):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="lookalike-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


LOOKALIKE = [sys.executable, "-m", "lookalike.cli"]  # the same entry point as the `lookalike` script


def random_pixels(n: int, size: int, seed: int | None = None):
    """`n` random model inputs as backends take them: (n, size, size, 3) uint8 pixels."""
    import torch

    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)


def run_cli(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run the real `lookalike` command line and return the finished process (stdout/stderr as text)."""
    proc = subprocess.run([*LOOKALIKE, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"lookalike {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def run_main(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`run_cli` in this process: the same `lookalike.cli.main`, without the ~2 s a new interpreter spends on imports.

    For tests whose point is what a command writes and prints, not the process itself (its exit, signals, a fresh
    interpreter); stdout and stderr are captured as text, argparse's exits give their exit code."""
    import contextlib
    import io

    from lookalike.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse: --help, or a usage error
            code = exc.code if isinstance(exc.code, int) else 1
    proc = subprocess.CompletedProcess(["lookalike", *map(str, args)], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"lookalike {' '.join(map(str, args))} failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# The real command in a new interpreter, except that it rests `pause` seconds after saving each shard: a run of a few
# small images cannot then finish between two looks of the test that kills it.
PAUSING_LOOKALIKE = [
    sys.executable,
    "-c",
    "import sys, time\n"
    "import lookalike.embed.extract as extraction\n"
    "from lookalike.cli import main\n"
    "pause, write = float(sys.argv.pop(1)), extraction.write_shard\n"
    "def write_and_rest(*args, **kwargs):\n"
    "    write(*args, **kwargs)\n"
    "    time.sleep(pause)\n"
    "extraction.write_shard = write_and_rest\n"
    "sys.exit(main(sys.argv[1:]))\n",
]


def kill_after_shards(args: list, out: Path, shards: int = 3, timeout: float = 120, pause: float = 0.25) -> None:
    """Start `lookalike ARGS --out OUT` and SIGKILL it once `shards` shards are saved in OUT/.partial (what a crash
    leaves). The run rests `pause` seconds after each shard it saves (see PAUSING_LOOKALIKE), so any number of images
    above `shards` shards is enough; `pause=0` runs the command as it is."""
    import signal
    import time

    command = [*PAUSING_LOOKALIKE, str(pause)] if pause else LOOKALIKE
    proc = subprocess.Popen(
        [*command, *map(str, args), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while len(list((Path(out) / ".partial").glob("shard-*.npz"))) < shards:
        assert proc.poll() is None, "the run finished before it could be killed; give it more images"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextmanager
def built_once(tmp_path_factory, name: str) -> Iterator[tuple[Path, bool]]:
    """A folder for what a session fixture makes, and whether this process must make it: once per test run.

    Under pytest-xdist every worker is a session of its own, so a session fixture would be built once per worker.
    The workers share one folder in the run's temporary root instead: the first to arrive builds it while holding a
    file lock, and the others wait for the lock and read what it built. Without xdist it is this session's folder.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        yield tmp_path_factory.mktemp(name), True
        return
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / "built-once" / name  # the run's root, shared by its workers
    folder.parent.mkdir(exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if (folder / ".built").exists():
            yield folder, False
            return
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        yield folder, True
        (folder / ".built").touch()  # only once the fixture's code returned: a failed build is built again


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory) -> Path:
    """5 classes × (20 train + 4 val) images of 64×64 in the tiny-ImageNet layout."""
    from lookalike.data.synthetic import generate_collection

    with built_once(tmp_path_factory, "data") as (folder, build):
        if build:
            generate_collection(folder / "tiny", n_classes=5, train_per_class=20, val_per_class=4, seed=0)
    return folder / "tiny"


# Backend and precision named where they are not what a test is about: `auto` calibrates (seconds per extraction,
# an OpenVINO conversion per model), and a query embeds with the gallery's own choice.
PINNED = ["--backend", "torch", "--precision", "fp32"]
TINY = ["--weights", "random", "--image-size", "32", "--bs", "16", *PINNED]  # the session galleries' settings


@pytest.fixture(scope="session")
def tiny_gallery(tiny_collection, tmp_path_factory) -> Path:
    """A resnet18 gallery (random weights, 32-px input, torch fp32) over `tiny_collection`; treat it as read-only."""
    with built_once(tmp_path_factory, "resnet18-gallery") as (folder, build):
        if build:  # the CLI in this process: a new interpreter would spend ~2 s importing
            run_main(
                *("extract", "--data", tiny_collection, "--out", folder / "resnet18", "--model", "resnet18"), *TINY
            )
    return folder / "resnet18"


@pytest.fixture(scope="session")
def clip_gallery(tiny_collection, tmp_path_factory) -> Path:
    """A CLIP gallery (random weights, seed 0, 32-px input, torch fp32) over `tiny_collection`: text queries work on
    it; read-only."""
    with built_once(tmp_path_factory, "clip-gallery") as (folder, build):
        if build:
            run_main(*("extract", "--data", tiny_collection, "--out", folder / "clip", "--model", "clip"), *TINY)
    return folder / "clip"


# `lookalike study` kept fast: random weights, 32-px input, torch fp32, one model, scale sizes of a few thousand rows
STUDY_OPTIONS = ["--weights", "random", "--image-size", "32", *PINNED, "--models", "resnet18", "--sizes", "2k,4k"]


@dataclass(frozen=True)
class TinyStudy:
    out: Path  # the study's --out folder
    stdout: str  # what its first run printed
    seconds: float


@pytest.fixture(scope="session")
def tiny_study(tiny_collection, tmp_path_factory) -> TinyStudy:
    """`lookalike study` over `tiny_collection` (STUDY_OPTIONS), run once through the CLI in this process. Treat its
    folder as read-only (copy it to change it)."""
    import json
    import time

    with built_once(tmp_path_factory, "study") as (folder, build):
        if build:
            started = time.perf_counter()
            proc = run_main("study", "--data", tiny_collection, "--out", folder / "study", *STUDY_OPTIONS)
            run = {"stdout": proc.stdout, "seconds": time.perf_counter() - started}
            (folder / "run.json").write_text(json.dumps(run))
    run = json.loads((folder / "run.json").read_text())
    return TinyStudy(folder / "study", run["stdout"], run["seconds"])


@dataclass(frozen=True)
class PlantedCopy:
    """A copy planted in a collection: paths relative to its root; the tier the duplicate search must find it in."""

    original: str
    copy: str
    tier: str  # "identical content" (the same bytes) or "similarity" (re-encoded, or enlarged)
    held_out: bool  # the original is a held-out query (val) and the copy sits in the database (train): leakage


@dataclass(frozen=True)
class Planted:
    root: Path  # the collection
    gallery: Path
    copies: tuple[PlantedCopy, ...]
    larger: PlantedCopy  # a copy enlarged to LARGER_PX² (from 64²) in a smaller file than its original's

    def pairs(self, held_out: bool | None = None, tier: str | None = None) -> set[frozenset[str]]:
        """The planted pairs (relative paths), optionally only those with the given `held_out` and `tier`."""
        return {
            frozenset((c.original, c.copy))
            for c in self.copies
            if (held_out is None or c.held_out == held_out) and (tier is None or c.tier == tier)
        }


LARGER_PX = 128


def plant_copies(root: Path) -> tuple[tuple[PlantedCopy, ...], PlantedCopy]:
    """Plant copies into the tiny collection at `root`: two byte copies and two re-encoded copies (JPEG quality 80) of
    train images, one train image enlarged to 128² at quality 30 (more pixels, a smaller file), and two byte copies and
    two re-encoded copies of val images placed in train. Measured on resnet18 with random weights at 32 px: at the
    default preset these nine pairs are the gallery's only groups (re-encoded pairs score 0.95-0.99), and at threshold 1
    only the four byte copies remain."""
    from PIL import Image

    def reencode(src: Path, dst: Path, quality: int, size: int | None = None) -> None:
        with Image.open(src) as image:
            image = image.convert("RGB")
            (image.resize((size, size), Image.Resampling.BICUBIC) if size else image).save(dst, "JPEG", quality=quality)

    train = sorted(root.glob("train/*/images/*.JPEG"))
    val = sorted(root.glob("val/images/*.JPEG"))
    into = train[0].parent
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    copies = []
    for n, src in enumerate(train[3::23][:2]):
        shutil.copy(src, dst := src.with_name(f"same{n}_{src.name}"))
        copies.append(PlantedCopy(rel(src), rel(dst), "identical content", False))
    for n, src in enumerate(train[7::23][:2]):
        reencode(src, dst := src.with_name(f"resaved{n}_{src.name}"), 80)
        copies.append(PlantedCopy(rel(src), rel(dst), "similarity", False))
    src = train[11]
    reencode(src, dst := src.with_name(f"large_{src.name}"), 30, LARGER_PX)
    assert dst.stat().st_size < src.stat().st_size  # so the file-size key alone would keep the original
    larger = PlantedCopy(rel(src), rel(dst), "similarity", False)
    for n, src in enumerate(val[:2]):
        shutil.copy(src, dst := into / f"valsame{n}_{src.name}")
        copies.append(PlantedCopy(rel(src), rel(dst), "identical content", True))
    for n, src in enumerate(val[5:7]):
        reencode(src, dst := into / f"valresaved{n}_{src.name}", 80)
        copies.append(PlantedCopy(rel(src), rel(dst), "similarity", True))
    return (*copies, larger), larger


@pytest.fixture(scope="session")
def planted(tiny_collection, tmp_path_factory) -> Planted:
    """A copy of `tiny_collection` with planted copies (`plant_copies`) and its gallery (resnet18, random weights,
    32 px, torch fp32); treat both as read-only."""
    import json
    from dataclasses import asdict

    with built_once(tmp_path_factory, "planted") as (base, build):
        if build:
            shutil.copytree(tiny_collection, base / "data")
            copies, larger = plant_copies(base / "data")
            run_main(*("extract", "--data", base / "data", "--out", base / "gallery", "--model", "resnet18"), *TINY)
            (base / "copies.json").write_text(json.dumps([asdict(c) for c in (*copies, larger)]))
    *copies, larger = (PlantedCopy(**c) for c in json.loads((base / "copies.json").read_text()))
    return Planted(base / "data", base / "gallery", tuple(copies), larger)


def manifest_json(gallery) -> dict:
    """The manifest as written on disk, read independently of `lookalike.gallery.Manifest`."""
    import json

    return json.loads((Path(gallery.path) / "manifest.json").read_text())


class RayCluster:
    """A local 2-CPU Ray cluster in this process, started when a test first needs it and stopped before a test of a
    module without Ray (`pytest_runtest_teardown`): its idle processes would otherwise take CPU and memory from the
    modules after it until the session ends. The modules on Ray run one after another, first, in one worker
    (`pytest_collection_modifyitems`), so a run starts it once."""

    address: str | None = None

    @classmethod
    def start(cls) -> str:
        ray = pytest.importorskip("ray")
        if cls.address is None:
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
            cls.address = ray.get_runtime_context().gcs_address
        return cls.address

    @classmethod
    def stop(cls) -> None:
        if cls.address is not None:
            import ray

            ray.shutdown()
            cls.address = None


@pytest.fixture
def ray_address() -> str:
    """The address of the local Ray cluster (`RayCluster`), shared by every module that needs Ray; this process is
    connected to it, and the CLI tests join it by address."""
    return RayCluster.start()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    result = yield  # the test's fixtures are torn down: its actors are gone
    if nextitem is None or module_of(nextitem.nodeid) not in ray_modules:
        RayCluster.stop()
    return result


def without_measurements(manifest: dict) -> dict:
    """A manifest less what each run measures afresh: timings, environment, and the calibration's rates and core
    split."""
    model = dict(manifest["model"])
    if model.get("inference"):
        model["inference"] = {k: model["inference"][k] for k in ("backend", "precision", "reason")}
    return {**{k: v for k, v in manifest.items() if k not in ("created", "timings", "environment")}, "model": model}
