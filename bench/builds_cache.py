"""Build time with and without the registry layer cache (core.builds: buildah --layers --cache-from/to).

Real buildah (vfs, chroot isolation, as `shipit builder` runs it) and a real registry (Debian's
docker-registry on a loopback port).  Every build starts from a fresh store holding only the base
image (pulled before the clock starts), as on a new builder pod or another replica; each build is
timed from `buildah bud` to the end of `buildah push`, the pair core.builds runs.

The Containerfile stands for an app: a RUN step that writes a file (--mib) and hashes it --hashes
times (CPU: the dependency install), then a COPY of the source.  Variants, run in turn every round:

  no-cache      --layers=false, as before the cache
  cold          the cache on, its repository empty (the first build of an app)
  warm-same     the cache on and filled, the same source (a rebuild, another replica)
  warm-changed  the cache on and filled, the source changed (the usual push: code, not dependencies)

    python -m bench.builds_cache --rounds 3 [--mib 32] [--hashes 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import free_port

BUSYBOX = "/bin/busybox"
CONTAINERFILE = """FROM {base}
RUN busybox dd if=/dev/urandom of=/deps bs=1M count={mib} 2>/dev/null \\
    && for i in $(busybox seq {hashes}); do busybox sha256sum /deps; done > /deps.sum
COPY app.txt /srv/app.txt
"""


def buildah(root: Path, *args: str) -> str:
    command = ["buildah", "--storage-driver", "vfs", "--root", str(root / "s"), "--runroot", str(root / "r")]
    done = subprocess.run([*command, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"buildah {args[0]} failed: {done.stderr[-1500:]}")
    return done.stdout


def forget(root: Path) -> None:
    subprocess.run(
        ["buildah", "--storage-driver", "vfs", "--root", str(root / "s"), "--runroot", str(root / "r"),
         "rmi", "--all", "--force"],
        capture_output=True, check=False,
    )  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


def one_build(
    work: Path, *, host: str, base: str, cache: str | None, source: str, n: int, step: dict[str, int]
) -> tuple[float, str]:
    root = work / f"store-{n}"
    root.mkdir()
    try:
        buildah(root, "pull", "--tls-verify=false", base)  # the base is there before the clock starts
        ctx = work / f"ctx-{n}"
        ctx.mkdir()
        (ctx / "app.txt").write_text(source)
        (ctx / "Containerfile").write_text(CONTAINERFILE.format(base=base, **step))
        tag = f"{host}/acme/web:b{n}"
        layers = ["--layers", "--cache-from", cache, "--cache-to", cache] if cache else ["--layers=false"]
        start = time.perf_counter()
        out = buildah(
            root, "bud", "--isolation", "chroot", *layers, "--tls-verify=false",
            "-f", str(ctx / "Containerfile"), "-t", tag, str(ctx),
        )  # fmt: skip
        buildah(root, "push", "--tls-verify=false", tag, f"docker://{tag}")
        return time.perf_counter() - start, out
    finally:
        forget(root)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=32, help="the size of the RUN step's layer")
    parser.add_argument("--hashes", type=int, default=1, help="how many times the RUN step hashes it (CPU)")
    args = parser.parse_args()
    step = {"mib": args.mib, "hashes": args.hashes}
    work = Path(tempfile.mkdtemp(prefix="shipit-bench-builds-"))
    port = free_port()
    host = f"127.0.0.1:{port}"
    config = {"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(work / "registry")}},
              "http": {"addr": host}}  # fmt: skip
    (work / "registry.yml").write_text(json.dumps(config))
    registry = subprocess.Popen(
        ["docker-registry", "serve", str(work / "registry.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    n = 0
    try:
        time.sleep(1.0)
        base = f"{host}/base/busybox:1"
        seed = work / "seed"
        seed.mkdir()
        c = buildah(seed, "from", "scratch").strip()
        buildah(seed, "copy", c, BUSYBOX, "/bin/busybox")
        buildah(seed, "copy", c, BUSYBOX, "/bin/sh")
        buildah(seed, "commit", c, base)
        buildah(seed, "push", "--tls-verify=false", base, f"docker://{base}")
        forget(seed)
        warm = f"{host}/acme/web/cache"
        n += 1
        one_build(work, host=host, base=base, cache=warm, source="v0\n", n=n, step=step)  # fills the cache
        times: dict[str, list[float]] = {"no-cache": [], "cold": [], "warm-same": [], "warm-changed": []}
        for r in range(args.rounds):
            for variant in times:
                n += 1
                cache = {"no-cache": None, "cold": f"{host}/acme/cold{r}/cache"}.get(variant, warm)
                source = f"v{n}\n" if variant in ("no-cache", "cold", "warm-changed") else "v0\n"
                took, out = one_build(work, host=host, base=base, cache=cache, source=source, n=n, step=step)
                hits = out.count("Using cache")
                times[variant].append(took)
                print(
                    f"round {r + 1} {variant:13s} {took:6.2f} s  (steps from the cache: {hits})", flush=True
                )
        print(f"load average {os.getloadavg()[0]:.2f}")
        for variant, values in times.items():
            print(
                f"{variant:13s} median {statistics.median(values):6.2f} s  runs {[round(v, 2) for v in values]}"
            )
    finally:
        registry.terminate()
        registry.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
