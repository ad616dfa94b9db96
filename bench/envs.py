"""Seconds to get one matrix environment ready: resolve, build and smoke-check, cold and warm.

    .venv/bin/python -m bench.envs [--python 3.11] [--sqlalchemy 2.0.30] [--celery 5.4.0]
                                   [--asyncpg 0.29.0] [--psycopg 3.1.20]
                                   [--resolve dated] [--warm 3] [--cold-uv]

"cold" builds the environment into an empty cache folder (uv's own wheel cache is
the machine's, unless --cold-uv gives it an empty one too, which measures the
downloads); "warm" asks again with the same folder, so the environment is reused:
what every `harness matrix` run after the first pays before its scenarios. Each
phase is timed on its own: the upload-time lookup of a dated resolution (cold: the
index is asked; warm: its cache file answers), the build, and the smoke check
(a real prefork worker on a private Redis). Figures go to reports/bench/envs.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench._common import OUT, ROOT, summary, write
from harness.matrix import environments, resolution, smoke
from harness.matrix.axes import Combination
from harness.matrix.interpreters import find_python
from harness.matrix.run import activated


def ready(combo: Combination, mode: str, cache: Path, log_dir: Path) -> dict[str, float]:
    """Resolve, build (or reuse) and smoke-check ``combo``; seconds of each phase."""
    began = time.monotonic()
    interpreter = find_python(combo.versions["python"])
    env = environments.uv_environment()
    times = resolution.IndexUploadTimes(resolution.index_url(env),
                                        cache / "upload-times.json",
                                        cafile=env.get("SSL_CERT_FILE"))
    resolved = resolution.resolution_for(combo.versions, mode, times)
    resolved_s = time.monotonic() - began
    built = environments.build(combo, interpreter, ROOT, root=cache / "envs",
                               log_path=log_dir / "build.log", resolution=resolved)
    checked = smoke.check(built.python, ROOT, log_dir / "smoke", backend="local",
                          env=activated(built))
    if not checked.ok:
        raise SystemExit(f"the smoke check failed: {checked.error} (see {checked.log})")
    return {"resolve_s": round(resolved_s, 2), "build_s": round(built.seconds, 2),
            "smoke_s": round(checked.seconds, 2),
            "total_s": round(time.monotonic() - began, 2), "reused": built.reused}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.11")
    parser.add_argument("--sqlalchemy", default="2.0.30")
    parser.add_argument("--celery", default="5.4.0")
    parser.add_argument("--asyncpg", default="0.29.0")
    parser.add_argument("--psycopg", default="3.1.20")
    parser.add_argument("--resolve", default=resolution.DATED, choices=resolution.MODES)
    parser.add_argument("--warm", type=int, default=3, help="warm repetitions")
    parser.add_argument("--cold-uv", action="store_true",
                        help="an empty uv cache for the cold build (downloads everything)")
    args = parser.parse_args()
    combo = Combination({a: getattr(args, a) for a in
                         ("python", "sqlalchemy", "celery", "asyncpg", "psycopg")})
    cache = Path(tempfile.mkdtemp(prefix="bench-envs-"))
    uv_cache = Path(tempfile.mkdtemp(prefix="bench-uv-")) if args.cold_uv else None
    log_dir = OUT / "envs-logs"
    saved = dict(os.environ)
    try:
        if uv_cache:
            os.environ["UV_CACHE_DIR"] = str(uv_cache)
        cold = ready(combo, args.resolve, cache, log_dir / "cold")
        print(f"cold: {cold}")
        warm = []
        for i in range(args.warm):
            warm.append(ready(combo, args.resolve, cache, log_dir / f"warm{i}"))
            print(f"warm {i + 1}: {warm[-1]}")
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(cache, ignore_errors=True)
        if uv_cache:
            shutil.rmtree(uv_cache, ignore_errors=True)
    write("envs", {"environment": combo.venv_id, "resolve": args.resolve,
                   "uv_cache": "empty" if args.cold_uv else "the machine's",
                   "cold": cold, "warm": warm,
                   "warm_total_s": summary([w["total_s"] for w in warm]) if warm else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
